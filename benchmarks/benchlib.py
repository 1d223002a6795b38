"""What the benchmarks share: the example programs' folder on ``sys.path`` (for ``host``,
the huge-page malloc restart, and ``run_config``) and ``--set key=value`` overrides of a
preset, each sent to the config (model, loss, optim or speed) that has the field.

>>> p = with_overrides(preset("mmnist"), parse_sets(["levels=2", "remat=true", "lr=1e-3"]))
>>> p.model.levels, p.speed.remat, p.optim.lr
(2, True, 0.001)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from flax import nnx

from clockwork import CWVAE
from clockwork.config import Preset, SpeedConfig, preset

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

