"""Every docstring example of the package runs and prints what it shows."""

import doctest
import importlib
import pathlib

import pytest

import clockwork

SRC = pathlib.Path(clockwork.__file__).parent
MODULES = sorted(
    ".".join(("clockwork", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
)


def test_every_module_is_listed():
    assert "clockwork.cells.registry" in MODULES and "clockwork.data.folders" in MODULES
    assert len(MODULES) >= 25


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}"
