"""What the benchmarks share: the example programs' folder on ``sys.path`` (for ``host``,
the huge-page malloc restart, and ``run_config``), ``--set key=value`` overrides of a
preset, each sent to the config (model, loss, optim or speed) that has the field, and the
training step that ``train_step.py`` times and ``profile_step.py`` traces.

>>> p = with_overrides(preset("mmnist"), parse_sets(["levels=2", "remat=true", "lr=1e-3"]))
>>> p.model.levels, p.speed.remat, p.optim.lr
(2, True, 0.001)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clockwork import CWVAE
from clockwork.config import Preset, SpeedConfig, preset
from clockwork.training import init_train_state, make_optimizer, make_train_step

PLAIN = SpeedConfig(conv_impl="lax", conv_chunk=None, remat=False, compute_dtype="float32")
"""The plain computation: float32, lax convolutions, all frames at once, no remat."""

PARTS = ("model", "loss", "optim", "speed")


def parse_value(text: str) -> Any:
    """``text`` as JSON (``2``, ``true``, ``null``, ``[4, 4]``, ``{"stoch_size": 4}``),
    else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["levels=2", "conv_chunk=null"]`` -> ``{"levels": 2, "conv_chunk": None}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out


def with_overrides(base: Preset, overrides: Mapping[str, Any]) -> Preset:
    """``base`` with each override applied to the part that has the field."""
    owner = {f.name: part for part in PARTS for f in dataclasses.fields(getattr(base, part))}
    unknown = sorted(set(overrides) - set(owner))
    if unknown:
        raise SystemExit(f"unknown --set key(s) {unknown}; fields: {sorted(owner)}")
    changes: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
    for key, value in overrides.items():
        changes[owner[key]][key] = value
    return Preset(**{part: getattr(base, part).replace(**changes[part]) for part in PARTS})


def load(name: str, overrides: Mapping[str, Any] = {}) -> Preset:
    """A library preset (``mmnist``, ``mazes``, ``minerl``) or the example programs'
    ``demo`` config, with ``overrides``."""
    if name == "demo":
        import run_config

        c = run_config.load("demo")
        base = Preset(c.model, c.loss, c.optim, c.speed)
    else:
        base = preset(name)
    return with_overrides(base, overrides)


def build(p: Preset, speed: SpeedConfig | None = None, seed: int = 0) -> CWVAE:
    """The model of ``p`` (with ``speed`` instead of ``p.speed`` if given)."""
    return CWVAE.from_config(p.model, loss=p.loss, speed=p.speed if speed is None else speed,
                             rngs=nnx.Rngs(seed))


def add_step_arguments(parser: argparse.ArgumentParser, steps: int, steps_help: str) -> None:
    """``--preset``, ``--batch``, ``--seq-len``, ``--steps`` and ``--set`` of a step benchmark."""
    parser.add_argument("--preset", default="mmnist", choices=["demo", "mmnist", "mazes", "minerl"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the preset's model, loss, optim or speed fields, "
                             "e.g. levels=2 remat=true compute_dtype=bfloat16 (values parsed "
                             "as JSON, else kept as strings)")


def initial_state(p: Preset, optimizer):
    """``(graphdef, state)``: the train state of ``p``'s model initialised with key 0."""
    return init_train_state(build(p), optimizer, jax.random.key(0))


def train_step_setup(p: Preset, batch: int, seq_len: int):
    """``(optimizer, graphdef, state, step, frames)``: ``p``'s optimiser, its train state
    initialised with key 0, its jitted training step (``p.speed.compute_dtype``) and a
    ``(batch, seq_len, 64, 64, C)`` batch of random ``uint8`` frames (NumPy seed 0)."""
    optimizer = make_optimizer(**dataclasses.asdict(p.optim))
    graphdef, state = initial_state(p, optimizer)
    step = make_train_step(graphdef, optimizer, compute_dtype=p.speed.compute_dtype)
    frames = jnp.asarray(np.random.default_rng(0).integers(
        0, 256, (batch, seq_len, 64, 64, p.model.channels), dtype=np.uint8))
    return optimizer, graphdef, state, step, frames
