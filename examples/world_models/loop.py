"""The resumable training loop of the World Models stages."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import fileio
import trees

STATE_FILE = "state.npz"
LOG_FILE = "losses.csv"


def fit(
    folder: pathlib.Path,
    params: Any,
    optimizer: optax.GradientTransformation,
    loss: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]],
    batch: Callable[[int], Any],
    *,
    steps: int,
    ckpt_every: int,
    seed: int,
) -> Any:
    """Minimises ``loss(params, batch(t), key_t)`` for ``steps`` steps; returns the params.

    ``batch(t)`` and ``key_t = fold_in(key(seed), t)`` depend only on the step ``t``, so
    a run resumed from ``folder/state.npz`` (written every ``ckpt_every`` steps and at the
    end) repeats an uninterrupted one exactly. ``folder/losses.csv`` holds the loss and
    its terms per step.
    """
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    state = initial_state(params, optimizer)
    path, log = folder / STATE_FILE, folder / LOG_FILE
    if path.is_file():
        state = trees.load(path, state)
    step = make_step(optimizer, loss)
    done = int(state["step"])
    lines = log.read_text().splitlines()[: done + 1] if done and log.is_file() else []
    key = jax.random.key(seed)
    bar = tqdm(range(done, steps), desc=f"train {folder.name}", unit="step", initial=done,
               total=steps, file=sys.stderr, disable=not sys.stderr.isatty())
    for t in bar:
        state, value, terms = step(state, batch(t), jax.random.fold_in(key, t))
        metrics = {"loss": value, **terms}  # the terms in sorted order (as jit returns them)
        if not lines:
            lines.append(",".join(["step", *metrics]))
        lines.append(",".join([str(t + 1), *(f"{float(v):.5g}" for v in metrics.values())]))
        if (t + 1) % ckpt_every == 0 or t + 1 == steps:
            trees.save(path, state)
            with fileio.replacing(log) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
    return state["params"]


def initial_state(params: Any, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """What :func:`fit` trains and saves: parameters, optimiser state, step count."""
    return {"params": params, "opt": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def make_step(optimizer: optax.GradientTransformation,
              loss: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
              ) -> Callable[[dict[str, Any], Any, jax.Array], tuple[dict[str, Any], jax.Array, dict]]:
    """The jitted step ``(state, batch, key) -> (state, loss, terms)`` of :func:`fit`."""

    @jax.jit
    def step(state, data, key):
        (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(state["params"], data, key)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction
            updates, opt = optimizer.update(grads, state["opt"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        return new, value, terms

    return step


def summary(folder: pathlib.Path) -> str:
    """The last line of ``folder/losses.csv`` as ``step N: loss L, term T, ...``."""
    header, *rows = (folder / LOG_FILE).read_text().splitlines()
    names, values = header.split(","), rows[-1].split(",")
    return f"step {values[0]}: " + ", ".join(f"{n} {v}" for n, v in zip(names[1:], values[1:]))


def load_params(folder: pathlib.Path, params: Any, optimizer: optax.GradientTransformation,
                stage: str) -> Any:
    """The parameters :func:`fit` saved in ``folder`` (``params`` gives their shapes)."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing trained in {folder}: run the {stage} stage first")
    return trees.load(path, initial_state(params, optimizer))["params"]
