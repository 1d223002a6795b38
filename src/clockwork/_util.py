"""Small array helpers shared by the modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def map_chunks(fn: Callable[[Any], Any], xs: Any, chunk: int) -> Any:
    """``fn`` over chunks of ``chunk`` rows of ``xs`` (leaves ``(N, ...)``), rematerialised.

    Runs ``jax.lax.map`` of ``jax.checkpoint(fn)`` over the chunks (the last one
    zero-padded) and cuts the result back to ``N`` rows, so that the backward pass holds
    the activations of one chunk at a time. ``fn`` maps ``(chunk, ...)`` leaves to
    ``(chunk, ...)`` leaves.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    steps = -(-n // chunk)
    pad = steps * chunk - n

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(steps, chunk, *x.shape[1:])

    out = jax.lax.map(jax.checkpoint(fn), jax.tree.map(split, xs))
    return jax.tree.map(lambda y: y.reshape(steps * chunk, *y.shape[2:])[:n], out)
