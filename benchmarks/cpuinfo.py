"""What a benchmark prints about the CPU it ran on, and the CPU's float32 FMA peak, both
worked out from ``/proc/cpuinfo`` and measured. Standard library only, so that it also
runs in another project's environment (the TensorFlow venv of ``../shared/peers``).

>>> peak_from_parts(cores=2, lanes=16, fma_units=2, ghz=2.6)
332.8
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
"""The instruction sets that decide which kernels XLA, oneDNN and BLAS can use."""

FMA_SOURCE = pathlib.Path(__file__).with_name("fma_peak.c")


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (empty where none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_model() -> str:
    """The CPU's model name (``"unknown"`` where ``/proc/cpuinfo`` has none)."""
    return _cpuinfo().get("model name", "unknown")


def cpu_summary() -> dict[str, object]:
    """Model, cores this process may use, nominal clock and which of ``ISA_FLAGS`` it has."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    mhz = float(info.get("cpu MHz", "nan"))
    return {"model": info.get("model name", "unknown"), "cores": len(os.sched_getaffinity(0)),
            "mhz": mhz, "isa": [f for f in ISA_FLAGS if f in flags]}


def peak_from_parts(cores: int, lanes: int, fma_units: int, ghz: float) -> float:
    """float32 GFLOP/s of ``cores`` each issuing ``fma_units`` FMAs of ``lanes`` floats per
    cycle (an FMA counts two FLOPs)."""
    return round(cores * fma_units * lanes * 2 * ghz, 1)


def fma_peak_estimate(fma_units: int = 2) -> dict[str, object]:
    """The peak worked out from ``/proc/cpuinfo``: 16 float32 lanes with AVX-512, else 8;
    ``fma_units`` per core (2 on Intel Xeon Gold/Platinum and on AMD Zen; check the CPU's
    documentation); the nominal clock (a virtual machine reports no turbo clock)."""
    s = cpu_summary()
    lanes = 16 if "avx512f" in s["isa"] else 8
    ghz = float(s["mhz"]) / 1000
    return {"cores": s["cores"], "lanes": lanes, "fma_units": fma_units, "ghz": ghz,
            "gflops": peak_from_parts(int(s["cores"]), lanes, fma_units, ghz)}


def fma_peak_measured(iters: int = 100_000_000) -> dict[str, object] | None:
    """Run ``fma_peak.c`` (12 independent vector FMA chains per thread, one thread per
    core) built with ``gcc -O2 -march=native -fopenmp``; ``None`` where gcc is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = pathlib.Path(tmp) / "fma_peak"
        subprocess.run([gcc, "-O2", "-march=native", "-fopenmp", str(FMA_SOURCE), "-o", str(exe)],
                       check=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(len(os.sched_getaffinity(0))))
        out = subprocess.run([str(exe), str(iters)], check=True, capture_output=True, text=True,
                             env=env).stdout.split()
    return {"gflops": float(out[0]), "threads": int(out[1]), "lanes": int(out[2])}
