"""Subprocess side of tests/parallel: fake CPU devices need XLA_FLAGS before JAX starts.

    python parallel_worker.py MODE OUT_DIR [ARGS...]

``mesh``: one step on 1 device, on a mesh of 8 and on a 2x4 mesh with rules; error
messages; saves the 8-device state as a checkpoint and the 2-step single-device
reference for ``distributed``. ``cells``: on 4 devices, the loss and gradients of models
with user cells (tests/user_cells.py, with and without the fast path) and with the
library's categorical, MDN-RNN and LSTM cells on meshes of 1 and 4, and the
collectives inside loops of each compiled sharded step. ``restore``: restores that checkpoint on the devices of
this process (all of them on one mesh). ``distributed PORT ID``: two processes, one device each, train two steps.
Each mode writes ``OUT_DIR/<mode>[-<id>].json`` (and ``.npz`` of parameters).
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

TESTS = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = TESTS.parent / "examples"
sys.path[:0] = [str(EXAMPLES), str(TESTS)]

import checkpointing  # noqa: E402
import user_cells  # noqa: E402

from clockwork import (  # noqa: E402
    CWVAE,
    Clock,
    ConvDecoder,
    ConvEncoder,
    Hierarchy,
    ModelConfig,
    SpeedConfig,
    parallel,
)
from clockwork.cells import CategoricalRSSMCell, LSTMCell, MDNRNNCell, RSSMCell  # noqa: E402
from clockwork.data import VideoPipeline  # noqa: E402
from clockwork.training import (  # noqa: E402
    init_train_state,
    make_loss_fn,
    make_optimizer,
    make_train_step,
)

CONFIG = ModelConfig(
    levels=2, temporal_factor=2, filters=2, enc_dense_layers=2, enc_dense_embed_size=4,
    cell_options={"stoch_size": 2, "det_size": 3, "hidden_size": 3},
)
SPEED = SpeedConfig(conv_chunk=8)
RULES = [(r"decoder/dense/kernel", PartitionSpec(None, parallel.MODEL_AXIS))]
VIDEOS = np.random.default_rng(0).integers(0, 256, (8, 8, 64, 64, 1), np.uint8)  # 16 windows


def progress(what: str) -> None:
    """One line per finished phase: the test's watchdog reads them as signs of life."""
    print(f"progress: {what}", flush=True)


def fresh_state():
    optimizer = make_optimizer(1e-3)
    model = CWVAE.from_config(CONFIG, speed=SPEED, rngs=nnx.Rngs(0))
    return (*init_train_state(model, optimizer, jax.random.key(1)), optimizer)


def frames(batch: int = 8) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (batch, 4, 64, 64, 1), np.uint8)


def flat_params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(parallel.host_local(state.params))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def specs(tree) -> list[str]:
    return sorted({str(x.sharding.spec) for x in jax.tree.leaves(tree)})


def loop_collectives(hlo: str) -> int:
    """Collectives inside the bodies of the while loops (scans, chunk maps) of compiled HLO."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    count = 0
    for computation in re.split(r"\n(?=\S.*\{\s*$)", hlo, flags=re.M):
        head = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)", computation)
        if head and head.group(1) in bodies:
            count += len(re.findall(
                r"\b(?:all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(",
                computation,
            ))
    return count, len(bodies)


def single_grads(graphdef, params) -> dict:
    """The single-device gradient of the loss on ``frames()`` under key 2."""
    loss_fn = make_loss_fn(graphdef)
    return jax.jit(lambda p, f, k: jax.grad(loss_fn, has_aux=True)(p, f, k)[0])(
        params, frames(), jax.random.key(2))


def grad_diff(graphdef, params, mesh, shardings, single) -> float:
    """Largest gradient difference, sharded against ``single`` (one device), relative to
    the largest gradient."""
    key = jax.random.key(2)
    batch, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    sharded = parallel.sharded_gradients(graphdef, mesh)
    many = jax.jit(lambda p, f, k: sharded(p, f, k)[0], in_shardings=(shardings, batch, rep))(
        parallel.shard_params(params, mesh, RULES if mesh.shape["model"] > 1 else None),
        parallel.shard_batch(frames(), mesh), key,
    )
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(single))
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         single, parallel.host_local(many))
    return max(jax.tree.leaves(diffs)) / scale


def user_model(kind: str) -> CWVAE:
    """A 2-level model whose level 0 (and, for "both", level 1) is a user cell; "slow"
    has a built-in RSSM cell above a user cell without the fast path; "library" has
    three levels of the categorical RSSM, MDN-RNN and LSTM cells."""
    rngs = nnx.Rngs(0)
    clock = Clock((2, 2)) if kind == "library" else CONFIG.clock
    encoder = ConvEncoder(clock, filters=2, dense_layers=2, dense_embed_size=4, rngs=rngs)
    e = encoder.embed_size
    if kind == "library":
        top = LSTMCell(e, 3, det_size=3, hidden_size=3, rngs=rngs)
        mid = MDNRNNCell(e, top.feature_size, stoch_size=2, det_size=3, mixtures=2, rngs=rngs)
        low = CategoricalRSSMCell(e, mid.feature_size, groups=2, classes=3, det_size=3,
                                  hidden_size=3, rngs=rngs)
        decoder = ConvDecoder(low.feature_size, filters=2, rngs=rngs)
        return CWVAE(encoder, Hierarchy([low, mid, top], clock), decoder, conv_chunk=8)
    if kind == "slow":  # no fast path, under a built-in cell
        top = RSSMCell(e, 5, stoch_size=2, det_size=3, hidden_size=3, rngs=rngs)
        low = user_cells.LeakyCell(e, 5, rngs=rngs)
    else:  # user cells at both levels, with and without the fast path
        top = user_cells.LeakyCell(e, 8, rngs=rngs)
        low = user_cells.FastLeakyCell(e, 8, rngs=rngs)
    decoder = ConvDecoder(low.feature_size, filters=2, rngs=rngs)
    return CWVAE(encoder, Hierarchy([low, top], clock), decoder, conv_chunk=8)


def cells_mode(out: pathlib.Path) -> dict:
    result = {"devices": jax.device_count()}
    optimizer = make_optimizer(1e-3)
    x = frames()
    key = jax.random.key(2)
    for kind in ("slow", "both", "library"):
        graphdef, state = init_train_state(user_model(kind), optimizer, jax.random.key(1))
        loss_fn = make_loss_fn(graphdef)
        (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params, x, key)
        scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
        for devices in (1, 4):
            mesh = parallel.make_mesh(devices)
            args = (parallel.shard_params(state.params, mesh), parallel.shard_batch(x, mesh), key)
            # One compilation serves both the numbers and the look at its loops.
            compiled = jax.jit(parallel.sharded_gradients(graphdef, mesh)).lower(*args).compile()
            collectives, loops = loop_collectives(compiled.as_text())
            many, metrics = compiled(*args)
            diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                       for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(parallel.host_local(many))))
            progress(f"cells {kind} on {devices} devices")
            result[f"{kind}-{devices}"] = {
                "loss": float(loss), "sharded_loss": float(metrics["loss"]),
                "grad_rel_diff": diff / scale, "loop_collectives": collectives, "loops": loops,
            }
    return result


def error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return ""


def mesh_mode(out: pathlib.Path) -> dict:
    graphdef, state, optimizer = fresh_state()
    single_step = make_train_step(graphdef, optimizer, donate=False)
    single_state, single_metrics = single_step(state, frames())
    single = flat_params(single_state)
    result = {"devices": jax.device_count(), "loss_1": float(single_metrics["loss"])}
    grads_1 = single_grads(graphdef, state.params)
    for name, (data, model, rules) in {"8": (8, 1, None), "2x4": (2, 4, RULES)}.items():
        mesh = parallel.make_mesh(data, model)
        shardings = parallel.param_shardings(state, mesh, rules)
        step = parallel.make_sharded_train_step(
            graphdef, optimizer, mesh, state_sharding=shardings, donate=False
        )
        placed = parallel.shard_params(state, mesh, rules)
        collectives, loops = loop_collectives(step.lower(placed, frames()).compile().as_text())
        new, metrics = step(placed, frames())
        progress(f"mesh {name} step")
        kernel = new.params["decoder"]["dense"]["kernel"][...]
        result[name] = {
            "loss": float(metrics["loss"]),
            "grad_norm_diff": abs(float(metrics["grad_norm"]) - float(single_metrics["grad_norm"])),
            "max_param_diff": max_diff(single, flat_params(new)),
            "mesh": dict(mesh.shape),
            "param_specs": specs(new.params),
            "dense_kernel_spec": str(kernel.sharding.spec),
            "metric_specs": specs(metrics),
            "step": int(new.step),
            "loop_collectives": collectives,
            "loops": loops,
            "grad_rel_diff": grad_diff(graphdef, state.params, mesh, shardings.params, grads_1),
        }
        if name == "8":
            mgr = checkpointing.manager(out / "ckpt")
            checkpointing.save(mgr, new, {"epoch": 0, "step": 1})
            mgr.close()
            np.savez(out / "saved.npz", **flat_params(new))
            result["batch_error"] = error(lambda: step(new, frames(6)))
    result["mesh_error"] = error(lambda: parallel.parse_mesh("2x"))
    result["size_error"] = error(lambda: parallel.make_mesh(16))

    # The reference of the two-process run: two steps on the combined batches.
    pipeline = VideoPipeline(VIDEOS, seq_len=4, batch_size=4, seed=3, process_index=0,
                             process_count=1, prefetch=0)
    for _ in range(2):
        state, _ = single_step(state, next(pipeline))
    np.savez(out / "reference.npz", **flat_params(state))
    return result


def restore_mode(out: pathlib.Path) -> dict:
    mesh = parallel.make_mesh()
    abstract = jax.eval_shape(lambda: fresh_state()[1])
    mgr = checkpointing.manager(out / "ckpt", read_only=True)
    state, position = checkpointing.restore(mgr, 1, abstract, parallel.replicated(mesh))
    progress("restored")
    return {
        "devices": jax.device_count(),
        "step": int(state.step),
        "position": position,
        "max_param_diff": max_diff(dict(np.load(out / "saved.npz")), flat_params(state)),
        "device_sets": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(state)}),
    }


def distributed_mode(out: pathlib.Path, port: str, process_id: str) -> dict:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id))
    mesh = parallel.make_mesh()
    graphdef, state, optimizer = fresh_state()
    state = parallel.shard_params(state, mesh)
    pipeline = VideoPipeline(VIDEOS, seq_len=4, batch_size=2, seed=3, prefetch=0)
    step = parallel.make_sharded_train_step(graphdef, optimizer, mesh)
    for i in range(2):
        state, metrics = step(state, next(pipeline))
        progress(f"distributed step {i + 1}")
    np.savez(out / f"distributed-{process_id}.npz", **flat_params(state))
    result = {
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "rows": pipeline.batch_size,
        "loss": float(parallel.host_local(metrics)["loss"]),
    }
    jax.distributed.shutdown()
    return result


def main() -> None:
    mode, out = sys.argv[1], pathlib.Path(sys.argv[2])
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    if mode == "mesh":
        result, name = mesh_mode(out), "mesh"
    elif mode == "cells":
        result, name = cells_mode(out), "cells"
    elif mode == "restore":
        result, name = restore_mode(out), f"restore-{jax.device_count()}"
    else:
        result, name = distributed_mode(out, *sys.argv[3:]), f"distributed-{sys.argv[4]}"
    (out / f"{name}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
