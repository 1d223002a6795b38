"""Data-parallel training on a device mesh, one host or many, with JAX's own runtime.

A mesh has a ``data`` axis (the batch is split along it) and a ``model`` axis (size 1
unless parameters are sharded by rules). The training step is the one of
``clockwork.training.make_train_step_fn`` with data-parallel gradients
(``sharded_gradients``): the step draws the model's noise for the whole batch
(``model.noise``, from the partitionable threefry generator, so the numbers do not depend
on the mesh), then runs the loss and its gradient in one ``jax.shard_map`` on each
device's rows, for any cell, and averages the gradients across devices once. No
collective runs inside a scan or a chunk loop. The parameters and optimiser state are
replicated (or placed by rules) and updated outside the ``shard_map``.

Multi-host: call ``initialize_distributed`` first in every process; each process then
feeds its own rows of the global batch (``VideoPipeline`` reads its shard by
``jax.process_index()``) and ``shard_batch`` assembles the global array.

Examples:
  >>> mesh = make_mesh(1)
  >>> dict(mesh.shape)
  {'data': 1, 'model': 1}
  >>> shard_batch(np.zeros((4, 2), np.float32), mesh).sharding.spec
  P('data',)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from clockwork import _checks
from clockwork.training import GradFn, TrainState, make_loss_fn, make_train_step_fn

DATA_AXIS = "data"
MODEL_AXIS = "model"
Rules = Sequence[tuple[str, PartitionSpec]]
"""``(regex, spec)`` pairs: a leaf whose path matches ``regex`` (``re.search``) gets ``spec``."""


def parse_mesh(spec: str | int) -> tuple[int | None, int]:
    """``"8"`` -> ``(8, 1)``, ``"2x4"`` -> ``(2, 4)`` (data x model), ``"auto"`` -> ``(None, 1)``.

    ``None`` as the data size means every device not on the model axis.

    Raises:
      ValueError: ``spec`` is none of these forms or holds a size below 1.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return None, 1
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if match is None or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise ValueError(
            f"mesh must be 'auto', DATA or DATAxMODEL with positive integers (8, 2x4), got {spec!r}"
        )
    return int(match[1]), int(match[2] or 1)


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all devices of all processes).

    ``data=None`` takes ``len(devices) // model``. Both axes are ``AxisType.Auto``: XLA
    propagates shardings through the model, which needs no sharding annotations.

    Raises:
      TypeError, ValueError: ``data`` is not a positive int or None, ``model`` not a
        positive int.
      ValueError: the mesh needs more devices than there are, or ``model`` does not
        divide them when ``data`` is None.
    """
    if data is not None:
        _checks.integer("data", data)
    _checks.integer("model", model)
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        if len(devices) % model:
            raise ValueError(f"model axis {model} does not divide the {len(devices)} devices")
        data = len(devices) // model
    if data * model > len(devices):
        raise ValueError(
            f"a {data}x{model} mesh needs {data * model} devices; there are {len(devices)}"
        )
    return jax.make_mesh(
        (data, model), (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto,) * 2,
        devices=devices[: data * model],
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_shardings(tree: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """A sharding per leaf of ``tree``: the first rule matching its path, else replicated.

    Paths are joined with ``/``, e.g. ``params/decoder/dense/kernel/value`` for a
    ``TrainState`` (the optimiser state's moments carry the same
    parameter names, so one rule places a parameter and its Adam moments alike).

    Raises:
      TypeError: ``mesh`` is not a ``Mesh`` or a rule not a ``(regex, PartitionSpec)`` pair.
    """
    _checks.instance("mesh", mesh, Mesh)
    compiled = []
    for i, rule in enumerate(_checks.sequence("rules", rules or (), "(regex, PartitionSpec) pairs")):
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], PartitionSpec)):
            raise TypeError(f"rules[{i}] must be a (regex, PartitionSpec) pair, got "
                            f"{_checks.describe(rule)}")
        compiled.append((re.compile(rule[0]), rule[1]))

    def place(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        name = _path_name(path)
        for pattern, spec in compiled:
            if pattern.search(name) and len(spec) <= len(np.shape(leaf)):
                return NamedSharding(mesh, spec)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, tree)


def shard_params(tree: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """``tree`` placed on ``mesh`` by ``param_shardings`` (replicated by default).

    With several processes each must hold the same values (same seed); every process
    fills its own devices from its copy.
    """
    shardings = param_shardings(tree, mesh, rules)
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(_global_array, tree, shardings)


def _global_array(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global_array(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """A global array per leaf, ``(B, ...)`` split over ``data``.

    A jax array already placed so is returned as it is. A host array holds this process's
    rows: with one process they are the whole batch; with ``P`` processes the global
    batch has ``P * rows`` rows, process ``p``'s rows placed on its own devices
    (``jax.make_array_from_process_local_data``).

    Raises:
      TypeError: ``mesh`` is not a ``Mesh``.
      ValueError: the global batch size is not a multiple of the data axis.
    """
    sharding = batch_sharding(_checks.instance("mesh", mesh, Mesh))
    data = mesh.shape[DATA_AXIS]

    def place(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        size = x.shape[0] * (jax.process_count() if not isinstance(x, jax.Array) else 1)
        if size % data:
            raise ValueError(
                f"batch size {size} is not divisible by the data axis of the mesh ({data} "
                f"devices); use a batch size that is a multiple of {data}"
            )
        if jax.process_count() == 1 or isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(place, batch)


def host_local(tree: Any) -> Any:
    """Replicated global arrays as single-device arrays of this process (no communication).

    A step's metrics and replicated parameters span all processes' devices; this gives
    each process a copy it can read (``jax.device_get``) or pass to a local computation.
    """

    def local(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"a sharded array {x.shape} has no single local copy")
            return x.addressable_data(0)
        return x

    return jax.tree.map(local, tree)


def sharded_gradients(
    graphdef: nnx.GraphDef, mesh: Mesh, *, compute_dtype: str = "float32"
) -> GradFn:
    """``grads(params, frames, key, actions) -> (gradients, metrics)``, data-parallel.

    Draws the noise of the whole batch with ``model.noise(key, B, T, dtype)``, then
    computes the loss and its gradient on each ``data`` shard of the batch under one
    ``jax.shard_map`` (the parameters enter every shard whole) and averages gradients and
    metrics over the shards with one ``pmean``. Equal shards make the average the
    gradient of the whole batch's mean loss.
    """
    loss_fn = make_loss_fn(graphdef, compute_dtype=compute_dtype)
    dtype = jax.numpy.dtype(compute_dtype)
    rows = PartitionSpec(DATA_AXIS)

    def local(params: Any, frames: jax.Array, noise: Any, actions: Any) -> Any:
        out = jax.grad(loss_fn, has_aux=True)(params, frames, None, actions, noise=noise)
        return jax.lax.pmean(out, DATA_AXIS)

    def grads(params: Any, frames: jax.Array, key: jax.Array, actions: Any = None) -> Any:
        noise = nnx.merge(graphdef, params).noise(key, frames.shape[0], frames.shape[1], dtype)
        # check_vma=False: every output is averaged over the data axis explicitly.
        return jax.shard_map(
            local, mesh=mesh, in_specs=(PartitionSpec(), rows, rows, rows),
            out_specs=PartitionSpec(), check_vma=False,
        )(params, frames, noise, actions)

    return grads


def make_sharded_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    compute_dtype: str = "float32",
    state_sharding: Any = None,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, frames, actions=None) -> (state, metrics)`` data-parallel on ``mesh``.

    The step of ``clockwork.training.make_train_step`` with ``sharded_gradients``,
    jitted with explicit shardings. ``frames (B, T, H, W, C)`` (and ``actions (B, T,
    A)``) go through ``shard_batch`` (host arrays are this process's rows); ``B``
    must be a multiple of the data axis. ``state`` should already be on ``mesh``
    (``shard_params``); ``state_sharding`` is its sharding tree, or a single sharding
    for all leaves (default: replicated). Metrics come back replicated.
    ``step.lower(state, frames)`` gives the lowered program, as ``jax.jit``'s ``lower``
    does.
    """
    _checks.instance("mesh", mesh, Mesh)
    _checks.flag("donate", donate)
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    batch = batch_sharding(mesh)
    step_fn = make_train_step_fn(
        graphdef, optimizer, grads=sharded_gradients(graphdef, mesh, compute_dtype=compute_dtype)
    )
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch, batch),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )

    def step(state: TrainState, frames: Any, actions: Any = None):
        return jitted(state, shard_batch(frames, mesh), shard_batch(actions, mesh))

    def lower(state: TrainState, frames: Any, actions: Any = None) -> Any:
        return jitted.lower(state, shard_batch(frames, mesh), shard_batch(actions, mesh))

    step.lower = lower  # type: ignore[attr-defined]
    return step


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize`` with these values, else the environment's.

    Unset values come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` if set, else from JAX's cluster detection (Cloud TPU, SLURM, Open
    MPI, Kubernetes). Call it once per process, before any other JAX computation.
    """
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
