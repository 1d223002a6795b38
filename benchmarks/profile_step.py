"""Per-op time of one CW-VAE training step under XLA:CPU; run by hand, never as a test.

    .venv/bin/python benchmarks/profile_step.py --preset mmnist --batch 8
    XLA_FLAGS=--xla_cpu_use_onednn=true .venv/bin/python benchmarks/profile_step.py

Compiles the step as ``train_step.py`` does, runs warm-up steps, then traces ``--steps``
steps with ``jax.profiler`` and sums the wall time of every executed XLA operation (each
thunk of the compiled program: a fusion, a convolution, a dot, a library fusion of
YNNPACK or oneDNN, a copy) by kind, the kind read off the optimised HLO (a fusion counts
as a convolution or dot fusion when it holds one). Operations inside a loop (the conv
chunks, the hierarchy's scans) are counted every time they run. The two cores run
operations side by side, so kernel seconds can exceed wall seconds. The last line is a
JSON object of the step time, the seconds per kind and the top operations.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import statistics
import tempfile
import time

import jax

import benchlib
from host import restart_with_hugepage_malloc

KINDS = ("convolution", "dot", "custom-call", "while", "copy", "transpose", "reduce",
         "scatter", "gather", "dynamic-update-slice", "dynamic-slice", "concatenate", "pad",
         "slice", "broadcast", "select-and-scatter", "reduce-window")
"""Opcodes that name a kind; a fusion takes the first of them that it holds."""

INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
CALLS = re.compile(r"calls=%?([\w.\-]+)")


def kinds_of(hlo_text: str) -> dict[str, str]:
    """Each instruction's kind in optimised HLO text: its opcode, or for a fusion (or a
    call into a library fusion) the first of ``KINDS`` that its computation holds."""
    opcodes: dict[str, str] = {}
    callee: dict[str, str] = {}
    body: dict[str, set[str]] = collections.defaultdict(set)
    current = None
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if m:
            name, opcode = m.groups()
            opcodes[name] = opcode
            if current is not None:
                body[current].add(opcode)
            c = CALLS.search(line)
            if c:
                callee[name] = c.group(1)
            continue
        m = COMPUTATION.match(line)
        if m:
            current = m.group(1)
    out = {}
    for name, opcode in opcodes.items():
        if opcode in ("fusion", "call", "custom-call") and name in callee:
            inner = body.get(callee[name], set())
            kind = next((k for k in KINDS if k in inner), "elementwise")
            out[name] = f"{opcode}:{kind}" if opcode != "fusion" else f"fusion:{kind}"
        else:
            out[name] = opcode
    return out


def op_seconds(trace_dir: str) -> dict[str, float]:
    """Summed wall seconds per event name over every host thread of a ``jax.profiler``
    trace (the newest ``.xplane.pb`` under ``trace_dir``)."""
    files = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"), key=os.path.getmtime)
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    out: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                out[event.name] += event.duration_ns / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchlib.add_step_arguments(parser, 2, "traced steps")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--hlo", type=pathlib.Path, help="also write the optimised HLO here")
    args = parser.parse_args()

    cfg = benchlib.load(args.preset, benchlib.parse_sets(args.set))
    _, _, state, step, frames = benchlib.train_step_setup(cfg, args.batch, args.seq_len)
    compiled = step.lower(state, frames).compile()
    hlo = compiled.as_text()
    if args.hlo:
        args.hlo.write_text(hlo)
    kinds = kinds_of(hlo)
    state, metrics = compiled(state, frames)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frames)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            for _ in range(args.steps):
                state, metrics = compiled(state, frames)
                jax.block_until_ready(metrics)
        traced_s = (time.perf_counter() - t0) / args.steps
        events = op_seconds(tmp)

    per_op = {name: s / args.steps for name, s in events.items() if name in kinds}
    by_kind: collections.Counter[str] = collections.Counter()
    for name, s in per_op.items():
        by_kind[kinds[name]] += s
    total = sum(by_kind.values())
    step_s = statistics.median(times)
    print(f"{args.preset} batch {args.batch} x {args.seq_len}: step {step_s:.3f} s "
          f"(traced {traced_s:.3f} s), XLA op seconds summed {total:.3f}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for kind, s in by_kind.most_common():
        print(f"  {kind:36s} {s:8.3f} s {s / total:6.1%}")
    print("top operations:")
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]
    for name, s in top:
        print(f"  {name:48s} {kinds[name]:28s} {s:8.3f} s")
    print(json.dumps({"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""), "step_s": round(step_s, 4),
                      "traced_step_s": round(traced_s, 4), "op_s_sum": round(total, 4),
                      "by_kind_s": {k: round(v, 4) for k, v in by_kind.most_common()},
                      "top_s": {k: round(v, 4) for k, v in top}}))


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
