"""Compare the cells at level 0 of a CW-VAE at an equal step budget; run by hand, never as a test.

    .venv/bin/python benchmarks/cells.py --steps 300 --batch 8 --seq-len 16

One row per configuration: each built-in cell (``rssm``, ``gru``, ``lstm``,
``categorical``, ``mdn``) at level 0 of a 2-level hierarchy (factor 4) whose level 1 is
``rssm``, and ``mixed``, the 3-level hierarchy ``("rssm", "categorical", "lstm")``
(fastest first, factors ``(4, 4)``). Sizes are small and comparable: deterministic and
hidden sizes 64, stochastic size 16 (``rssm``, ``mdn``, 5 mixtures), 8 groups of 8
classes (``categorical``); conv nets with 8 filters and 2 dense layers of 128 in the
encoder; ``LossConfig(dec_stddev=0.1)``; the default ``SpeedConfig``.

Each row builds its model from ``--seed``, counts its parameters and trains ``--steps``
steps of Adam (lr 1e-3, ``make_optimizer``) on batches of ``--batch`` windows of
``--seq-len`` frames from 512 generated Moving MNIST training videos; it reports the
median step time after the first (compiling) step and the mean loss of the last 10% of
the steps. It then predicts ``max(--horizons)`` frames open loop (key ``--seed``) after a
context of generated test videos (``--eval-videos`` of them) and reports the mean SSIM
and PSNR (``clockwork.metrics``, defaults: SSIM's data range 2 as in the paper) of the
predictions, clipped to ``[0, 1]``, over the first ``h`` predicted frames, for each
``h`` in ``--horizons``. A row's context is the smallest multiple of its top period
(4 for two levels, 16 for three) that is at least ``--context``; every row predicts the
same frames, those after the longest of the contexts.

It prints each row of the table as it finishes, then the table in markdown, the CPU,
the wall time and the command line; the last line is a JSON object of the results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import benchlib
import cpuinfo
from clockwork import CWVAE
from clockwork.config import LossConfig, ModelConfig
from clockwork.data import VideoPipeline, generate_moving_mnist, to_float
from clockwork.metrics import psnr, ssim
from clockwork.training import init_train_state, make_optimizer, make_train_step

OPTIONS: dict[str, dict[str, Any]] = {
    "rssm": {"stoch_size": 16, "det_size": 64, "hidden_size": 64},
    "gru": {"det_size": 64, "hidden_size": 64},
    "lstm": {"det_size": 64, "hidden_size": 64},
    "categorical": {"groups": 8, "classes": 8, "det_size": 64, "hidden_size": 64},
    "mdn": {"stoch_size": 16, "det_size": 64, "hidden_size": 64, "mixtures": 5},
}
"""Each cell's options, the same at every level it sits on."""

ROWS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    **{name: ((name, "rssm"), (4,)) for name in OPTIONS},
    "mixed": (("rssm", "categorical", "lstm"), (4, 4)),
}
"""Row name -> (cells fastest first, temporal factors)."""

TRAIN_VIDEOS = 512
LR = 1e-3


def model_config(cells: tuple[str, ...], factors: tuple[int, ...]) -> ModelConfig:
    return ModelConfig(
        channels=1, levels=len(cells), factors=factors, cell=cells,
        cell_options=tuple(OPTIONS[c] for c in cells), filters=8, enc_dense_layers=2,
        enc_dense_embed_size=128,
    )


def row_context(cfg: ModelConfig, context: int) -> int:
    """The smallest multiple of the top period that is at least ``context``."""
    period = cfg.clock.top_period
    return -(-context // period) * period


def run_row(
    name: str, args: argparse.Namespace, train: np.ndarray, test: np.ndarray,
    context: int, horizons: list[int],
) -> dict[str, Any]:
    """Train and evaluate one configuration; ``test`` holds ``context`` frames of the
    longest context and then the frames to predict."""
    cells, factors = ROWS[name]
    cfg = model_config(cells, factors)
    ctx = row_context(cfg, args.context)
    model = CWVAE.from_config(cfg, loss=LossConfig(dec_stddev=0.1), rngs=nnx.Rngs(args.seed))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    optimizer = make_optimizer(LR)
    graphdef, state = init_train_state(model, optimizer, jax.random.key(args.seed))
    del model
    step = make_train_step(graphdef, optimizer)
    times, losses = [], []
    with VideoPipeline(train, seq_len=args.seq_len, batch_size=args.batch, seed=args.seed,
                       process_index=0, process_count=1, prefetch=0) as pipeline:
        for _, batch in zip(range(args.steps), pipeline):
            t0 = time.perf_counter()
            state, metrics = step(state, jnp.asarray(batch))
            losses.append(float(metrics["loss"]))
            times.append(time.perf_counter() - t0)
    tail = losses[-max(1, len(losses) // 10):]

    horizon = max(horizons)

    @jax.jit
    def predict(params: Any, frames: jax.Array, key: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params).open_loop(frames, horizon, key)

    frames = to_float(test)
    pred = jnp.clip(predict(state.params, frames[:, context - ctx : context],
                            jax.random.key(args.seed)), 0.0, 1.0)
    target = frames[:, context:]
    ssim_curve = jnp.mean(ssim(pred, target), axis=0)
    psnr_curve = jnp.mean(psnr(pred, target), axis=0)
    return {
        "row": name,
        "cells": list(cells),
        "factors": list(factors),
        "context": ctx,
        "params": int(params),
        "first_step_s": times[0],
        "step_s": statistics.median(times[1:]),
        "final_loss": statistics.fmean(tail),
        "ssim": {h: float(jnp.mean(ssim_curve[:h])) for h in horizons},
        "psnr": {h: float(jnp.mean(psnr_curve[:h])) for h in horizons},
    }


def table_cells(r: dict[str, Any], horizons: list[int]) -> list[str]:
    out = ["+".join(r["cells"]), str(r["context"]), f"{r['params']:,}", f"{r['step_s']:.4f}",
           f"{r['final_loss']:.2f}"]
    for h in horizons:
        out += [f"{r['ssim'][h]:.4f}", f"{r['psnr'][h]:.2f}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per row (>= 2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=16, help="frames per training window")
    parser.add_argument("--horizons", default="4,8,12",
                        help="comma-separated numbers of predicted frames to score")
    parser.add_argument("--context", type=int, default=8,
                        help="context frames, rounded up per row to a multiple of its top period")
    parser.add_argument("--eval-videos", type=int, default=16)
    parser.add_argument("--only", choices=sorted(ROWS), help="run this row only")
    parser.add_argument("--seed", type=int, default=0,
                        help="model init, batch order, training and prediction keys")
    args = parser.parse_args()
    horizons = sorted({int(h) for h in args.horizons.split(",")})
    if horizons[0] < 1 or args.context < 1 or args.eval_videos < 1:
        raise SystemExit("--horizons, --context and --eval-videos must be positive")
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step compiles)")

    start = time.perf_counter()
    names = [args.only] if args.only else list(ROWS)
    context = max(row_context(model_config(*ROWS[n]), args.context) for n in names)
    train = generate_moving_mnist(TRAIN_VIDEOS, args.seq_len, 0)
    test = generate_moving_mnist(args.eval_videos, context + max(horizons), 0, digit_split="test")

    headers = ["cells", "ctx", "params", "step s", "final loss"]
    for h in horizons:
        headers += [f"SSIM@{h}", f"PSNR@{h}"]
    widths = [max(len(hd), 10) for hd in headers]
    widths[0] = max(len("+".join(ROWS[n][0])) for n in ROWS)

    def aligned(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])]
                         + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    print(f"{args.steps} steps of batch {args.batch} x {args.seq_len} frames per row; "
          f"{args.eval_videos} test videos, horizons {horizons}", flush=True)
    print(aligned(headers), flush=True)
    results = []
    for name in names:
        r = run_row(name, args, train, test, context, horizons)
        results.append(r)
        print(aligned(table_cells(r, horizons)), flush=True)

    print()
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(["---"] + ["--:"] * (len(headers) - 1)) + "|")
    for r in results:
        print("| " + " | ".join(table_cells(r, horizons)) + " |")
    print()
    wall = time.perf_counter() - start
    command = shlex.join(sys.orig_argv)
    cpu = cpuinfo.cpu_model()
    print(f"CPU: {cpu}")
    print(f"wall time: {wall:.1f} s")
    print(f"command: {command}")
    print(json.dumps({
        "args": vars(args), "horizons": horizons, "train_videos": TRAIN_VIDEOS, "lr": LR,
        "cpu": cpu, "jax": jax.__version__, "wall_s": round(wall, 2), "command": command,
        "rows": results,
    }))


if __name__ == "__main__":
    main()
