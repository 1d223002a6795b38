"""A pure-function training step for ``CWVAE`` (docs/model.md#presets).

The model is split once into a static graph and a parameter pytree; the step is one
``jax.jit`` over ``(TrainState, frames)`` with no Python work per frame. It works for any
``nnx`` model with ``loss(frames, key, *, noise=None, actions=None) -> (loss, metrics)``
(and ``noise(key, batch, frames, dtype)`` for ``clockwork.parallel``'s step).

Examples:
  >>> from clockwork import CWVAE
  >>> from clockwork.config import preset
  >>> model = CWVAE.from_config(preset("mmnist").model.replace(levels=2, temporal_factor=2),
  ...                           rngs=nnx.Rngs(0))
  >>> optimizer = make_optimizer(3e-4)
  >>> graphdef, state = init_train_state(model, optimizer, jax.random.key(0))
  >>> step = make_train_step(graphdef, optimizer)
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

from clockwork import _checks
from clockwork._util import to_float

COMPUTE_DTYPES = ("float32", "bfloat16")
GradFn = Callable[..., tuple[Any, dict[str, jax.Array]]]
"""``grads(params, frames, key, actions) -> (gradients, metrics)``."""


def make_optimizer(
    lr: float = 3e-4, *, adam_eps: float = 1e-4, grad_clip_norm: float = 10000.0
) -> optax.GradientTransformation:
    """Adam (``eps = adam_eps``) after clipping gradients to the global norm ``grad_clip_norm``.

    The fields of ``OptimConfig`` are its arguments:
    ``make_optimizer(**dataclasses.asdict(preset.optim))``.

    Raises:
      TypeError, ValueError: an argument is not a finite number > 0.
    """
    for name, value in (("lr", lr), ("adam_eps", adam_eps), ("grad_clip_norm", grad_clip_norm)):
        _checks.number(name, value, low=0.0, low_open=True)
    return optax.chain(
        optax.clip_by_global_norm(grad_clip_norm),
        optax.adam(lr, eps=adam_eps),
    )


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes."""

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array


def init_train_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, key: jax.Array
) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its static graph and a fresh ``TrainState``.

    Raises:
      TypeError: ``model`` is not an ``nnx.Module``, ``optimizer`` not an optax
        ``GradientTransformation`` or ``key`` not a PRNG key.
    """
    _checks.instance("model", model, nnx.Module)
    _checks.instance("optimizer", optimizer, optax.GradientTransformation)
    _checks.prng_key("key", key)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError("the model holds state other than parameters; it is not supported here")
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), key=key
    )
    return graphdef, state


def _dtype(compute_dtype: str) -> jnp.dtype:
    return jnp.dtype(_checks.choice("compute_dtype", compute_dtype, COMPUTE_DTYPES))


def make_loss_fn(
    graphdef: nnx.GraphDef, *, compute_dtype: str = "float32"
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(params, frames, key=None, actions=None, *, noise=None) -> (loss, metrics)``, pure.

    ``frames`` are ``uint8`` (converted on device) or floats in ``[0, 1]``. With
    ``compute_dtype="bfloat16"`` the model runs on bfloat16 copies of the float32
    parameters (and its noise is drawn in bfloat16); the loss and its sums are float32.
    """
    dtype = _dtype(compute_dtype)

    def loss_fn(params, frames, key=None, actions=None, *, noise=None):
        if dtype != jnp.float32:
            # Reduced precision: compute with cast copies; gradients reach the f32 params.
            params = jax.tree.map(lambda p: p.astype(dtype), params)
            actions = None if actions is None else actions.astype(dtype)
        model = nnx.merge(graphdef, params)
        return model.loss(to_float(frames, dtype), key, noise=noise, actions=actions)

    return loss_fn


def make_train_step_fn(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    compute_dtype: str = "float32",
    grads: GradFn | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The pure, unjitted ``step(state, frames, actions=None) -> (state, metrics)``.

    ``grads`` computes the gradients and metrics (default: ``jax.grad`` of
    ``make_loss_fn`` on one device); ``clockwork.parallel`` passes its data-parallel
    one. ``make_train_step`` jits the step for one device.
    """
    if grads is None:
        grads = jax.grad(make_loss_fn(graphdef, compute_dtype=compute_dtype), has_aux=True)

    def step(state: TrainState, frames: jax.Array, actions: jax.Array | None = None):
        key, sub = jax.random.split(state.key)
        gradients, metrics = grads(state.params, frames, sub, actions)
        # optax's bias correction mixes Python floats and int32 counts: allow that even
        # when the caller runs JAX with strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(gradients, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(gradients))
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=key)
        return new, metrics

    return step


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    compute_dtype: str = "float32",
    donate: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted ``step(state, frames, actions=None) -> (state, metrics)`` on one device.

    ``frames`` are ``(B, T, H, W, C)``, ``uint8`` (converted on device) or floats in
    ``[0, 1]``. ``metrics`` holds the loss terms of ``elbo_loss``
    and ``grad_norm``. With ``donate`` the input state's buffers are reused. For several
    devices, ``clockwork.parallel.make_sharded_train_step``.
    """
    _checks.flag("donate", donate)
    step = make_train_step_fn(graphdef, optimizer, compute_dtype=compute_dtype)
    return jax.jit(step, donate_argnums=(0,) if donate else ())
