"""Small array helpers shared by the modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y (..., F) + bias (F,)`` without implicit rank promotion."""
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def to_float(frames: jax.Array | np.ndarray, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Integer (``uint8``) video to ``dtype`` in ``[0, 1]``; floats are only cast.

    Call it inside the jitted step so that only ``uint8`` crosses to the device.
    """
    frames = jnp.asarray(frames)
    if jnp.issubdtype(frames.dtype, jnp.integer):
        return frames.astype(dtype) / 255
    return frames.astype(dtype)
