"""Small array helpers shared by the modules."""

from __future__ import annotations

import jax


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y (..., F) + bias (F,)`` without implicit rank promotion."""
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
