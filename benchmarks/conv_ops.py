"""Forward + backward time of the CW-VAE conv encoder and transposed-conv decoder.

Per layer and for the whole encoder + decoder, for each formulation in
``clockwork.convops``, on B*T frames: median seconds over repeats after a warm-up,
the achieved FLOP/s (true conv arithmetic, forward + both gradients) against a large
float32 matmul measured in the same process, XLA's temporary-buffer size, and the
process's peak RSS (the whole model runs in a child process per formulation, so that
each peak is its own). Ends with one line holding a JSON object of the figures.

    .venv/bin/python benchmarks/conv_ops.py --frames 800
    .venv/bin/python benchmarks/conv_ops.py --frames 5000 --channels 3 --feature 900

The machine may be shared: medians over interleaved repeats, and the matmul ceiling
is re-measured beside each figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import benchlib  # noqa: F401 -- puts examples/ (host) on sys.path
from clockwork import convops
from host import restart_with_hugepage_malloc

F = 32  # base filters
# name -> (conv2d impl, conv_transpose2d impl); "fast" is the library default.
MODEL_IMPLS = {"lax": ("lax", "lax"), "fast": ("matmul", "auto"), "subpixel": ("matmul", "subpixel")}


def layer_shapes(m: int, c: int) -> list[tuple[str, str, tuple[int, int, int], tuple[int, ...]]]:
    """(name, kind, per-frame input HWC, kernel HWIO) of every conv layer."""
    return [
        ("enc1", "conv", (64, 64, c), (4, 4, c, F * m)),
        ("enc2", "conv", (31, 31, F * m), (4, 4, F * m, 2 * F * m)),
        ("enc3", "conv", (14, 14, 2 * F * m), (4, 4, 2 * F * m, 4 * F * m)),
        ("enc4", "conv", (6, 6, 4 * F * m), (4, 4, 4 * F * m, 8 * F * m)),
        ("dec1", "tconv", (1, 1, 32 * F * m), (5, 5, 32 * F * m, 4 * F * m)),
        ("dec2", "tconv", (5, 5, 4 * F * m), (5, 5, 4 * F * m, 2 * F * m)),
        ("dec3", "tconv", (13, 13, 2 * F * m), (6, 6, 2 * F * m, F * m)),
        ("dec4", "tconv", (30, 30, F * m), (6, 6, F * m, c)),
    ]


def conv_flops(kind: str, xs: tuple[int, int, int], ws: tuple[int, ...]) -> int:
    """Forward multiply-adds x 2 per frame (no zero taps)."""
    k, _, cin, cout = ws
    if kind == "conv":
        ho, wo = (xs[0] - k) // 2 + 1, (xs[1] - k) // 2 + 1
        return 2 * ho * wo * k * k * cin * cout
    return 2 * xs[0] * xs[1] * k * k * cin * cout


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, reset by exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    return 2 * n**3 / timed(lambda: f(a), repeats)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn()`` (already compiled) over ``repeats`` calls."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def leaky(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, 0.2)


def init_params(key: jax.Array, m: int, c: int, feature: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    keys = jax.random.split(key, 9)
    for kk, (name, _, _, ws) in zip(keys, layer_shapes(m, c), strict=False):
        fan_in = ws[0] * ws[1] * ws[2]
        params[name] = (
            jax.random.normal(kk, ws) / np.sqrt(fan_in),
            jnp.full((ws[3],), 0.01, jnp.float32),
        )
    params["dense"] = (
        jax.random.normal(keys[8], (feature, 32 * F * m)) / np.sqrt(feature),
        jnp.zeros((32 * F * m,), jnp.float32),
    )
    return params


def model_loss(
    params: dict[str, Any],
    images: jax.Array,
    feats: jax.Array,
    impls: tuple[str, str],
    dtype: jnp.dtype,
) -> jax.Array:
    """Encoder (docs/model.md#encoder) and decoder (#decoder) on every frame; a scalar touching both."""
    cimpl, timpl = impls
    p = jax.tree.map(lambda a: a.astype(dtype), params)
    h = images.astype(dtype)
    for name in ("enc1", "enc2", "enc3", "enc4"):
        h = leaky(convops.conv2d(h, *p[name], impl=cimpl))
    e = h.reshape(h.shape[0], -1)
    w, b = p["dense"]
    d = (feats.astype(dtype) @ w + b).reshape(feats.shape[0], 1, 1, -1)
    for name in ("dec1", "dec2", "dec3"):
        d = leaky(convops.conv_transpose2d(d, *p[name], impl=timpl))
    d = jnp.tanh(convops.conv_transpose2d(d, *p["dec4"], impl=timpl))
    err = d.astype(jnp.float32) - images
    return jnp.mean(jnp.square(err)) + jnp.mean(jnp.square(e.astype(jnp.float32)))


def run_model(args: argparse.Namespace, impl: str, dtype_name: str) -> dict[str, Any]:
    """Whole encoder + decoder, loss and gradients w.r.t. params and decoder input."""
    dtype = jnp.dtype(dtype_name)
    n, m, c = args.frames, args.mult, args.channels
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = init_params(k1, m, c, args.feature)
    images = jax.random.uniform(k2, (n, 64, 64, c), jnp.float32, -1.0, 1.0)
    feats = jax.random.normal(k3, (n, args.feature), jnp.float32)
    rss0 = peak_rss_gib()
    step = jax.jit(
        jax.value_and_grad(
            lambda p, x, f: model_loss(p, x, f, MODEL_IMPLS[impl], dtype), argnums=(0, 2)
        )
    )
    t0 = time.perf_counter()
    compiled = step.lower(params, images, feats).compile()
    compile_s = time.perf_counter() - t0
    loss, grads = compiled(params, images, feats)
    jax.block_until_ready(grads)
    repeats = args.lax_repeats if impl == "lax" else args.repeats
    secs, mms = [], []
    for _ in range(repeats):
        secs.append(timed(lambda: compiled(params, images, feats), 1))
        mms.append(matmul_flops_per_s(repeats=3))
    mem = compiled.memory_analysis()
    flops = n * sum(
        3 * conv_flops(kind, xs, ws) - (conv_flops(kind, xs, ws) if name == "enc1" else 0)
        for name, kind, xs, ws in layer_shapes(m, c)
    )
    flat = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grads)])
    s = float(np.median(secs))
    return {
        "impl": impl,
        "dtype": dtype_name,
        "seconds": s,
        "compile_s": compile_s,
        "flops": flops,
        "achieved_flops_per_s": flops / s,
        "matmul_flops_per_s": float(np.median(mms)),
        "temp_gib": mem.temp_size_in_bytes / 2**30,
        "peak_rss_gib": peak_rss_gib(),
        "rss_before_compile_gib": rss0,
        "loss": float(loss),
        "grad_sample": flat[:: max(1, flat.size // 200_000)].tolist(),
    }


def model_in_child(args: argparse.Namespace, impl: str, dtype_name: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", impl, dtype_name]
    cmd += ["--frames", str(args.frames), "--mult", str(args.mult)]
    cmd += ["--channels", str(args.channels), "--feature", str(args.feature)]
    cmd += ["--repeats", str(args.repeats), "--lax-repeats", str(args.lax_repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_layers(args: argparse.Namespace, ceiling: float) -> list[dict[str, Any]]:
    rows = []
    key = jax.random.key(0)
    for name, kind, xs, ws in layer_shapes(args.mult, args.channels):
        op = convops.conv2d if kind == "conv" else convops.conv_transpose2d
        impls = ["lax", "matmul"] if kind == "conv" else ["lax", "subpixel", "scatter", "auto"]
        if kind == "tconv" and xs[:2] == (1, 1):
            impls = ["lax", "dense"]
        kx, kw, kg = jax.random.split(jax.random.fold_in(key, len(rows)), 3)
        x = jax.random.normal(kx, (args.frames, *xs), jnp.float32)
        w = jax.random.normal(kw, ws, jnp.float32) / np.sqrt(ws[0] * ws[1] * ws[2])
        b = jnp.zeros((ws[3],), jnp.float32)
        g = jax.random.normal(kg, jax.eval_shape(lambda x: op(x, w, b, impl="lax"), x).shape)
        fns = {
            im: jax.jit(lambda x, w, b, g, im=im: jax.vjp(lambda *a: op(*a, impl=im), x, w, b)[1](g))
            for im in impls
        }
        times: dict[str, list[float]] = {im: [] for im in impls}
        for im, fn in fns.items():
            jax.block_until_ready(fn(x, w, b, g))
        for r in range(args.repeats):
            for im, fn in fns.items():
                if im == "lax" and r >= args.lax_repeats:
                    continue
                times[im].append(timed(lambda fn=fn: fn(x, w, b, g), 1))
        flops = 3 * args.frames * conv_flops(kind, xs, ws)
        row = {"layer": name, "flops": flops}
        row.update({im: float(np.median(t)) for im, t in times.items()})
        rows.append(row)
        cells = "  ".join(
            f"{im} {row[im]:7.3f}s ({flops / row[im] / 1e9:5.0f} GF/s)" for im in impls
        )
        print(f"{name} {str(xs):>15} k{ws[0]} -> {ws[3]:4d}  {cells}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--mult", type=int, default=1)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--feature", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lax-repeats", type=int, default=None, help="default: repeats")
    parser.add_argument("--models", default="lax,fast,bf16", help="lax, fast, subpixel, bf16")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lax_repeats is None:
        args.lax_repeats = args.repeats
    if args.child:
        print(json.dumps(run_model(args, *args.child)))
        return

    ceiling = matmul_flops_per_s()
    print(
        f"{args.frames} frames, m={args.mult}, C={args.channels}, feature {args.feature}; "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}; "
        f"2048^2 f32 matmul {ceiling / 1e9:.0f} GFLOP/s"
    )
    result: dict[str, Any] = {
        "frames": args.frames,
        "mult": args.mult,
        "channels": args.channels,
        "feature": args.feature,
        "matmul_flops_per_s": ceiling,
    }
    if not args.no_layers:
        print("per layer, forward + gradients w.r.t. x, w, b (median seconds):")
        result["layers"] = bench_layers(args, ceiling)

    print("encoder + decoder, loss and gradients (params, decoder input):")
    models = {}
    for spec in args.models.split(","):
        impl, dtype_name = ("fast", "bfloat16") if spec == "bf16" else (spec, "float32")
        r = model_in_child(args, impl, dtype_name)
        models[spec] = r
        print(
            f"  {spec:8s} {r['seconds']:7.3f}s  compile {r['compile_s']:5.1f}s  "
            f"{r['achieved_flops_per_s'] / 1e9:5.0f} GF/s = "
            f"{r['achieved_flops_per_s'] / r['matmul_flops_per_s']:4.0%} of matmul "
            f"{r['matmul_flops_per_s'] / 1e9:.0f}  XLA temp {r['temp_gib']:.2f} GiB  "
            f"peak RSS {r['peak_rss_gib']:.2f} GiB  loss {r['loss']:.7f}",
            flush=True,
        )
    if "lax" in models:
        ref_loss = models["lax"]["loss"]
        ref_grad = np.asarray(models["lax"]["grad_sample"])
        for spec, r in models.items():
            g = np.asarray(r["grad_sample"])
            r["loss_rel_err"] = abs(r["loss"] - ref_loss) / abs(ref_loss)
            r["grad_rel_err"] = float(np.max(np.abs(g - ref_grad)) / np.max(np.abs(ref_grad)))
            print(
                f"  {spec:8s} vs lax: loss rel {r['loss_rel_err']:.1e}, "
                f"grad max rel {r['grad_rel_err']:.1e}, speed-up "
                f"{models['lax']['seconds'] / r['seconds']:.1f}x"
            )
    for r in models.values():
        del r["grad_sample"]
    result["models"] = models
    result["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(result))


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
