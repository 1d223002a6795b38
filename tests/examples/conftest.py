"""Shared set-up for the example programs' tests.

The programs in ``examples/`` import their sibling modules by name, so that folder goes on
``sys.path``. XLA compilation dominates these tests, so every test here (and every
subprocess it starts) shares one persistent compilation cache for the session: a program
compiled once, by any worker, is loaded by the others.
"""

import os
import pathlib
import sys

import jax
import pytest
from examples_testlib import EXAMPLES
from jax.experimental.compilation_cache import compilation_cache

sys.path.insert(0, str(EXAMPLES))

CACHE_OPTIONS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    path = base / "xla_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def shared_compilation_cache(cache_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """The persistent cache on for this test and its subprocesses, then back as it was."""
    options = {"jax_compilation_cache_dir": str(cache_dir), **CACHE_OPTIONS}
    before = {name: getattr(jax.config, name) for name in options}
    for name, value in options.items():
        jax.config.update(name, value)
        monkeypatch.setenv(name.upper(), str(value))
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
