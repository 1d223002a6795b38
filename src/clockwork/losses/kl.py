"""Densities, KLs and entropies of the latent distributions: diagonal Gaussians, groups
of categoricals and Gaussian mixtures, reduced over their latent axes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from clockwork import _checks


def gaussian_kl(
    mean_q: jax.Array, std_q: jax.Array, mean_p: jax.Array, std_p: jax.Array
) -> jax.Array:
    """``KL(N(mean_q, std_q) || N(mean_p, std_p))`` summed over the last axis.

    ``log(std_p / std_q) + (std_q**2 + (mean_q - mean_p)**2) / (2 std_p**2) - 1/2`` per
    dimension. All arguments ``(..., S)``; returns ``(...)``.

    Examples:
      >>> float(gaussian_kl(jnp.zeros(2), jnp.ones(2), jnp.zeros(2), jnp.ones(2)))
      0.0
    """
    _checks.float_array("mean_q", mean_q, (..., "S"))
    for name, x in (("std_q", std_q), ("mean_p", mean_p), ("std_p", std_p)):
        _checks.same_shape(name, x, "mean_q", mean_q)
    var_ratio = jnp.square(std_q / std_p)
    mahalanobis = jnp.square((mean_q - mean_p) / std_p)
    return 0.5 * jnp.sum(var_ratio + mahalanobis - 1.0 - jnp.log(var_ratio), axis=-1)


def gaussian_entropy(std: jax.Array) -> jax.Array:
    """Entropy of ``N(., std)`` summed over the last axis: ``(..., S) -> (...)``."""
    _checks.float_array("std", std, (..., "S"))
    return jnp.sum(0.5 * math.log(2 * math.pi * math.e) + jnp.log(std), axis=-1)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: float | jax.Array) -> jax.Array:
    """Elementwise ``log N(x | mean, std)`` (no reduction)."""
    z = (x - mean) / std
    return -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2 * math.pi)


def unimix(logits: jax.Array, mix: float) -> jax.Array:
    """Log-probabilities of ``(1 - mix) * softmax(logits) + mix / C`` over the last axis
    (``C`` classes): ``(..., C) -> (..., C)``; ``mix = 0`` is ``log_softmax(logits)``.

    Examples:
      >>> [round(float(p), 3) for p in jnp.exp(unimix(jnp.array([0.0, 100.0]), 0.1))]
      [0.05, 0.95]
    """
    _checks.float_array("logits", logits, (..., "C"))
    _checks.number("mix", mix, low=0.0, high=1.0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    if mix == 0:
        return log_probs
    classes = logits.shape[-1]
    return jnp.log((1.0 - mix) * jnp.exp(log_probs) + mix / classes)


def categorical_kl(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
    """``KL(q || p)`` of groups of categoricals given normalised log-probabilities
    ``(..., G, C)``, summed over classes and groups: ``(...)``.

    Examples:
      >>> float(categorical_kl(jnp.log(jnp.array([[0.5, 0.5]])), jnp.log(jnp.array([[0.5, 0.5]]))))
      0.0
    """
    _checks.float_array("log_q", log_q, (..., "G", "C"))
    _checks.same_shape("log_p", log_p, "log_q", log_q)
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=(-2, -1))


def categorical_entropy(log_p: jax.Array) -> jax.Array:
    """Entropy of groups of categoricals ``(..., G, C)``, summed over groups: ``(...)``."""
    _checks.float_array("log_p", log_p, (..., "G", "C"))
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=(-2, -1))


def mixture_log_prob(
    x: jax.Array,
    log_weights: jax.Array,
    means: jax.Array,
    stddevs: jax.Array,
    *,
    shared: bool = False,
) -> jax.Array:
    """``log p(x)`` under a mixture of ``K`` diagonal Gaussians: ``(..., S) -> (...)``.

    ``means``, ``stddevs``: ``(..., S, K)``. Per dimension (``shared=False``, World
    Models): ``log_weights (..., S, K)`` and ``sum_s logsumexp_k(w_sk + log N(x_s | m_sk,
    s_sk))``. Shared (``shared=True``): ``log_weights (..., K)`` and ``logsumexp_k(w_k +
    sum_s log N(x_s | m_sk, s_sk))``. ``log_weights`` are normalised over ``K``.
    """
    shape = _checks.float_array("x", x, (..., "S"))
    _checks.flag("shared", shared)
    k = _checks.float_array("means", means, (*shape, "K"))[-1]
    _checks.same_shape("stddevs", stddevs, "means", means)
    _checks.array("log_weights", log_weights, (*shape[:-1], k) if shared else (*shape, k))
    per_dim = gaussian_log_prob(x[..., None], means, stddevs)  # (..., S, K)
    if shared:
        return jax.nn.logsumexp(log_weights + jnp.sum(per_dim, axis=-2), axis=-1)
    return jnp.sum(jax.nn.logsumexp(log_weights + per_dim, axis=-1), axis=-1)
