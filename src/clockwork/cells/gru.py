"""The deterministic GRU cell (docs/model.md#deterministic-gru-cell)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork.cells.base import DeterministicState, StepOutput
from clockwork.cells.layers import GRU, glorot


class GRUCell(nnx.Module):
    """A deterministic level: no latent, zero KL (an ablation of ``RSSMCell``).

    ``x = relu(Dense_E(context))``, ``det = GRU_D(det, x)``; the feature is ``det``. It
    never reads the observation embedding, so its prior and posterior are the same state.

    Raises:
      TypeError, ValueError: naming a size that is not a positive int (``embed_size``
        may be 0).
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
        _checks.integer("embed_size", embed_size, 0)
        for name, value in (("context_size", context_size), ("det_size", det_size),
                            ("hidden_size", hidden_size)):
            _checks.integer(name, value)
        _checks.instance("rngs", rngs, nnx.Rngs)
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
        noise: None = None,
        *,
        use_obs: bool,
    ) -> tuple[DeterministicState, StepOutput]:
        del embed, noise, use_obs
        return self.step(state, self.inp(context))

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, noise: None, *, use_obs: bool
    ) -> jax.Array:
        """The input layer for all steps at once: ``(B, N, C) -> (B, N, hidden)``."""
        del embeds, noise, use_obs
        return self.inp(contexts)

    def step(
        self, state: DeterministicState, inputs: Any, *, use_obs: bool = False
    ) -> tuple[DeterministicState, StepOutput]:
        del use_obs
        h = self.gru(state.det_state, jax.nn.relu(inputs))
        new = DeterministicState(det_state=h, det_out=h)
        return new, StepOutput(prior=new, posterior=new)
