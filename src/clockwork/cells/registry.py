"""An open registry of cell factories, for the names a configuration file uses.

A factory is any callable ``factory(embed_size, context_size, *, rngs, **options) ->
Cell``; a cell class whose constructor has that signature is one. A configuration names
a cell by a registered name (the built-in ``"rssm"``, ``"gru"``, ``"lstm"``,
``"categorical"``, ``"mdn"``, and whatever ``register`` added)
or by an import path ``"package.module:Name"``, which needs no registration.

Examples:
  >>> from flax import nnx
  >>> from clockwork.cells import GRUCell
  >>> register("my_gru", GRUCell)
  >>> make("my_gru", embed_size=8, context_size=4, det_size=6, rngs=nnx.Rngs(0)).feature_size
  6
  >>> make("clockwork.cells:RSSMCell", embed_size=8, context_size=4, stoch_size=2,
  ...      det_size=3, rngs=nnx.Rngs(0)).feature_size
  5
  >>> unregister("my_gru")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flax import nnx

CellFactory = Callable[..., Any]
"""``factory(embed_size, context_size, *, rngs, **options) -> Cell``."""

# Built-in names map to import paths, resolved when first used: the registry imports no
# cell module, so it stays at the bottom of the package's import graph.
_FACTORIES: dict[str, CellFactory | str] = {
    "rssm": "clockwork.cells.rssm:RSSMCell",
    "gru": "clockwork.cells.gru:GRUCell",
    "lstm": "clockwork.cells.lstm:LSTMCell",
    "categorical": "clockwork.cells.categorical:CategoricalRSSMCell",
    "mdn": "clockwork.cells.mdn:MDNRNNCell",
}
BUILT_IN = tuple(_FACTORIES)


def register(name: str, factory: CellFactory, *, replace: bool = False) -> None:
    """Make ``name`` build cells with ``factory`` (see the module docstring).

    Raises:
      ValueError: ``name`` is taken (unless ``replace``) or holds a ``:`` (import paths
        need no registration).
      TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a cell name must be a non-empty string without ':', got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for cell {name!r} must be callable, got {factory!r}")
    if name in _FACTORIES and not replace and resolve(name) is not factory:
        raise ValueError(f"cell {name!r} is registered already (pass replace=True to replace it)")
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    """Forget ``name``; the built-in names cannot be removed."""
    if name in BUILT_IN:
        raise ValueError(f"the built-in cell {name!r} cannot be unregistered")
    if name not in _FACTORIES:
        raise KeyError(f"no cell {name!r} is registered; registered: {registered()}")
    del _FACTORIES[name]


def registered() -> tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(_FACTORIES))


def resolve(name: str) -> CellFactory:
    """The factory of a registered name or of an import path ``"module:attribute"``.

    Raises:
      ValueError: an unknown name (the message lists the registered ones) or an import
        path that does not import.
    """
    if not isinstance(name, str):
        raise TypeError(f"a cell is named by a string, got {name!r}")
    if ":" not in name:
        if name not in _FACTORIES:
            raise ValueError(
                f"unknown cell {name!r}; registered cells: {', '.join(registered())} "
                "(or give an import path such as 'mypackage.cells:MyCell')"
            )
        factory = _FACTORIES[name]
        return _import(factory) if isinstance(factory, str) else factory
    return _import(name)


def _import(name: str) -> CellFactory:
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cell {name!r}: cannot import module {module_name!r} ({e})") from e
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"cell {name!r}: module {module_name!r} has no {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"cell {name!r} is not callable")
    return factory


def make(
    name: str, *, embed_size: int, context_size: int, rngs: nnx.Rngs, **options: Any
) -> Any:
    """A cell built by the factory of ``name`` (see ``resolve``)."""
    factory = resolve(name)
    try:
        return factory(embed_size, context_size, rngs=rngs, **options)
    except TypeError as e:
        raise TypeError(f"cell {name!r} with options {options}: {e}") from e


def feature_size(name: str, *, embed_size: int, **options: Any) -> int:
    """The feature size a cell of ``name`` with ``options`` would have, computing nothing.

    Builds the cell abstractly (``nnx.eval_shape``) with a context size of 1, so a cell's
    feature size must not depend on its context size.
    """
    cell = nnx.eval_shape(
        lambda: make(name, embed_size=embed_size, context_size=1, rngs=nnx.Rngs(0), **options)
    )
    return cell.feature_size
