"""The deterministic LSTM cell (docs/model.md#deterministic-lstm-cell)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork.cells.base import StepOutput
from clockwork.cells.layers import LSTM, glorot


@struct.dataclass
class LSTMState:
    """State of ``LSTMCell``: the LSTM's ``cell`` and ``hidden``, each ``(..., D)``.
    There is no latent, so its KL and entropy are zero."""

    cell: jax.Array
    hidden: jax.Array

    @property
    def feature(self) -> jax.Array:
        """``hidden``: ``(..., D)``."""
        return self.hidden

    def kl(self, prior: LSTMState) -> jax.Array:
        del prior
        return jnp.zeros(self.hidden.shape[:-1], self.hidden.dtype)

    def entropy(self) -> jax.Array:
        return jnp.zeros(self.hidden.shape[:-1], self.hidden.dtype)


class LSTMCell(nnx.Module):
    """A deterministic level with an LSTM core (like ``GRUCell``).

    ``x = relu(Dense_E(context))``, ``(c, h) = LSTM_D((c, h), x)``; the feature is ``h``.
    It never reads the observation embedding, so its prior and posterior are the same
    state. Its fast path computes the input layer and the LSTM's input product for a
    whole sequence at once, leaving one ``(B, D) x (D, 4D)`` product per step.

    Raises:
      TypeError, ValueError: naming a size that is not a positive int (``embed_size``
        may be 0) or a ``forget_bias`` that is not a finite number.

    Examples:
      >>> cell = LSTMCell(4, 3, det_size=5, hidden_size=6, rngs=nnx.Rngs(0))
      >>> state = cell.initial_state(2)
      >>> state, out = cell(state, None, jnp.ones((2, 3)), None, use_obs=False)
      >>> out.prior.feature.shape
      (2, 5)
    """

    def __init__(
        self,
        embed_size: int,
        context_size: int,
        *,
        det_size: int = 200,
        hidden_size: int = 200,
        forget_bias: float = 1.0,
        rngs: nnx.Rngs,
    ):
        _checks.integer("embed_size", embed_size, 0)
        for name, value in (("context_size", context_size), ("det_size", det_size),
                            ("hidden_size", hidden_size)):
            _checks.integer(name, value)
        _checks.number("forget_bias", forget_bias)
        _checks.instance("rngs", rngs, nnx.Rngs)
        self.embed_size = embed_size
        self.context_size = context_size
        self.feature_size = det_size
        self.det_size = det_size
        self.inp = nnx.Linear(context_size, hidden_size, kernel_init=glorot, rngs=rngs)
        self.lstm = LSTM(hidden_size, det_size, forget_bias=forget_bias, rngs=rngs)

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> LSTMState:
        zeros = jnp.zeros((batch_size, self.det_size), dtype)
        return LSTMState(cell=zeros, hidden=zeros)

    def __call__(
        self,
        state: LSTMState,
        embed: jax.Array | None,
        context: jax.Array,
        noise: None = None,
        *,
        use_obs: bool,
    ) -> tuple[LSTMState, StepOutput]:
        return self.step(state, self.prepare(None, context, None, use_obs=use_obs))

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, noise: None, *, use_obs: bool
    ) -> jax.Array:
        """The LSTM's input gates for all steps at once: ``(B, N, C) -> (B, N, 4D)``."""
        del embeds, noise, use_obs
        return self.lstm.project(jax.nn.relu(self.inp(contexts)))

    def step(
        self, state: LSTMState, inputs: jax.Array, *, use_obs: bool = False
    ) -> tuple[LSTMState, StepOutput]:
        del use_obs
        cell, hidden = self.lstm.step(state.cell, state.hidden, inputs)
        new = LSTMState(cell=cell, hidden=hidden)
        return new, StepOutput(prior=new, posterior=new)
