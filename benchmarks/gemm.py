"""The machine's real matrix-product limit; run by hand, never as a test.

    .venv/bin/python benchmarks/gemm.py
    .venv/bin/python benchmarks/gemm.py --xla "default=" "onednn=--xla_cpu_use_onednn=true"
    $PEERS/tfvenv/bin/python benchmarks/gemm.py      # NumPy and TensorFlow only

Prints the CPU (model, cores, clock, instruction sets), its float32 FMA peak worked out
from ``/proc/cpuinfo`` and measured by ``fma_peak.c``, and the rate of an ``n x n``
float32 product (medians of ``--repeats``) in each library that imports here: NumPy's
BLAS, TensorFlow's ``tf.linalg.matmul`` (oneDNN where TF enables it), and XLA's jitted
``jnp.dot`` under each ``--xla`` set of XLA flags (one fresh process per set, since XLA
reads its flags once), in float32 and with bfloat16 inputs and a float32 result. The last
line is a JSON object of all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import cpuinfo

XLA_SETS = (
    "default=",
    "onednn=--xla_cpu_use_onednn=true",
    "no-ynn=--xla_cpu_experimental_ynn_fusion_type=",
)
"""``NAME=FLAGS`` pairs measured by default: XLA as installed, with its oneDNN dot path,
and without its YNNPACK dot fusions (Eigen's kernels)."""


def rate(run: Callable[[], object], flops: float, repeats: int) -> float:
    """GFLOP/s of ``run`` (which must block until done): the median of ``repeats`` after
    one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def numpy_gflops(n: int = 4096, repeats: int = 5) -> float:
    """float32 ``a @ b`` through NumPy's BLAS."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    return rate(lambda: a @ b, 2 * n**3, repeats)


def xla_gflops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """A jitted ``jnp.dot`` of ``dtype`` inputs with a float32 result, under this process's
    ``XLA_FLAGS``."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n)).astype(dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return rate(lambda: f(a, b).block_until_ready(), 2 * n**3, repeats)


def tf_gflops(n: int = 4096, repeats: int = 5) -> float:
    """float32 ``tf.linalg.matmul`` in eager mode."""
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=0)
    b = tf.random.normal((n, n), seed=1)
    return rate(lambda: tf.linalg.matmul(a, b).numpy(), 2 * n**3, repeats)


def importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def xla_in_subprocess(flags: str, n: int, repeats: int) -> dict[str, float]:
    """``xla_gflops`` in float32 and bfloat16 in a fresh process with ``XLA_FLAGS=flags``."""
    env = dict(os.environ, XLA_FLAGS=flags)
    out = subprocess.run([sys.executable, __file__, "--xla-worker", "--n", str(n),
                          "--repeats", str(repeats)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="side of the square matrices")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fma-units", type=int, default=2,
                        help="FMA units per core for the worked-out peak (2 on Intel Xeon "
                             "Gold/Platinum and AMD Zen)")
    parser.add_argument("--xla", nargs="*", default=list(XLA_SETS), metavar="NAME=FLAGS",
                        help="sets of XLA flags to measure jnp.dot under, one process each")
    parser.add_argument("--xla-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.xla_worker:
        print(json.dumps({dtype: round(xla_gflops(args.n, args.repeats, dtype), 1)
                          for dtype in ("float32", "bfloat16")}))
        return

    cpu = cpuinfo.cpu_summary()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['mhz']:.0f} MHz nominal, "
          f"{' '.join(cpu['isa'])}")
    estimate = cpuinfo.fma_peak_estimate(args.fma_units)
    measured = cpuinfo.fma_peak_measured()
    print(f"float32 FMA peak worked out: {estimate['cores']} cores x {estimate['fma_units']} "
          f"FMA units x {estimate['lanes']} lanes x 2 FLOP x {estimate['ghz']:.2f} GHz = "
          f"{estimate['gflops']:.0f} GFLOP/s")
    if measured:
        print(f"float32 FMA peak measured (fma_peak.c, {measured['threads']} threads, "
              f"{measured['lanes']} lanes): {measured['gflops']:.0f} GFLOP/s")
    figures: dict[str, object] = {"cpu": cpu, "n": args.n, "fma_peak_estimate": estimate,
                                  "fma_peak_measured": measured}
    figures["numpy_f32"] = round(numpy_gflops(args.n, args.repeats), 1)
    print(f"NumPy BLAS float32 {args.n}^2: {figures['numpy_f32']:.0f} GFLOP/s")
    if importable("tensorflow"):
        figures["tf_f32"] = round(tf_gflops(args.n, args.repeats), 1)
        print(f"TensorFlow matmul float32 (TF_ENABLE_ONEDNN_OPTS="
              f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}): "
              f"{figures['tf_f32']:.0f} GFLOP/s")
    if importable("jax"):
        figures["xla"] = {}
        for item in args.xla:
            name, _, flags = item.partition("=")
            r = xla_in_subprocess(flags, args.n, args.repeats)
            figures["xla"][name] = dict(r, flags=flags)
            print(f"XLA jnp.dot [{name}: XLA_FLAGS={flags!r}]: float32 {r['float32']:.0f}, "
                  f"bfloat16 inputs {r['bfloat16']:.0f} GFLOP/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
