"""Strict JAX for every test: implicit rank or dtype promotion raises.

XLA compilation dominates the suite, so every test (and every subprocess it starts)
shares one persistent compilation cache for the session: a program compiled once, by
any xdist worker or subprocess, is loaded by the others. And the tests compile with
LLVM's optimisation level 0 (``--xla_backend_optimization_level=0``, unless XLA_FLAGS
sets a level): the same HLO programs, fusions and collectives, machine code built about
twice as fast and run slower, which on tiny test models is a net win of about 40 %.
Its float results may differ from the default level's in the last bit; the tests compare
programs built alike, and ``benchmarks/fingerprint.py`` checks the default level's
numbers exactly.
"""

import os
import pathlib

OPT_LEVEL = "--xla_backend_optimization_level"
if OPT_LEVEL not in os.environ.get("XLA_FLAGS", ""):  # read when JAX's backend starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL}=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

from clockwork import cells  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

CACHE_OPTIONS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory: pytest.TempPathFactory):
    """The persistent cache on for the session and its subprocesses, then back as it was."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    path = pathlib.Path(base) / "xla_cache"
    path.mkdir(exist_ok=True)
    options = {"jax_compilation_cache_dir": str(path), **CACHE_OPTIONS}
    before = {name: getattr(jax.config, name) for name in options}
    with pytest.MonkeyPatch.context() as env:
        for name, value in options.items():
            jax.config.update(name, value)
            env.setenv(name.upper(), str(value))
        compilation_cache.reset_cache()
        yield path
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def clean_registry():
    """Cell names registered by the test are removed after it."""
    before = set(cells.registered())
    yield
    for name in set(cells.registered()) - before:
        cells.unregister(name)
