"""World Models' memory, the MDN-RNN, as a cell (docs/model.md#mdn-rnn-cell)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork._util import add_bias
from clockwork.cells.base import StepOutput
from clockwork.cells.layers import LSTM, glorot
from clockwork.losses.kl import gaussian_entropy, gaussian_log_prob, mixture_log_prob


class MDNCarry(NamedTuple):
    """What ``MDNRNNCell`` carries between steps: the last ``sample (B, S)`` and the
    LSTM's ``cell`` and ``hidden`` ``(B, D)``."""

    sample: jax.Array
    cell: jax.Array
    hidden: jax.Array


@struct.dataclass
class MixtureState:
    """The prior of ``MDNRNNCell``: a diagonal Gaussian mixture over the latent.

    ``sample``: ``(..., S)``; ``hidden``: ``(..., D)``, the LSTM output the mixture was
    read from; ``means`` and ``stddevs``: ``(..., S, K)``; ``log_weights``: normalised
    log mixture weights, ``(..., S, K)`` (one mixture per latent dimension) or ``(...,
    K)`` when ``shared`` (one set of weights for the whole latent vector).
    """

    sample: jax.Array
    hidden: jax.Array
    log_weights: jax.Array
    means: jax.Array
    stddevs: jax.Array
    shared: bool = struct.field(pytree_node=False, default=False)

    @property
    def feature(self) -> jax.Array:
        """``concat(sample, hidden)``: ``(..., S + D)``."""
        return jnp.concatenate([self.sample, self.hidden], axis=-1)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log p(x)`` of latents ``x (..., S)`` under the mixture: ``(...)``."""
        return mixture_log_prob(x, self.log_weights, self.means, self.stddevs, shared=self.shared)

    def kl(self, prior: MixtureState) -> jax.Array:
        """Single-sample Monte-Carlo ``KL(self || prior)`` at ``self.sample``: ``(...)``
        (zero when ``prior`` is ``self``, as in the open loop)."""
        return self.log_prob(self.sample) - prior.log_prob(self.sample)

    def mode(self) -> jax.Array:
        """Per latent dimension, the mean of the most likely component: ``(..., S)``
        (what sampling at temperature 0 gives)."""
        return jnp.sum(_one_hot(self, jnp.argmax(self.log_weights, axis=-1)) * self.means, axis=-1)


@struct.dataclass
class MDNPosterior:
    """The posterior of ``MDNRNNCell``: a diagonal Gaussian ``(..., S)`` read from
    the embedding, with the step's LSTM ``hidden (..., D)``."""

    sample: jax.Array
    hidden: jax.Array
    mean: jax.Array
    stddev: jax.Array

    @property
    def feature(self) -> jax.Array:
        """``concat(sample, hidden)``: ``(..., S + D)``."""
        return jnp.concatenate([self.sample, self.hidden], axis=-1)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log q(x)`` summed over the latent axis: ``(...)``."""
        return jnp.sum(gaussian_log_prob(x, self.mean, self.stddev), axis=-1)

    def kl(self, prior: MixtureState) -> jax.Array:
        """Single-sample Monte-Carlo estimate of ``KL(self || prior)``: ``log q(z) - log
        p(z)`` at ``z = self.sample`` (a mixture has no closed-form KL): ``(...)``. It is
        unbiased, and its gradient flows through the reparameterised sample."""
        return self.log_prob(self.sample) - prior.log_prob(self.sample)

    def entropy(self) -> jax.Array:
        """Entropy of ``Normal(mean, stddev)`` summed over the latent axis: ``(...)``."""
        return gaussian_entropy(self.stddev)


class MDNNoise(NamedTuple):
    """One step's noise (leaves ``(B, ...)``): ``gumbel`` picks the prior's mixture
    component (``(B, S, K)``, or ``(B, K)`` with shared weights); ``normal (B, 2, S)``
    holds the standard normal noise of the prior (slot 0) and the posterior (slot 1)."""

    gumbel: jax.Array
    normal: jax.Array


class MDNInputs(NamedTuple):
    """The carry-independent part of a step: ``context_proj (..., 4D)``, the context's
    share of the LSTM's input gates; the posterior's ``post_mean`` and ``post_stddev``
    ``(..., S)`` (``None`` without observations); the step's noise."""

    context_proj: jax.Array
    post_mean: jax.Array | None
    post_stddev: jax.Array | None
    noise: MDNNoise


class MDNRNNCell(nnx.Module):
    """An LSTM whose output parameterises a Gaussian mixture over the next latent.

    Step ``t``: ``(c, h) = LSTM_D((c, h), [z_{t-1}, context_t])``; the prior over ``z_t``
    is ``K`` diagonal Gaussians read from ``h`` by one dense layer: log-weights
    (log-softmax of logits), means and ``stddev = exp(log_stddev)``, one mixture per
    latent dimension as in World Models or, with ``shared_weights``, one set of ``K``
    weights for the whole vector. The posterior is a Gaussian from the embedding alone,
    ``x = relu(Dense_E(e))``, ``mean = Dense_S(x)``, ``stddev = softplus(Dense_S(x)) +
    min_stddev``. The carried sample is the posterior's when observing, else the prior's.

    Sampling the prior (the open loop) divides the logits by ``temperature`` and scales
    the noise by ``sqrt(temperature)`` (World Models' dream); temperature 0 is the limit,
    the most likely component's mean (``MixtureState.mode``). Densities and the KL use
    the mixture itself. ``posterior.kl(prior)`` is a single-sample Monte-Carlo estimate.

    To train it on given latent sequences as World Models does, minimise
    ``-cell.predict(latents, contexts).log_prob(latents)``: step ``t`` predicts ``z_t``
    from the true ``z_{<t}`` and ``contexts_{<=t}`` (so ``contexts_t`` holds the action
    taken after ``z_{t-1}``).

    Args:
      embed_size: size of the level's embedding ``e_t``.
      context_size: size of the context from the level above (plus actions at level 0).
      stoch_size: ``S`` (32 in World Models).
      det_size: ``D`` (256).
      hidden_size: the posterior's hidden width ``E``.
      mixtures: ``K`` (5).
      temperature: ``>= 0``; 1 samples the mixture itself; 0 takes, per latent
        dimension, the mean of the most likely component (no noise: deterministic).
      shared_weights: one set of mixture weights for all latent dimensions.
      min_stddev: added to the posterior's stddev.

    Examples:
      >>> cell = MDNRNNCell(4, 3, stoch_size=2, det_size=5, mixtures=3, rngs=nnx.Rngs(0))
      >>> prior = cell.predict(jnp.zeros((1, 6, 2)), jnp.zeros((1, 6, 3)))
      >>> prior.log_prob(jnp.zeros((1, 6, 2))).shape
      (1, 6)
    """

    def __init__(
        self,
        embed_size: int,
        context_size: int,
        *,
        stoch_size: int = 32,
        det_size: int = 256,
        hidden_size: int = 200,
        mixtures: int = 5,
        temperature: float = 1.0,
        shared_weights: bool = False,
        min_stddev: float = 1e-4,
        forget_bias: float = 1.0,
        rngs: nnx.Rngs,
    ):
        _checks.integer("context_size", context_size, 0)
        for name, value in (("embed_size", embed_size), ("stoch_size", stoch_size),
                            ("det_size", det_size), ("hidden_size", hidden_size),
                            ("mixtures", mixtures)):
            _checks.integer(name, value)
        _checks.number("temperature", temperature, low=0.0)
        _checks.flag("shared_weights", shared_weights)
        _checks.number("min_stddev", min_stddev, low=0.0)
        _checks.number("forget_bias", forget_bias)
        _checks.instance("rngs", rngs, nnx.Rngs)
        s, d, k = stoch_size, det_size, mixtures
        self.embed_size = embed_size
        self.context_size = context_size
        self.stoch_size, self.det_size, self.mixtures = s, d, k
        self.temperature = float(temperature)
        self.shared_weights = shared_weights
        self.min_stddev = min_stddev
        self.feature_size = s + d
        self.lstm = LSTM(s + context_size, d, forget_bias=forget_bias, rngs=rngs)
        weights = k if shared_weights else s * k
        self.mixture = nnx.Linear(d, weights + 2 * s * k, kernel_init=glorot, rngs=rngs)
        dense = lambda i, o: nnx.Linear(i, o, kernel_init=glorot, rngs=rngs)  # noqa: E731
        self.post_hidden = dense(embed_size, hidden_size)
        self.post_mean = dense(hidden_size, s)
        self.post_std = dense(hidden_size, s)

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> MDNCarry:
        zeros = jnp.zeros((batch_size, self.det_size), dtype)
        return MDNCarry(jnp.zeros((batch_size, self.stoch_size), dtype), zeros, zeros)

    def noise(self, key: jax.Array, batch_size: int, dtype: DTypeLike = jnp.float32) -> MDNNoise:
        """One step's ``MDNNoise`` (drawn whether or not the step observes)."""
        k_gumbel, k_normal = jax.random.split(key)
        s, k = self.stoch_size, self.mixtures
        shape = (batch_size, k) if self.shared_weights else (batch_size, s, k)
        return MDNNoise(jax.random.gumbel(k_gumbel, shape, dtype),
                        jax.random.normal(k_normal, (batch_size, 2, s), dtype))

    def _mixture(self, hidden: jax.Array, sample: jax.Array | None = None) -> MixtureState:
        """The mixture read from ``hidden (..., D)``, with ``sample`` (zeros if ``None``)."""
        s, k = self.stoch_size, self.mixtures
        out = self.mixture(hidden)
        lead = out.shape[:-1]
        weights = k if self.shared_weights else s * k
        logits = out[..., :weights].reshape(*lead, *((k,) if self.shared_weights else (s, k)))
        means = out[..., weights : weights + s * k].reshape(*lead, s, k)
        stddevs = jnp.exp(out[..., weights + s * k :].reshape(*lead, s, k))
        if sample is None:
            sample = jnp.zeros((*lead, s), out.dtype)
        return MixtureState(sample, hidden, jax.nn.log_softmax(logits, axis=-1), means, stddevs,
                            shared=self.shared_weights)

    def _sample(self, mix: MixtureState, gumbel: jax.Array, normal: jax.Array) -> jax.Array:
        """A sample of ``mix`` at this cell's temperature: ``(B, S)``."""
        tau = self.temperature
        if tau == 0.0:
            return mix.mode()
        logits = mix.log_weights if tau == 1.0 else mix.log_weights / tau
        pick = _one_hot(mix, jnp.argmax(logits + gumbel, axis=-1))
        mean = jnp.sum(pick * mix.means, axis=-1)
        stddev = jnp.sum(pick * mix.stddevs, axis=-1)
        scale = 1.0 if tau == 1.0 else math.sqrt(tau)
        return mean + stddev * (normal * scale)

    def __call__(
        self,
        state: MDNCarry,
        embed: jax.Array | None,
        context: jax.Array,
        noise: MDNNoise,
        *,
        use_obs: bool,
    ) -> tuple[MDNCarry, StepOutput]:
        """One step; ``embed (B, embed_size)``, ``context (B, context_size)``."""
        _checks.flag("use_obs", use_obs)
        embeds = None if embed is None else embed[:, None]
        inputs = self.prepare(embeds, context[:, None], jax.tree.map(lambda x: x[:, None], noise),
                              use_obs=use_obs)
        return self.step(state, jax.tree.map(lambda x: x[:, 0], inputs), use_obs=use_obs)

    def prepare(
        self, embeds: jax.Array | None, contexts: jax.Array, noise: MDNNoise, *, use_obs: bool
    ) -> MDNInputs:
        """The context's input gates and the whole posterior for ``N`` steps at once."""
        s = self.stoch_size
        context_proj = add_bias(contexts @ self.lstm.input_kernel[s:], self.lstm.bias[...])
        mean = stddev = None
        if use_obs:
            x = jax.nn.relu(self.post_hidden(embeds))
            mean = self.post_mean(x)
            stddev = jax.nn.softplus(self.post_std(x)) + self.min_stddev
        return MDNInputs(context_proj, mean, stddev, noise)

    def step(
        self, state: MDNCarry, inputs: MDNInputs, *, use_obs: bool
    ) -> tuple[MDNCarry, StepOutput]:
        """One step from prepared inputs (one time slice of ``prepare``)."""
        s = self.stoch_size
        projected = state.sample @ self.lstm.input_kernel[:s] + inputs.context_proj
        cell, hidden = self.lstm.step(state.cell, state.hidden, projected)
        mix = self._mixture(hidden)
        normal = inputs.noise.normal
        mix = mix.replace(sample=self._sample(mix, inputs.noise.gumbel, normal[:, 0]))
        if not use_obs:
            return MDNCarry(mix.sample, cell, hidden), StepOutput(mix, mix)
        sample = inputs.post_mean + inputs.post_stddev * normal[:, 1]
        post = MDNPosterior(sample, hidden, inputs.post_mean, inputs.post_stddev)
        return MDNCarry(sample, cell, hidden), StepOutput(mix, post)

    def predict(
        self, latents: jax.Array, contexts: jax.Array, *, initial: MDNCarry | None = None
    ) -> MixtureState:
        """The prior of every step given the true previous latents (teacher forcing).

        Args:
          latents: ``(B, N, S)``, the sequence ``z_0 .. z_{N-1}``.
          contexts: ``(B, N, context_size)``.
          initial: the carry before ``z_0`` (zeros when ``None``).
        Returns:
          Stacked ``MixtureState`` ``(B, N, ...)`` whose step ``t`` is
          ``p(z_t | z_{<t}, contexts_{<=t})``, with ``sample = latents``.
        """
        b, n, _ = _checks.float_array("latents", latents, ("B", "N", self.stoch_size))
        _checks.array("contexts", contexts, (b, n, self.context_size))
        if initial is None:
            initial = self.initial_state(b, latents.dtype)
        previous = jnp.concatenate([initial.sample[:, None], latents[:, :-1]], axis=1)
        projected = self.lstm.project(jnp.concatenate([previous, contexts], axis=-1))

        def body(carry, x):
            cell, hidden = self.lstm.step(*carry, x)
            return (cell, hidden), hidden

        _, hidden = jax.lax.scan(body, (initial.cell, initial.hidden),
                                 jnp.swapaxes(projected, 0, 1))
        return self._mixture(jnp.swapaxes(hidden, 0, 1), latents)


def _one_hot(mix: MixtureState, index: jax.Array) -> jax.Array:
    """The chosen components ``index`` as weights over ``K`` that broadcast against
    ``mix.means (..., S, K)``."""
    pick = jax.nn.one_hot(index, mix.means.shape[-1], dtype=mix.means.dtype)
    return pick[..., None, :] if mix.shared else pick
