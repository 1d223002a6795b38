"""Process settings that speed up XLA on the CPU.

XLA:CPU allocates the temporary buffers of every run of a compiled program afresh, and
the kernel hands them out in 4 KiB pages on first touch: an ``mmnist`` training step at
batch 8 takes about 150,000 page faults. glibc's malloc can ask for transparent huge
pages instead (the ``glibc.malloc.hugetlb=1`` tunable, glibc 2.35+), which cuts them to
about 2,000 and the step time by about 10% on the 2-core machines measured
(docs/performance.md). The tunable is read when a process starts, so a program has to
be started with it: :func:`restart_with_hugepage_malloc` re-executes the running
program once with it set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _thp_mode() -> str | None:
    """The selected mode in ``[brackets]`` (``always``, ``madvise``, ``never``), if known."""
    try:
        with open(_THP_MODE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _tunable_value(environ: Mapping[str, str]) -> str | None:
    for tunable in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = tunable.partition("=")
        if name == TUNABLE:
            return value
    return None


def hugepage_malloc_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started with glibc's malloc on huge pages requested."""
    return _tunable_value(environ) not in (None, "", "0")


def hugepage_environment(
    environ: Mapping[str, str], glibc: tuple[int, int] | None, thp_mode: str | None
) -> dict[str, str] | None:
    """The environment to restart with, or ``None`` when there is nothing to do.

    ``None`` when ``environ`` already sets the tunable to any value (so
    ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` opts out), without glibc 2.35+, or when
    transparent huge pages are off (``never``) or unknown.
    """
    if _tunable_value(environ) is not None:
        return None
    if glibc is None or glibc < (2, 35) or thp_mode not in ("always", "madvise"):
        return None
    tunables = [environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, tunables))}


def restart_with_hugepage_malloc() -> None:
    """Re-execute this program (same interpreter and command line) with glibc's malloc on
    transparent huge pages; returns at once if that is set already or not available.

    Call it first thing in a program's ``if __name__ == "__main__":`` block, never from
    library code or inside a process that must survive (a test runner): it replaces the
    process (``os.execve``).
    """
    env = hugepage_environment(os.environ, _glibc_version(), _thp_mode())
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
