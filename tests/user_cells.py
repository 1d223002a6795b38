"""Cells written the way a user writes them: in their own file, against the documented
protocol only (docs/write_your_own_cell.md), with no edit to the library.

``LeakyCell`` has no fast path; ``FastLeakyCell`` is the same cell with ``prepare`` and
``step``, so the two give the same numbers for the same parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from clockwork.cells import StepOutput
from clockwork.losses import gaussian_kl


@struct.dataclass
class LeakyState:
    h: jax.Array  # (B, D) leaky-integrated deterministic state
    sample: jax.Array  # (B, S)
    mean: jax.Array
    std: jax.Array

    @property
    def feature(self) -> jax.Array:
        return jnp.concatenate([self.sample, self.h], axis=-1)

    def kl(self, prior: LeakyState) -> jax.Array:
        return gaussian_kl(self.mean, self.std, prior.mean, prior.std)


class LeakyCell(nnx.Module):
    """``h' = (1 - a) h + a tanh(W [sample, context])``; Gaussian prior from ``h'``,
    posterior from ``[h', embed]``."""

    def __init__(self, embed_size: int, context_size: int, *, stoch: int = 3, det: int = 5,
                 leak: float = 0.5, rngs: nnx.Rngs):
        self.embed_size, self.context_size = embed_size, context_size
        self.stoch, self.det, self.leak = stoch, det, leak
        self.feature_size = stoch + det
        self.inp = nnx.Linear(stoch + context_size, det, rngs=rngs)
        self.prior = nnx.Linear(det, 2 * stoch, rngs=rngs)
        self.post = nnx.Linear(det + embed_size, 2 * stoch, rngs=rngs)

    def initial_state(self, batch_size: int, dtype=jnp.float32) -> LeakyState:
        s = jnp.zeros((batch_size, self.stoch), dtype)
        return LeakyState(jnp.zeros((batch_size, self.det), dtype), s, s, s)

    def noise(self, key: jax.Array, batch_size: int, dtype=jnp.float32) -> jax.Array:
        return jax.random.normal(key, (batch_size, 2, self.stoch), dtype)

    def _gaussian(self, stats: jax.Array, h: jax.Array, eps: jax.Array) -> LeakyState:
        mean, pre = jnp.split(stats, 2, axis=-1)
        std = jax.nn.softplus(pre) + 0.1
        return LeakyState(h, mean + std * eps, mean, std)

    def _step(self, state, embed, x, noise, use_obs):
        h = (1 - self.leak) * state.h + self.leak * jnp.tanh(x)
        prior = self._gaussian(self.prior(h), h, noise[:, 0])
        if not use_obs:
            return prior, StepOutput(prior, prior)
        post = self._gaussian(self.post(jnp.concatenate([h, embed], -1)), h, noise[:, 1])
        return post, StepOutput(prior, post)

    def __call__(self, state, embed, context, noise, *, use_obs):
        x = self.inp(jnp.concatenate([state.sample, context], -1))
        return self._step(state, embed, x, noise, use_obs)


class FastLeakyCell(LeakyCell):
    """:class:`LeakyCell` with the sequence fast path: the context half of ``inp`` for
    all steps at once."""

    def prepare(self, embeds, contexts, noise, *, use_obs):
        w = self.inp.kernel[...]
        context_part = contexts @ w[self.stoch:] + self.inp.bias[...][None, None]
        return context_part, embeds, noise

    def step(self, state, inputs, *, use_obs):
        context_part, embed, noise = inputs
        x = state.sample @ self.inp.kernel[...][: self.stoch] + context_part
        return self._step(state, embed, x, noise, use_obs)
