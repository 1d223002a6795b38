"""A pure-function training step for :class:`~clockwork.CWVAE` (SPEC section 7).

The model is split once into a static graph and a parameter pytree; the step is one
``jax.jit`` over ``(TrainState, frames)`` with no Python work per frame.

>>> cfg = CWVAEConfig.preset("mmnist", levels=2, temporal_factor=2, batch_size=1, seq_len=4)
>>> model = CWVAE(cfg, rngs=nnx.Rngs(0))
>>> graphdef, state = init_train_state(model, make_optimizer(cfg), jax.random.key(0))
>>> step = make_train_step(graphdef, make_optimizer(cfg))
>>> state, metrics = step(state, jnp.zeros((1, 4, 64, 64, 1), jnp.uint8))
>>> int(state.step)
1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from clockwork._util import to_float
from clockwork.config import CWVAEConfig
from clockwork.model import CWVAE


def make_optimizer(config: CWVAEConfig) -> optax.GradientTransformation:
    """Adam (``eps = adam_eps``) after clipping gradients to ``grad_clip_norm``."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adam(config.lr, eps=config.adam_eps),
    )


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes."""

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array


def init_train_state(
    model: CWVAE, optimizer: optax.GradientTransformation, key: jax.Array
) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its static graph and a fresh :class:`TrainState`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError("the model holds state other than parameters; it is not supported here")
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), key=key
    )
    return graphdef, state


def make_loss_fn(graphdef: nnx.GraphDef) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(params, frames, key, actions=None) -> (loss, metrics)``, pure.

    With ``config.compute_dtype == "bfloat16"`` the model runs on bfloat16 copies of the
    float32 parameters; the loss and its sums are float32.
    """

    def loss_fn(params, frames, key, actions=None):
        dtype = jnp.dtype(nnx.merge(graphdef, params).config.compute_dtype)
        if dtype != jnp.float32:
            # Reduced precision: compute with cast copies; gradients reach the f32 params.
            params = jax.tree.map(lambda p: p.astype(dtype), params)
            actions = None if actions is None else actions.astype(dtype)
        model = nnx.merge(graphdef, params)
        return model.loss(to_float(frames, dtype), key, actions=actions)

    return loss_fn


def make_train_step_fn(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The pure, unjitted ``step(state, frames, actions=None) -> (state, metrics)``.

    :func:`make_train_step` jits it for one device; ``clockwork.parallel`` jits it with
    shardings for a mesh.
    """
    loss_fn = make_loss_fn(graphdef)

    def step(state: TrainState, frames: jax.Array, actions: jax.Array | None = None):
        key, sub = jax.random.split(state.key)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, frames, sub, actions)
        # optax's bias correction mixes Python floats and int32 counts: allow that even
        # when the caller runs JAX with strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=key)
        return new, metrics

    return step


def make_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, donate: bool = True
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted ``step(state, frames, actions=None) -> (state, metrics)``.

    ``frames`` are ``(B, T, 64, 64, C)``, ``uint8`` (converted on device) or floats in
    ``[0, 1]``. ``metrics`` holds the loss terms of :func:`~clockwork.losses.elbo_loss`
    and ``grad_norm``. With ``donate`` the input state's buffers are reused.
    """
    step = make_train_step_fn(graphdef, optimizer)
    return jax.jit(step, donate_argnums=(0,) if donate else ())
