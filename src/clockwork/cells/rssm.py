"""The recurrent state-space cell of CW-VAE (docs/model.md#rssm-cell)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork._util import add_bias
from clockwork.cells.base import GaussianState, StepOutput
from clockwork.cells.layers import GRU, glorot

STDDEV_SHIFT = 0.54


class RSSMInputs(NamedTuple):
    """The carry-independent part of a step, computed for a whole sequence at once.

    ``context_proj``: ``(..., E)`` context half of the prior's first layer, bias included.
    ``embed_proj``: ``(..., E)`` embedding half of the posterior's first layer, or ``None``.
    ``noise``: ``(..., 2, S)`` standard normal noise for the prior and posterior samples
    (``RSSMCell.noise``).
    """

    context_proj: jax.Array
    embed_proj: jax.Array | None
    noise: jax.Array


class _Gaussian(nnx.Module):
    """``mean = Dense_S(y)``, ``stddev = softplus(Dense_S(y + 0.54)) + min_stddev``."""

    def __init__(self, hidden: int, stoch: int, min_stddev: float, shift: str, rngs: nnx.Rngs):
        self.mean = nnx.Linear(hidden, stoch, kernel_init=glorot, rngs=rngs)
        self.std = nnx.Linear(hidden, stoch, kernel_init=glorot, rngs=rngs)
        self.min_stddev = min_stddev
        self.shift = shift

    def __call__(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.shift == "input":
            pre = self.std(y + STDDEV_SHIFT)
        else:
            pre = self.std(y) + STDDEV_SHIFT
        return self.mean(y), jax.nn.softplus(pre) + self.min_stddev


class RSSMCell(nnx.Module):
    """Prior ``p(s_t | s_{t-1}, context_t)`` and posterior ``q(s_t | ..., e_t)``.

    Prior: ``x = relu(Dense_E([sample, context]))``, ``det = GRU_D(det, x)``,
    ``y = relu(Dense_E(det))``, then mean and stddev heads. Posterior:
    ``x = relu(Dense_E([det, e]))``, ``x = relu(Dense_E(x))``, its own heads; it shares the
    prior's deterministic state. Samples are reparameterised.

    Args:
      embed_size: size of the level's embedding ``e_t``.
      context_size: size of the context from the level above (plus actions at level 0).
      stoch_size: ``S``.
      det_size: ``D``.
      hidden_size: ``E``.
      min_stddev: added to every stddev.
      stddev_shift: ``"input"`` (default, both reference implementations):
        ``softplus(Dense(y + 0.54))``; ``"preactivation"``: ``softplus(Dense(y) + 0.54)``.

    Raises:
      TypeError, ValueError: naming the argument that is not a size (``embed_size`` and
        ``context_size`` may be 0), a ``min_stddev >= 0`` or a ``stddev_shift``.
    """

    def __init__(
        self,
        embed_size: int,
        context_size: int,
        *,
        stoch_size: int = 20,
        det_size: int = 200,
        hidden_size: int = 200,
        min_stddev: float = 1e-4,
        stddev_shift: Literal["input", "preactivation"] = "input",
        rngs: nnx.Rngs,
    ):
        _checks.integer("embed_size", embed_size, 0)
        _checks.integer("context_size", context_size, 0)
        s, d, e = (_checks.integer(name, value) for name, value in (
            ("stoch_size", stoch_size), ("det_size", det_size), ("hidden_size", hidden_size)))
        _checks.number("min_stddev", min_stddev, low=0.0)
        _checks.choice("stddev_shift", stddev_shift, ("input", "preactivation"))
        _checks.instance("rngs", rngs, nnx.Rngs)
        self.embed_size = embed_size
        self.context_size = context_size
        self.stoch_size = s
        self.det_size = d
        self.feature_size = s + d
        dense = lambda i, o: nnx.Linear(i, o, kernel_init=glorot, rngs=rngs)  # noqa: E731
        self.prior_in = dense(s + context_size, e)
        self.gru = GRU(e, d, rngs=rngs)
        self.prior_hidden = dense(d, e)
        self.prior_head = _Gaussian(e, s, min_stddev, stddev_shift, rngs)
        self.post_in = dense(d + embed_size, e)
        self.post_hidden = dense(e, e)
        self.post_head = _Gaussian(e, s, min_stddev, stddev_shift, rngs)

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> GaussianState:
        s = jnp.zeros((batch_size, self.stoch_size), dtype)
        d = jnp.zeros((batch_size, self.det_size), dtype)
        return GaussianState(sample=s, det_state=d, det_out=d, mean=s, stddev=s)

    def noise(self, key: jax.Array, batch_size: int, dtype: DTypeLike = jnp.float32) -> jax.Array:
        """One step's noise: ``normal(key, (B, 2, S))``, the prior's in slot 0 and the
        posterior's in slot 1 (drawn whether or not the step observes)."""
        return jax.random.normal(key, (batch_size, 2, self.stoch_size), dtype)

    def __call__(
        self,
        state: GaussianState,
        embed: jax.Array | None,
        context: jax.Array,
        noise: jax.Array,
        *,
        use_obs: bool,
    ) -> tuple[GaussianState, StepOutput]:
        """One step; ``embed (B, embed_size)``, ``context (B, context_size)``,
        ``noise (B, 2, S)``."""
        _checks.flag("use_obs", use_obs)
        embeds = None if embed is None else embed[:, None]
        inputs = self.prepare(embeds, context[:, None], noise[:, None], use_obs=use_obs)
        return self.step(state, jax.tree.map(lambda x: x[:, 0], inputs), use_obs=use_obs)

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, noise: jax.Array, *, use_obs: bool
    ) -> RSSMInputs:
        """Input projections for ``N`` steps: ``(B, N, .)`` in, ``(B, N, .)`` out;
        ``noise (B, N, 2, S)`` passes through."""
        s = self.stoch_size
        context_proj = add_bias(contexts @ self.prior_in.kernel[s:], self.prior_in.bias[...])
        embed_proj = None
        if use_obs:
            d = self.det_size
            embed_proj = add_bias(embeds @ self.post_in.kernel[d:], self.post_in.bias[...])
        return RSSMInputs(context_proj, embed_proj, noise)

    def step(
        self, state: GaussianState, inputs: RSSMInputs, *, use_obs: bool
    ) -> tuple[GaussianState, StepOutput]:
        """One step from prepared inputs (one time slice of ``prepare``)."""
        s, d = self.stoch_size, self.det_size
        x = jax.nn.relu(state.sample @ self.prior_in.kernel[:s] + inputs.context_proj)
        det = self.gru(state.det_state, x)
        mean, std = self.prior_head(jax.nn.relu(self.prior_hidden(det)))
        prior = GaussianState(mean + std * inputs.noise[:, 0], det, det, mean, std)
        if not use_obs:
            return prior, StepOutput(prior, prior)
        x = jax.nn.relu(det @ self.post_in.kernel[:d] + inputs.embed_proj)
        mean, std = self.post_head(jax.nn.relu(self.post_hidden(x)))
        post = GaussianState(mean + std * inputs.noise[:, 1], det, det, mean, std)
        return post, StepOutput(prior, post)
