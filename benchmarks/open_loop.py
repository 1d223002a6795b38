"""Time an open-loop rollout of CW-VAE; run by hand, never as a test.

    .venv/bin/python benchmarks/open_loop.py --frames 1000               # all at once
    .venv/bin/python benchmarks/open_loop.py --frames 10000 --chunked    # bounded memory

Observes ``--context`` frames, predicts the rest at batch ``--batch`` and copies the
predictions to the host: all at once with ``CWVAE.open_loop(context, horizon, key)``
under one ``jax.jit``, or with ``--chunked`` streamed by ``open_loop(..., chunk=...)``
(``--chunk`` frames at a time, default the top period) and copied chunk by chunk, as an
evaluator writing them out would. ``--set key=value`` changes a field of the preset's
model, loss or speed config (see ``train_step.py``). Peak RSS is per process, so run one
configuration per process. The program restarts itself with glibc's malloc on huge
pages (``examples/host.py``; opt out with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0``).
The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import benchlib
from host import hugepage_malloc_requested, restart_with_hugepage_malloc


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mmnist", choices=["demo", "mmnist", "mazes", "minerl"])
    parser.add_argument("--frames", type=int, default=1000, help="context + predicted frames")
    parser.add_argument("--context", type=int, default=36)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunked", action="store_true", help="stream: open_loop(..., chunk=)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="frames per chunk (default: the top period)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the preset's model, loss or speed fields")
    args = parser.parse_args()

    cfg = benchlib.load(args.preset, benchlib.parse_sets(args.set))
    channels = cfg.model.channels
    model = benchlib.build(cfg)
    chunk = model.hierarchy.clock.top_period if args.chunk is None else args.chunk
    rng = np.random.default_rng(0)
    context = jnp.asarray(rng.uniform(size=(args.batch, args.context, 64, 64, channels)),
                          jnp.float32)
    horizon = args.frames - args.context

    if args.chunked:
        def run(key: jax.Array) -> np.ndarray:
            out = np.empty((args.batch, horizon, 64, 64, channels), np.uint8)
            pos = 0
            for chunk_frames in model.open_loop(context, horizon, key, chunk=chunk):
                n = chunk_frames.shape[1]
                out[:, pos : pos + n] = np.asarray(jnp.clip(chunk_frames, 0, 1) * 255).astype(np.uint8)
                pos += n
            return out
    else:
        graphdef, params = nnx.split(model)

        @jax.jit
        def predict(params, context, key):
            return nnx.merge(graphdef, params).open_loop(context, horizon, key)

        def run(key: jax.Array) -> np.ndarray:
            pred = predict(params, context, key)
            return np.asarray(jnp.clip(pred, 0, 1) * 255).astype(np.uint8)

    t0 = time.perf_counter()
    first = run(jax.random.key(0))
    first_s = time.perf_counter() - t0
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        run(jax.random.key(i + 1))
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    assert first.shape == (args.batch, horizon, 64, 64, channels)
    figures = {
        "preset": args.preset,
        "frames": args.frames,
        "context": args.context,
        "batch": args.batch,
        "chunked": args.chunked,
        "chunk": chunk if args.chunked else None,
        "overrides": benchlib.parse_sets(args.set),
        "seconds": round(seconds, 3),
        "compile_s": round(max(first_s - seconds, 0.0), 2),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "malloc_hugepages": hugepage_malloc_requested(),
        "jax": jax.__version__,
    }
    print(f"{args.preset} open loop {args.context}+{horizon} frames, batch {args.batch}"
          f"{' chunked' if args.chunked else ''}: {seconds:.3f} s (median of {args.repeats}), "
          f"first call {first_s:.1f} s, peak RSS {figures['peak_rss_gib']:.2f} GiB, "
          f"malloc huge pages {'on' if figures['malloc_hugepages'] else 'off'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
