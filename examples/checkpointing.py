"""Orbax checkpoints of a run: the train state, the input pipeline's position, and what
is needed to verify them.

A checkpoint ``<run>/checkpoints/<step>/`` holds the items ``state`` (the
:class:`~clockwork.training.TrainState`: step, parameters, optimiser state and the PRNG key
as raw key data), ``pipeline`` (the pipeline position, JSON), ``manifest`` (JSON: the run's
config, every leaf's path, shape and dtype, and a checksum of every leaf's bits) and,
when the run was interrupted between two log records, ``window`` (the metrics of the
steps since the last record, so that the resumed run logs the same means).

Orbax gives the atomicity: it writes a checkpoint into a temporary folder and renames it
when complete (cleaning up the temporary folders of a killed run), so a run killed while
saving leaves the previous checkpoints intact. It does not check what it reads back;
:func:`restore` does: a checkpoint that cannot be read, whose leaves differ from the
model's in structure, shape or dtype, whose config differs in a field that changes the
trajectory, whose bits differ from their checksums, or that holds non-finite values
raises :class:`CheckpointError`. :func:`restore_latest` walks back from the newest to
the newest good one, moving the damaged ones aside (never deleting them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging
import os
import pathlib
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from clockwork import CWVAE
from clockwork.training import TrainState, init_train_state, make_optimizer

if TYPE_CHECKING:
    from run_config import RunConfig

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints.damaged"  # beside CHECKPOINT_DIR: damaged ones, moved aside
MANIFEST_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it and says why."""


def manager(
    directory: str | pathlib.Path, *, keep: int = 1, keep_every: int = 0, read_only: bool = False
) -> ocp.CheckpointManager:
    """Keeps the ``keep`` latest checkpoints and every one at a multiple of ``keep_every``."""
    policies: list[Any] = [checkpoint_managers.LatestN(keep)]
    if keep_every:
        policies.append(checkpoint_managers.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(
    mgr: ocp.CheckpointManager,
    state: TrainState,
    pipeline: dict[str, int],
    config: RunConfig | None = None,
    window: list[dict[str, float]] | None = None,
) -> None:
    """Writes checkpoint ``state.step`` with its manifest (blocks until it is on disk).

    ``config`` is stored in the manifest (and checked by :func:`restore`); ``window``
    holds the metrics of steps not yet logged.

    Raises:
      CheckpointError: the checkpoint could not be written (a full disk, an unwritable
        folder); its partial folder is removed and earlier checkpoints are untouched.
    """
    stored = state.replace(key=jax.random.key_data(state.key))
    items: dict[str, Any] = {
        "state": ocp.args.StandardSave(stored),
        "pipeline": ocp.args.JsonSave(pipeline),
        "manifest": ocp.args.JsonSave(manifest(stored, config)),
    }
    if window:
        items["window"] = ocp.args.JsonSave({"metrics": window})
    step = int(state.step)
    try:
        with _quiet():
            mgr.save(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- OSError from Python, others from TensorStore
        directory = pathlib.Path(str(mgr.directory))
        if jax.process_index() == 0:  # Orbax would remove it at the next start
            for partial in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {directory / str(step)}: "
                              f"{_reason(e)}; the checkpoints before it are intact") from e


def manifest(stored: Any, config: RunConfig | None = None) -> dict[str, Any]:
    """What :func:`restore` checks a checkpoint's state against: the tree's leaf paths,
    shapes and dtypes, a checksum per leaf (:func:`checksums`) and the config."""
    return {
        "format": MANIFEST_FORMAT,
        "leaves": [[path, list(shape), dtype] for path, shape, dtype in leaf_specs(stored)],
        "checksums": checksums(stored),
        "config": None if config is None else config.to_dict(),
    }


def leaf_specs(tree: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """``(path, shape, dtype)`` of every leaf of ``tree`` (arrays or shape structs)."""
    return [(jax.tree_util.keystr(path), tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


@jax.jit
def _leaf_checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    out = []
    for leaf in leaves:
        flat = leaf.reshape(-1)
        size = flat.dtype.itemsize
        if size == 4:
            words = jax.lax.bitcast_convert_type(flat, jnp.uint32)
        elif size == 2:
            words = jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
        elif size == 1:
            words = jax.lax.bitcast_convert_type(flat, jnp.uint8).astype(jnp.uint32)
        else:  # 8 bytes: two words each
            words = jax.lax.bitcast_convert_type(flat, jnp.uint32).reshape(-1)
        # An odd weight per position: a change of any one bit changes the sum mod 2**32,
        # and integer sums do not depend on the order or the sharding of the reduction.
        index = jnp.arange(words.size, dtype=jnp.uint32)
        weights = (index * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)
        out.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return out


def checksums(tree: Any) -> list[int]:
    """One 32-bit checksum of every leaf's bits: the sum, modulo 2**32, of its 32-bit
    words times odd weights of their positions (computed where the arrays are)."""
    return [int(c) for c in jax.device_get(_leaf_checksums(jax.tree.leaves(tree)))]


def build_model(config: RunConfig, key: int | jax.Array = 0) -> CWVAE:
    """The run's model (its ``model``, ``loss`` and ``speed`` sections), the parameters
    drawn from ``nnx.Rngs(key)``."""
    return CWVAE.from_config(config.model, loss=config.loss, speed=config.speed,
                             rngs=nnx.Rngs(key))


def abstract_state(config: RunConfig) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph and the shapes of its train state, computing nothing."""
    optimizer = make_optimizer(**dataclasses.asdict(config.optim))

    def create() -> TrainState:
        return init_train_state(build_model(config), optimizer, jax.random.key(0))[1]

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(config)))
    return graphdef, jax.eval_shape(create)


def restore(
    mgr: ocp.CheckpointManager,
    step: int,
    abstract: TrainState,
    sharding: Any = None,
    config: RunConfig | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Checkpoint ``step`` as a train state shaped like ``abstract`` and its pipeline
    state (with the unlogged ``window`` metrics under ``"window"`` when it has them).

    ``sharding`` places the restored state: one ``jax.sharding.Sharding`` for every leaf
    or a tree of them shaped like ``abstract`` (``clockwork.parallel.param_shardings``).
    Any mesh works, whatever the mesh the checkpoint was written from; without it the
    arrays go where Orbax puts them by default. With ``config``, a checkpoint whose
    stored config differs in a field that changes the trajectory is refused.

    Raises:
      CheckpointError: the checkpoint cannot be read, or differs from ``abstract`` in
        leaves, shapes or dtypes, from ``config``, or from its checksums, or holds
        non-finite values. A checkpoint written before manifests existed is checked
        for its tree, shapes, dtypes and finiteness only.
    """
    where = pathlib.Path(str(mgr.directory)) / str(step)
    target = abstract.replace(key=jax.eval_shape(jax.random.key_data, abstract.key))
    items = {p.name for p in where.iterdir()} if where.is_dir() else set()
    if not {"state", "pipeline"} <= items:
        missing = sorted({"state", "pipeline"} - items)
        raise CheckpointError(f"checkpoint {where} is incomplete: it lacks {', '.join(missing)}")
    meta = None
    if "manifest" in items:
        meta = _read(mgr, step, where, manifest=ocp.args.JsonRestore())["manifest"]
        _check_manifest(meta, target, config, where)
    if sharding is None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    else:
        if isinstance(sharding, jax.sharding.Sharding):
            sharding = jax.tree.map(lambda _: sharding, target)
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, sharding
        )
    args: dict[str, Any] = {"state": ocp.args.StandardRestore(target),
                            "pipeline": ocp.args.JsonRestore()}
    if "window" in items:
        args["window"] = ocp.args.JsonRestore()
    restored = _read(mgr, step, where, **args)
    got, want = leaf_specs(restored["state"]), leaf_specs(target)
    if got != want:
        raise CheckpointError(f"checkpoint {where} holds another model: "
                              f"{_first_difference(got, want)}")
    sums = None if meta is None else checksums(restored["state"])
    if sums is not None and sums != meta["checksums"]:
        bad = [path for (path, _, _), a, b in zip(want, sums, meta["checksums"], strict=True)
               if a != b]
        which = bad[0] if len(bad) == 1 else f"{bad[0]} and {len(bad) - 1} other leaves"
        raise CheckpointError(f"checkpoint {where} is damaged: the bits of {which} differ "
                              "from the checksums written with it")
    finite = jax.device_get([jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating)
                             else True for x in jax.tree.leaves(restored["state"])])
    for (path, _, _), ok in zip(want, finite, strict=True):
        if not ok:
            raise CheckpointError(f"checkpoint {where} holds non-finite values in {path}")
    state = restored["state"].replace(key=jax.random.wrap_key_data(restored["state"].key))
    position = dict(restored["pipeline"])
    if "window" in items:
        position["window"] = list(restored["window"]["metrics"])
    return state, position


def restore_latest(
    mgr: ocp.CheckpointManager,
    abstract: TrainState,
    sharding: Any = None,
    config: RunConfig | None = None,
    warn: Callable[[str], None] = print,
) -> tuple[int, TrainState, dict[str, Any]] | None:
    """The newest good checkpoint as ``(step, state, pipeline state)``, or ``None`` when
    there is none at all.

    Each damaged newer checkpoint gets one ``warn`` line naming it and is moved into
    ``<run>/checkpoints.damaged/`` (by process 0; kept for inspection, so that the run
    can write that step again). When every checkpoint is damaged, raises
    :class:`CheckpointError` naming the folder.
    """
    directory = pathlib.Path(str(mgr.directory))
    steps = sorted(mgr.all_steps(), reverse=True)
    for step in steps:
        try:
            state, position = restore(mgr, step, abstract, sharding, config)
        except CheckpointError as e:
            moved = _move_aside(directory, step)
            warn(f"warning: {e}; moved it to {moved}")
            continue
        if step != steps[0]:
            mgr.reload()
        return step, state, position
    if steps:
        mgr.reload()
        raise CheckpointError(f"no usable checkpoint in {directory}: all {len(steps)} are "
                              f"damaged (moved to {directory.parent / DAMAGED_DIR}); start "
                              f"over with another --logdir, or remove {directory}")
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Holds back what Orbax's and TensorStore's threads print while a checkpoint is
    written or read: when it fails they log and print tracebacks at length (and leave
    coroutines that complain when collected), which the one-line error replaces. When
    the block succeeds, what was printed is passed on."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels, stderr, hook = [log.level for log in loggers], sys.stderr, sys.unraisablehook
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    sys.stderr = captured = io.StringIO()
    sys.unraisablehook = lambda _: None
    try:
        yield
    except BaseException:
        gc.collect()  # the failed operation's coroutines complain now, not at exit
        hook = _without_orbax_coroutines(hook)  # and those collected later are dropped,
        warnings.filterwarnings(  # with the warnings of those it never awaited
            "ignore", message="coroutine '.*' was never awaited", category=RuntimeWarning)
        sys.excepthook = _without_closed_loop_errors(sys.excepthook)
        levels[1] = logging.CRITICAL  # its tasks' "exception never retrieved", also later
        raise
    else:
        stderr.write(captured.getvalue())
    finally:
        sys.stderr, sys.unraisablehook = stderr, hook
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _without_closed_loop_errors(hook: Callable[..., None]) -> Callable[..., None]:
    """``hook`` (a ``sys.excepthook``), silent about ``RuntimeError('Event loop is
    closed')``: TensorStore's threads, still finishing a failed operation, print one
    through it each time they call back into Orbax's event loop, which has closed."""
    if getattr(hook, "drops_closed_loop_errors", False):
        return hook

    def filtered(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if not (kind is RuntimeError and str(error) == "Event loop is closed"):
            hook(kind, error, tb)

    filtered.drops_closed_loop_errors = True  # type: ignore[attr-defined]
    return filtered


def _without_orbax_coroutines(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """``hook`` (a ``sys.unraisablehook``), silent about Orbax's abandoned coroutines."""
    if getattr(hook, "drops_orbax_coroutines", False):
        return hook

    def filtered(unraisable: Any) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or "orbax" not in code.co_filename:
            hook(unraisable)

    filtered.drops_orbax_coroutines = True  # type: ignore[attr-defined]
    return filtered


def _read(mgr: ocp.CheckpointManager, step: int, where: pathlib.Path, **items: Any) -> Any:
    try:
        with _quiet():
            return mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- Orbax and TensorStore raise many kinds
        raise CheckpointError(f"checkpoint {where} cannot be read ({_reason(e)})") from e


def _reason(error: BaseException) -> str:
    """Why ``error`` happened, in one line: the operating system's reason when there is
    one (TensorStore writes its code into the message as ``[os_error_code='27']``), else
    the first line of the innermost exception's message, shortened."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code:
            return os.strerror(int(code.group(1)))
    for e in reversed(chain):
        text = str(e).strip()
        if text:
            line = text.splitlines()[0]
            return line if len(line) <= 300 else line[:297] + "..."
    return type(error).__name__


def _check_manifest(meta: Any, target: Any, config: RunConfig | None,
                    where: pathlib.Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"checkpoint {where} has an unreadable manifest")
    try:
        got = [(path, tuple(shape), dtype) for path, shape, dtype in meta["leaves"]]
        if len(meta["checksums"]) != len(got):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {where} has an unreadable manifest") from None
    want = leaf_specs(target)
    if got != want:
        raise CheckpointError(f"checkpoint {where} holds another model: "
                              f"{_first_difference(got, want)}")
    if config is not None and meta["config"] is not None:
        import run_config

        try:
            saved = run_config.build(meta["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {where} has a config that no longer "
                                  f"builds: {e}") from None
        conflicts = run_config.resume_conflicts(saved, config)
        if conflicts:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise CheckpointError(f"checkpoint {where} was written by another config "
                                  f"({changes})")


def _first_difference(got: list, want: list) -> str:
    for (gp, gs, gd), (wp, ws, wd) in zip(got, want):
        if gp != wp:
            return f"leaf {gp} where the model has {wp}"
        if (gs, gd) != (ws, wd):
            return f"{gp} is {gd}{list(gs)}, the model's is {wd}{list(ws)}"
    return f"{len(got)} leaves, the model has {len(want)}"


def _move_aside(directory: pathlib.Path, step: int) -> pathlib.Path:
    """Moves ``directory/step`` into ``DAMAGED_DIR`` beside ``directory`` (process 0);
    returns where it went."""
    aside = directory.parent / DAMAGED_DIR
    target = aside / str(step)
    suffix = 1
    while target.exists():
        target, suffix = aside / f"{step}-{suffix}", suffix + 1
    if jax.process_index() == 0:
        aside.mkdir(exist_ok=True)
        shutil.move(str(directory / str(step)), str(target))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"clockwork-move-aside-{step}")
    return target
