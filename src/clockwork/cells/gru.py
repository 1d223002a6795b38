"""A fused GRU with Flax linen's ``GRUCell`` equations, and a deterministic GRU cell."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from clockwork._util import add_bias
from clockwork.cells.base import DeterministicState, StepOutput

glorot = nnx.initializers.glorot_uniform()


class GRU(nnx.Module):
    """Flax linen's ``GRUCell`` (as in the JAX port) fused into two matrix products.

    ``r = sigmoid(W_ir x + b_ir + W_hr h)``, ``z = sigmoid(W_iz x + b_iz + W_hz h)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters: ``input_kernel (I, 3H)``, ``input_bias (3H)``, ``hidden_kernel (H, 3H)``,
    ``hidden_bias (H)``, gates in the order ``r, z, n``: linen's parameter count (``nnx.GRUCell``
    has no hidden bias).
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
        h = hidden_features
        self.hidden_features = h
        self.input_kernel = nnx.Param(glorot(rngs.params(), (in_features, 3 * h)))
        self.input_bias = nnx.Param(jnp.zeros((3 * h,)))
        ortho = nnx.initializers.orthogonal()
        self.hidden_kernel = nnx.Param(
            jnp.concatenate([ortho(rngs.params(), (h, h)) for _ in range(3)], axis=1)
        )
        self.hidden_bias = nnx.Param(jnp.zeros((h,)))

    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """One step: ``h (B, H)``, ``x (B, I)`` -> new ``h (B, H)``."""
        n_h = self.hidden_features
        xi = add_bias(x @ self.input_kernel[...], self.input_bias[...])
        hh = h @ self.hidden_kernel[...]
        r = jax.nn.sigmoid(xi[:, :n_h] + hh[:, :n_h])
        z = jax.nn.sigmoid(xi[:, n_h : 2 * n_h] + hh[:, n_h : 2 * n_h])
        n = jnp.tanh(xi[:, 2 * n_h :] + r * add_bias(hh[:, 2 * n_h :], self.hidden_bias[...]))
        return (1.0 - z) * n + z * h


class GRUCell(nnx.Module):
    """A deterministic level: no latent, zero KL (an ablation of :class:`RSSMCell`).

    ``x = relu(Dense_E(context))``, ``det = GRU_D(det, x)``; the feature is ``det``. It
    never reads the observation embedding, so its prior and posterior are the same state.
    """

    def __init__(
        self,
        embed_size: int,
        context_size: int,
        *,
        det_size: int = 200,
        hidden_size: int = 200,
        rngs: nnx.Rngs,
    ):
        self.embed_size = embed_size
        self.context_size = context_size
        self.feature_size = det_size
        self.det_size = det_size
        self.inp = nnx.Linear(context_size, hidden_size, kernel_init=glorot, rngs=rngs)
        self.gru = GRU(hidden_size, det_size, rngs=rngs)

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> DeterministicState:
        zeros = jnp.zeros((batch_size, self.det_size), dtype)
        return DeterministicState(det_state=zeros, det_out=zeros)

    def __call__(
        self,
        state: DeterministicState,
        embed: jax.Array | None,
        context: jax.Array,
        key: jax.Array,
        *,
        use_obs: bool,
    ) -> tuple[DeterministicState, StepOutput]:
        del embed, key, use_obs
        return self.step(state, self.inp(context))

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, keys: jax.Array, *, use_obs: bool
    ) -> jax.Array:
        """The input layer for all steps at once: ``(B, N, C) -> (B, N, hidden)``."""
        del embeds, keys, use_obs
        return self.inp(contexts)

    def step(
        self, state: DeterministicState, inputs: Any, *, use_obs: bool = False
    ) -> tuple[DeterministicState, StepOutput]:
        del use_obs
        h = self.gru(state.det_state, jax.nn.relu(inputs))
        new = DeterministicState(det_state=h, det_out=h)
        return new, StepOutput(prior=new, posterior=new)
