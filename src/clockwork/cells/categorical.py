"""DreamerV3's discrete latent as a cell (docs/model.md#categorical-rssm-cell)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork._util import add_bias
from clockwork.cells.base import StepOutput
from clockwork.cells.layers import GRU, glorot
from clockwork.losses.kl import categorical_entropy, categorical_kl, unimix


@struct.dataclass
class CategoricalState:
    """Latent state of ``CategoricalRSSMCell``.

    ``sample``: ``(..., G, C)`` one-hot samples (straight-through: their gradient is that
    of the probabilities); ``log_probs``: ``(..., G, C)`` normalised log-probabilities
    after uniform mixing; ``det_state`` and ``det_out``: ``(..., D)``.
    """

    sample: jax.Array
    det_state: jax.Array
    det_out: jax.Array
    log_probs: jax.Array

    @property
    def feature(self) -> jax.Array:
        """``concat(flatten(sample), det_out)``: ``(..., G * C + D)``."""
        flat = self.sample.reshape(*self.sample.shape[:-2], -1)
        return jnp.concatenate([flat, self.det_out], axis=-1)

    def kl(self, prior: CategoricalState) -> jax.Array:
        """``KL(self || prior)`` summed over the groups: ``(...)``."""
        return categorical_kl(self.log_probs, prior.log_probs)

    def entropy(self) -> jax.Array:
        """Entropy summed over the groups: ``(...)``."""
        return categorical_entropy(self.log_probs)


class CategoricalInputs(NamedTuple):
    """The carry-independent part of a step (as ``RSSMInputs``);
    ``noise``: ``(..., 2, G, C)`` standard Gumbel noise for the prior and the posterior."""

    context_proj: jax.Array
    embed_proj: jax.Array | None
    noise: jax.Array


class CategoricalRSSMCell(nnx.Module):
    """An RSSM whose latent is ``G`` groups of ``C``-way categoricals (DreamerV3).

    The networks are ``RSSMCell``'s with the Gaussian heads
    replaced by logits heads ``Dense_{G*C}``: prior ``x = relu(Dense_E([flatten(sample),
    context]))``, ``det = GRU_D(det, x)``, ``logits = Dense(relu(Dense_E(det)))``;
    posterior ``logits = Dense(relu(Dense_E(relu(Dense_E([det, e])))))``. The class
    probabilities are mixed with the uniform distribution,
    ``probs = (1 - unimix) * softmax(logits) + unimix / C`` (DreamerV3's 1 %), samples are
    drawn by the Gumbel-max trick from pre-drawn noise and carry straight-through
    gradients, ``one_hot + probs - stop_gradient(probs)``, and the KL between two states
    is that of the categoricals, summed over the groups.

    Args:
      embed_size: size of the level's embedding ``e_t``.
      context_size: size of the context from the level above (plus actions at level 0).
      groups: ``G`` (32, as DreamerV3 first published).
      classes: ``C`` classes per group (32).
      det_size: ``D``.
      hidden_size: ``E``.
      unimix: the uniform share in ``[0, 1)``.

    Raises:
      TypeError, ValueError: naming a size that is not a positive int (``embed_size``
        and ``context_size`` may be 0, ``classes`` is at least 2) or a ``unimix``
        outside ``[0, 1)``.

    Examples:
      >>> cell = CategoricalRSSMCell(4, 3, groups=2, classes=5, det_size=6, hidden_size=7,
      ...                            rngs=nnx.Rngs(0))
      >>> cell.feature_size
      16
    """

    def __init__(
        self,
        embed_size: int,
        context_size: int,
        *,
        groups: int = 32,
        classes: int = 32,
        det_size: int = 200,
        hidden_size: int = 200,
        unimix: float = 0.01,
        rngs: nnx.Rngs,
    ):
        _checks.integer("embed_size", embed_size, 0)
        _checks.integer("context_size", context_size, 0)
        g = _checks.integer("groups", groups)
        c = _checks.integer("classes", classes, 2)
        d = _checks.integer("det_size", det_size)
        e = _checks.integer("hidden_size", hidden_size)
        _checks.number("unimix", unimix, low=0.0, high=1.0, high_open=True)
        _checks.instance("rngs", rngs, nnx.Rngs)
        self.embed_size = embed_size
        self.context_size = context_size
        self.groups, self.classes, self.det_size = g, c, d
        self.unimix = float(unimix)
        self.feature_size = g * c + d
        dense = lambda i, o: nnx.Linear(i, o, kernel_init=glorot, rngs=rngs)  # noqa: E731
        self.prior_in = dense(g * c + context_size, e)
        self.gru = GRU(e, d, rngs=rngs)
        self.prior_hidden = dense(d, e)
        self.prior_logits = dense(e, g * c)
        self.post_in = dense(d + embed_size, e)
        self.post_hidden = dense(e, e)
        self.post_logits = dense(e, g * c)

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> CategoricalState:
        g, c = self.groups, self.classes
        d = jnp.zeros((batch_size, self.det_size), dtype)
        uniform = jnp.full((batch_size, g, c), -jnp.log(c), dtype)
        return CategoricalState(jnp.zeros((batch_size, g, c), dtype), d, d, uniform)

    def noise(self, key: jax.Array, batch_size: int, dtype: DTypeLike = jnp.float32) -> jax.Array:
        """One step's noise: standard Gumbel ``(B, 2, G, C)``, the prior's in slot 0 and
        the posterior's in slot 1."""
        return jax.random.gumbel(key, (batch_size, 2, self.groups, self.classes), dtype)

    def __call__(
        self,
        state: CategoricalState,
        embed: jax.Array | None,
        context: jax.Array,
        noise: jax.Array,
        *,
        use_obs: bool,
    ) -> tuple[CategoricalState, StepOutput]:
        """One step; ``embed (B, embed_size)``, ``context (B, context_size)``,
        ``noise (B, 2, G, C)``."""
        _checks.flag("use_obs", use_obs)
        embeds = None if embed is None else embed[:, None]
        inputs = self.prepare(embeds, context[:, None], noise[:, None], use_obs=use_obs)
        return self.step(state, jax.tree.map(lambda x: x[:, 0], inputs), use_obs=use_obs)

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, noise: jax.Array, *, use_obs: bool
    ) -> CategoricalInputs:
        """Input projections for ``N`` steps: ``(B, N, .)`` in, ``(B, N, .)`` out."""
        gc = self.groups * self.classes
        context_proj = add_bias(contexts @ self.prior_in.kernel[gc:], self.prior_in.bias[...])
        embed_proj = None
        if use_obs:
            d = self.det_size
            embed_proj = add_bias(embeds @ self.post_in.kernel[d:], self.post_in.bias[...])
        return CategoricalInputs(context_proj, embed_proj, noise)

    def _state(self, logits: jax.Array, det: jax.Array, gumbel: jax.Array) -> CategoricalState:
        logits = logits.reshape(*logits.shape[:-1], self.groups, self.classes)
        log_probs = unimix(logits, self.unimix)
        probs = jnp.exp(log_probs)
        hard = jax.nn.one_hot(jnp.argmax(log_probs + gumbel, axis=-1), self.classes,
                              dtype=probs.dtype)
        sample = hard + probs - jax.lax.stop_gradient(probs)
        return CategoricalState(sample, det, det, log_probs)

    def step(
        self, state: CategoricalState, inputs: CategoricalInputs, *, use_obs: bool
    ) -> tuple[CategoricalState, StepOutput]:
        """One step from prepared inputs (one time slice of ``prepare``)."""
        gc, d = self.groups * self.classes, self.det_size
        flat = state.sample.reshape(state.sample.shape[0], gc)
        x = jax.nn.relu(flat @ self.prior_in.kernel[:gc] + inputs.context_proj)
        det = self.gru(state.det_state, x)
        prior = self._state(self.prior_logits(jax.nn.relu(self.prior_hidden(det))), det,
                            inputs.noise[:, 0])
        if not use_obs:
            return prior, StepOutput(prior, prior)
        x = jax.nn.relu(det @ self.post_in.kernel[:d] + inputs.embed_proj)
        post = self._state(self.post_logits(jax.nn.relu(self.post_hidden(x))), det,
                           inputs.noise[:, 1])
        return post, StepOutput(prior, post)
