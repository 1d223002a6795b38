"""Small array helpers shared by the modules."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
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


def map_chunks(
    fn: Callable[[nnx.Module, Any], Any],
    module: nnx.Module,
    xs: Any,
    chunk: int,
    *,
    remat: bool = False,
) -> Any:
    """``fn(module, .)`` over chunks of ``chunk`` rows of ``xs`` (leaves ``(N, ...)``).

    Runs ``jax.lax.map`` of ``fn`` over the chunks (the last one zero-padded; ``chunk``
    is capped at ``N``) and cuts the result back to ``N`` rows. Each chunk's work stays
    small enough to run near the cache; with ``remat`` it is also recomputed in the
    backward pass (``jax.checkpoint``), which then holds the activations of one chunk at
    a time instead of all of them. ``fn`` maps ``(chunk, ...)`` leaves to
    ``(chunk, ...)`` leaves, row by row.
    """
    fn = partial(fn, module)
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk = max(1, min(chunk, n))
    steps = -(-n // chunk)
    pad = steps * chunk - n

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(steps, chunk, *x.shape[1:])

    out = jax.lax.map(jax.checkpoint(fn) if remat else fn, jax.tree.map(split, xs))
    return jax.tree.map(lambda y: y.reshape(steps * chunk, *y.shape[2:])[:n], out)

