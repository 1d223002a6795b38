"""Time one CW-VAE training step on this machine; run by hand, never as a test.

    .venv/bin/python benchmarks/train_step.py --preset mmnist --batch 8 --seq-len 100

Prints the median seconds per step after warm-up, compile seconds, peak RSS (of the
training steps), the step's FLOPs from XLA's cost analysis, the achieved FLOP/s, the CPU (model, flags)
and the best rate of a 4096^2 float32 product measured in the same process (XLA's
``jnp.dot`` under this process's ``XLA_FLAGS``, NumPy's BLAS), their ratio (MFU), and the
loss against the plain computation (float32, lax convolutions, all frames at once, no
remat) for the same weights, batch and key; the last line is a JSON object. The program
restarts itself with glibc's malloc on huge pages (``examples/host.py``; opt out with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0``).

``--set key=value`` changes a field of the preset's model, loss, optim or speed config
(``levels=2``, ``'cell_options={"stoch_size": 4}'``, ``remat=true``,
``compute_dtype=bfloat16``); values are JSON, else strings.

The model FLOPs (``flops_per_step``, used for MFU) are those of the plain computation;
``program_flops_per_step`` are those of the program that ran (``hfu`` is its ratio). XLA
counts the body of a loop once, so the latter leaves out all but one chunk of the chunked
conv nets (``conv_chunk``) and is only a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import jax
from flax import nnx

import benchlib
import cpuinfo
from gemm import numpy_gflops, xla_gflops
from clockwork.training import make_loss_fn, make_train_step
from host import hugepage_malloc_requested, restart_with_hugepage_malloc


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def xla_flops(cost: dict | list | None) -> float:
    """The ``flops`` entry of an XLA cost analysis (NaN when it has none)."""
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchlib.add_step_arguments(parser, 5, "timed steps after warm-up")
    args = parser.parse_args()

    overrides = benchlib.parse_sets(args.set)
    cfg = benchlib.load(args.preset, overrides)
    dtype = cfg.speed.compute_dtype
    opt, graphdef, state, step, frames = benchlib.train_step_setup(cfg, args.batch, args.seq_len)

    t0 = time.perf_counter()
    compiled = step.lower(state, frames).compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(compiled.cost_analysis())

    state, metrics = compiled(state, frames)  # warm-up (the step donates its input)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frames)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = peak_rss_gib()  # of the training steps alone: before the references below
    del state, metrics
    # The references start from the initial state, rebuilt (the same key): a copy held
    # through the steps would count in their peak.
    _, state0 = benchlib.initial_state(cfg, opt)

    # The plain computation: float32, lax convolutions, all frames at once, no remat.
    plain_graphdef = nnx.graphdef(nnx.eval_shape(lambda: benchlib.build(cfg, benchlib.PLAIN)))
    plain_step = make_train_step(plain_graphdef, opt, compute_dtype=benchlib.PLAIN.compute_dtype)
    model_flops = xla_flops(plain_step.lower(state0, frames).cost_analysis())

    def loss_of(g: nnx.GraphDef, compute_dtype: str) -> float:
        loss_fn = jax.jit(make_loss_fn(g, compute_dtype=compute_dtype))
        return float(loss_fn(state0.params, frames, state0.key)[0])

    loss_here = loss_of(graphdef, dtype)
    loss_plain = loss_of(plain_graphdef, benchlib.PLAIN.compute_dtype)
    gemm = {"xla_f32": xla_gflops() * 1e9, "numpy_f32": numpy_gflops() * 1e9}
    matmul = max(gemm.values())
    achieved = model_flops / step_s
    figures = {
        "preset": args.preset,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "overrides": overrides,
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "compile_s": round(compile_s, 2),
        "peak_rss_gib": round(peak, 3),
        "flops_per_step": model_flops,
        "program_flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "matmul_flops_per_s": matmul,
        "gemm_flops_per_s": gemm,
        "mfu": achieved / matmul,
        "hfu": flops / step_s / matmul,
        "loss": loss_here,
        "loss_plain_f32": loss_plain,
        "loss_rel_diff": abs(loss_here - loss_plain) / abs(loss_plain),
        "jax": jax.__version__,
        "cpu": cpuinfo.cpu_summary(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc_hugepages": hugepage_malloc_requested(),
    }
    cpu = figures["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, {' '.join(cpu['isa'])}; "
          f"XLA_FLAGS={figures['xla_flags']!r}")
    print(f"{args.preset} batch {args.batch} x {args.seq_len} frames: "
          f"{step_s:.3f} s/step (median of {args.steps}), compile {compile_s:.1f} s, "
          f"peak RSS {peak:.2f} GiB, malloc huge pages {'on' if figures['malloc_hugepages'] else 'off'}")
    print(f"model FLOPs {model_flops / 1e9:.1f} G/step (program: {flops / 1e9:.1f} G), "
          f"achieved {achieved / 1e9:.1f} GFLOP/s, best GEMM {matmul / 1e9:.1f} GFLOP/s "
          f"(XLA {gemm['xla_f32'] / 1e9:.0f}, NumPy {gemm['numpy_f32'] / 1e9:.0f}), "
          f"MFU {achieved / matmul:.1%} (program FLOPs: {figures['hfu']:.1%})")
    print(f"loss {loss_here:.6g} vs plain float32 {loss_plain:.6g} "
          f"(relative difference {figures['loss_rel_diff']:.2e})")
    print(json.dumps(figures))


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
