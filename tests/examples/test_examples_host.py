"""The huge-page malloc restart of the example programs and benchmarks (``examples/host.py``):
when it restarts, with what, and when it leaves things be."""

from __future__ import annotations

import os
import subprocess
import sys

import host
import pytest
from examples_testlib import EXAMPLES

GLIBC = (2, 36)


def test_adds_the_tunable_once_and_keeps_the_others() -> None:
    env = host.hugepage_environment({"PATH": "/bin"}, GLIBC, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert host.hugepage_environment(env, GLIBC, "madvise") is None  # no second restart
    assert host.hugepage_malloc_requested(env)
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert host.hugepage_environment(other, GLIBC, "always") == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    }


@pytest.mark.parametrize(
    ("environ", "glibc", "thp"),
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # opted out
        ({}, (2, 31), "madvise"),  # glibc before the tunable
        ({}, None, "madvise"),  # not glibc
        ({}, GLIBC, "never"),  # huge pages off
        ({}, GLIBC, None),  # unknown
    ],
)
def test_leaves_the_process_alone(environ: dict, glibc: tuple | None, thp: str | None) -> None:
    assert host.hugepage_environment(environ, glibc, thp) is None


def test_requested_reads_the_value() -> None:
    assert not host.hugepage_malloc_requested({})
    assert not host.hugepage_malloc_requested({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert host.hugepage_malloc_requested({"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=2"})


def test_restart_runs_the_same_command_once(tmp_path) -> None:
    # A child that restarts itself prints its tunables on each run; the restarted one
    # keeps its arguments and runs only once more. The child reports glibc 2.36 and the
    # huge-page mode in FAKE_THP, so that both outcomes run on any machine (the real
    # tunable is harmless, and ignored by a glibc without it).
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "import host\n"
        "host._glibc_version = lambda: (2, 36)\n"
        "host._thp_mode = lambda: os.environ['FAKE_THP']\n"
        "print('run', sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
        "host.restart_with_hugepage_malloc()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}

    def runs(thp: str) -> list[str]:
        return subprocess.run(
            [sys.executable, str(script), "--flag", "x"], env={**env, "FAKE_THP": thp},
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()

    assert runs("madvise") == [
        "run ['--flag', 'x'] None", "run ['--flag', 'x'] glibc.malloc.hugetlb=1"
    ]
    assert runs("never") == ["run ['--flag', 'x'] None"]  # huge pages off: no restart
