"""Pytrees of arrays in one ``.npz``, written atomically and read back against a template.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tree.npz"
>>> save(path, {"w": np.ones((2, 3)), "b": np.zeros(3)}, {"step": 7})
>>> tree = load(path, {"w": np.empty((2, 3)), "b": np.empty(3)})
>>> tree["w"].shape, int(np.load(path)["step"])
((2, 3), 7)
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fileio


def save(path: str | pathlib.Path, tree: Any, extra: dict[str, Any] | None = None) -> None:
    """``tree``'s leaves under their paths (``leaf:<path>``), and ``extra``'s arrays."""
    leaves = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    with fileio.replacing(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **{f"leaf:{k}": v for k, v in leaves.items()}, **(extra or {}))


def load(path: str | pathlib.Path, template: Any) -> Any:
    """The tree :func:`save` wrote, with ``template``'s structure (its leaves give the
    shapes; arrays or shape structs).

    Raises:
      ValueError: ``path`` lacks a leaf of ``template`` or holds it in another shape.
      FileNotFoundError: no file at ``path``.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path) as stored:
        leaves = []
        for key, leaf in flat:
            name = f"leaf:{jax.tree_util.keystr(key)}"
            if name not in stored or stored[name].shape != tuple(leaf.shape):
                raise ValueError(f"{path} does not hold {name[5:]} {tuple(leaf.shape)} "
                                 "(saved from another model?)")
            leaves.append(jnp.asarray(stored[name]))
    return jax.tree_util.tree_unflatten(treedef, leaves)
