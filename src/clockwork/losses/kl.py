"""Closed-form quantities of diagonal Gaussians, reduced over the last (latent) axis."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def gaussian_kl(
    mean_q: jax.Array, std_q: jax.Array, mean_p: jax.Array, std_p: jax.Array
) -> jax.Array:
    """``KL(N(mean_q, std_q) || N(mean_p, std_p))`` summed over the last axis.

    ``log(std_p / std_q) + (std_q**2 + (mean_q - mean_p)**2) / (2 std_p**2) - 1/2`` per
    dimension. All arguments ``(..., S)``; returns ``(...)``.

    >>> float(gaussian_kl(jnp.zeros(2), jnp.ones(2), jnp.zeros(2), jnp.ones(2)))
    0.0
    """
    var_ratio = jnp.square(std_q / std_p)
    mahalanobis = jnp.square((mean_q - mean_p) / std_p)
    return 0.5 * jnp.sum(var_ratio + mahalanobis - 1.0 - jnp.log(var_ratio), axis=-1)


def gaussian_entropy(std: jax.Array) -> jax.Array:
    """Entropy of ``N(., std)`` summed over the last axis: ``(..., S) -> (...)``."""
    return jnp.sum(0.5 * math.log(2 * math.pi * math.e) + jnp.log(std), axis=-1)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: float | jax.Array) -> jax.Array:
    """Elementwise ``log N(x | mean, std)`` (no reduction)."""
    z = (x - mean) / std
    return -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2 * math.pi)
