"""Small array helpers shared by the modules."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from jax.typing import DTypeLike

_SHARDS: contextvars.ContextVar[tuple[Mesh, str] | None] = contextvars.ContextVar(
    "clockwork_shards", default=None
)


@contextlib.contextmanager
def per_shard_loops(mesh: Mesh, axis: str) -> Iterator[None]:
    """While tracing inside this block, :func:`per_shard` runs its function on each
    ``axis`` shard of the batch (``jax.shard_map``).

    Used by ``clockwork.parallel`` around the training step: the scans of the hierarchy and
    the chunk loops of the conv nets then run on each device's rows, and the gradients of
    the weights they close over are summed on each device and reduced across devices once,
    after the loop, instead of at every iteration.
    """
    if axis not in mesh.shape:
        raise ValueError(f"mesh has axes {tuple(mesh.shape)}, not {axis!r}")
    token = _SHARDS.set((mesh, axis))
    try:
        yield
    finally:
        _SHARDS.reset(token)


def per_shard(
    fn: Callable[..., Any],
    module: nnx.Module,
    args: Sequence[Any],
    in_axes: Sequence[int],
    out_axes: int | tuple[int, ...],
) -> Any:
    """``fn(module, *args)``; under :func:`per_shard_loops`, on each shard of the batch.

    ``in_axes[i]`` is the batch axis of every leaf of ``args[i]``; ``out_axes`` the batch
    axis of the outputs (an int, or a tuple matching a tuple output). ``fn`` must treat
    batch rows independently, draw no randomness and close over no traced arrays other
    than ``module``'s variables, which enter every shard whole.
    """
    shards = _SHARDS.get()
    if shards is None:
        return fn(module, *args)
    mesh, axis = shards
    for arg, a in zip(args, in_axes):
        for leaf in jax.tree.leaves(arg):
            if leaf.shape[a] % mesh.shape[axis]:
                raise ValueError(
                    f"batch of {leaf.shape[a]} does not divide into {mesh.shape[axis]} {axis!r} shards"
                )

    def spec(a: int) -> PartitionSpec:
        return PartitionSpec(*([None] * a), axis)

    graphdef, variables = nnx.split(module)

    def run(variables: Any, *args: Any) -> Any:
        return fn(nnx.merge(graphdef, variables), *args)

    out_specs = tuple(map(spec, out_axes)) if isinstance(out_axes, tuple) else spec(out_axes)
    # check_vma=False: the cotangents of the replicated variables are summed over the
    # shards at the boundary, once; with it on, the sum would land inside the loop's
    # transpose, once per iteration.
    return jax.shard_map(
        run, mesh=mesh, in_specs=(PartitionSpec(), *map(spec, in_axes)), out_specs=out_specs,
        check_vma=False,
    )(variables, *args)


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
    ``(chunk, ...)`` leaves, row by row. Under :func:`per_shard_loops` each shard of the
    rows is chunked on its own devices.
    """
    return per_shard(
        lambda m, xs: _map_chunks(partial(fn, m), xs, chunk, remat), module, (xs,), (0,), 0
    )


def _map_chunks(fn: Callable[[Any], Any], xs: Any, chunk: int, remat: bool) -> Any:
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk = max(1, min(chunk, n))
    steps = -(-n // chunk)
    pad = steps * chunk - n

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(steps, chunk, *x.shape[1:])

    out = jax.lax.map(jax.checkpoint(fn) if remat else fn, jax.tree.map(split, xs))
    return jax.tree.map(lambda y: y.reshape(steps * chunk, *y.shape[2:])[:n], out)

