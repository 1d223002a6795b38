"""Step time of the sharded training step on 1, 2 and 8 fake CPU devices; run by hand.

    .venv/bin/python benchmarks/sharded_step.py                     # demo-sized model
    .venv/bin/python benchmarks/sharded_step.py --preset mmnist --batch 16 --seq-len 16

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``)
with ``clockwork.parallel.make_sharded_train_step`` on an ``N x 1`` mesh, and prints the
compile seconds and the median step time after warm-up. ``demo`` is the example
programs' demo config (``examples/configs/demo.yaml``); ``--set key=value`` changes a
field of the model, loss, optim or speed config (see ``train_step.py``). Fake devices share the same CPU
cores, so this shows the overhead of the sharded path, not a speed-up. The last line is
a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence


def measure(
    preset: str, batch: int, seq_len: int, repeats: int, sets: Sequence[str] = ()
) -> dict[str, float]:
    """Compile seconds and median step seconds of the sharded step on every device."""
    import jax
    import numpy as np

    import benchlib
    from clockwork import parallel
    from clockwork.training import init_train_state, make_optimizer

    cfg = benchlib.load(preset, benchlib.parse_sets(sets))
    optimizer = make_optimizer(**dataclasses.asdict(cfg.optim))
    graphdef, state = init_train_state(benchlib.build(cfg), optimizer, jax.random.key(0))
    mesh = parallel.make_mesh()
    state = parallel.shard_params(state, mesh)
    step = parallel.make_sharded_train_step(
        graphdef, optimizer, mesh, compute_dtype=cfg.speed.compute_dtype
    )
    frames = np.random.default_rng(0).integers(
        0, 256, (batch, seq_len, 64, 64, cfg.model.channels), np.uint8)
    t0 = time.perf_counter()
    state, metrics = step(state, frames)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, frames)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"devices": jax.device_count(), "compile_s": first - median, "step_s": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=["demo", "mmnist", "mazes", "minerl"])
    parser.add_argument("--batch", type=int, default=8, help="global batch (divisible by 8)")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the model, loss, optim or speed fields")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.preset, args.batch, args.seq_len, args.repeats, args.set)))
        return
    figures = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len,
               "set": args.set, "runs": []}
    for n in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--preset", args.preset, "--batch",
             str(args.batch), "--seq-len", str(args.seq_len), "--repeats", str(args.repeats),
             "--set", *args.set],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        run = json.loads(out)
        figures["runs"].append(run)
        print(f"{n} device(s): compile {run['compile_s']:.1f} s, step {run['step_s'] * 1e3:.0f} ms "
              f"(median of {args.repeats})", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
