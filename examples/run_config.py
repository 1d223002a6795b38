"""Run configuration of the example programs: model fields plus trainer fields.

A run is configured by a YAML file with two sections, ``model`` (fields of
:class:`clockwork.CWVAEConfig`) and ``train`` (fields of :class:`TrainConfig`), and by
command-line overrides ``--<field> <value>`` for any field of either section. Values are
parsed as YAML (``--lr 1e-4``, ``--beta null``, ``--remat true``); a comma-separated
value is a list (``--factors 4,4,4``). Unknown fields and values of the wrong type are
rejected with a message that names the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import pathlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

import fileio
from clockwork import CWVAEConfig, parallel

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
DATASETS = {"mmnist": 1, "mazes": 3, "minerl": 3}  # dataset -> channels
DATA_SOURCES = ("tfds", "generated")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs besides the model.

    Attributes:
      dataset: ``mmnist``, ``mazes`` or ``minerl``.
      data_source: ``tfds`` reads the prepared tfds dataset from ``datadir`` (Moving MNIST
        falls back to the generated config when its archive is missing); ``generated``
        renders Moving MNIST in memory (``mmnist`` only).
      generated_videos: training videos rendered when ``data_source`` is ``generated``.
      datadir: tfds data folder; ``None`` is tfds's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      seed: seeds the parameters, the training noise, the data order and the video noise.
      num_steps: training steps of the whole run.
      log_every: steps between metric records (means over the steps since the last one).
      ckpt_every: steps between checkpoints; a multiple of ``log_every``.
      keep: most recent checkpoints kept.
      keep_every: also keep every checkpoint whose step is a multiple of this (0: none);
        a multiple of ``ckpt_every``.
      video_every: steps between open-loop videos, also written at the last step
        (0: no videos).
      video_examples: sequences per video, from a training and a validation batch.
      prefetch: batches read ahead by the input pipeline.
      wandb: also log to Weights & Biases (imported only when set).
      wandb_project: the W&B project.
      mesh: ``None`` trains on one device; ``"auto"`` (every device on the data axis),
        ``DATA`` or ``DATAxMODEL`` (``8``, ``"2x4"``) train data-parallel on a
        ``clockwork.parallel`` mesh, ``batch_size`` being the global batch.
    """

    dataset: str = "mmnist"
    data_source: str = "tfds"
    generated_videos: int = 1000
    datadir: str | None = None
    seed: int = 0
    num_steps: int = 500_000
    log_every: int = 100
    ckpt_every: int = 5000
    keep: int = 3
    keep_every: int = 50_000
    video_every: int = 10_000
    video_examples: int = 4
    prefetch: int = 2
    wandb: bool = False
    wandb_project: str = "clockwork"
    mesh: int | str | None = None

    def __post_init__(self) -> None:
        if self.mesh is not None:
            parallel.parse_mesh(self.mesh)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"data_source must be one of {DATA_SOURCES}, got {self.data_source!r}")
        if self.data_source == "generated" and self.dataset != "mmnist":
            raise ValueError(f"data_source 'generated' is Moving MNIST only, not {self.dataset!r}")
        positive = ("generated_videos", "num_steps", "log_every", "ckpt_every", "keep",
                    "video_examples")
        for name in positive + ("seed", "keep_every", "video_every", "prefetch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < (1 if name in positive else 0):
                sign = "positive" if name in positive else "non-negative"
                raise ValueError(f"{name} must be {sign}, got {value}")
        if self.ckpt_every % self.log_every:
            raise ValueError(
                f"ckpt_every ({self.ckpt_every}) must be a multiple of log_every "
                f"({self.log_every}) so that a resumed run logs the same means"
            )
        if self.keep_every % self.ckpt_every:
            raise ValueError(
                f"keep_every ({self.keep_every}) must be a multiple of ckpt_every "
                f"({self.ckpt_every})"
            )


RESUMABLE_CHANGES = frozenset(
    {"num_steps", "log_every", "ckpt_every", "keep", "keep_every", "video_every",
     "video_examples", "prefetch", "datadir", "wandb", "wandb_project", "mesh"}
)
"""Trainer fields that may differ when a run is resumed: none changes the trajectory
(``mesh`` only up to float32 rounding)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A model configuration and a trainer configuration, checked against each other."""

    model: CWVAEConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        if m.channels != DATASETS[t.dataset]:
            raise ValueError(
                f"dataset {t.dataset!r} has {DATASETS[t.dataset]} channel(s), but the model "
                f"has channels={m.channels}"
            )
        if t.video_every and t.video_examples > m.batch_size:
            raise ValueError(
                f"video_examples ({t.video_examples}) must not exceed batch_size ({m.batch_size})"
            )
        data = None if t.mesh is None else parallel.parse_mesh(t.mesh)[0]
        if data is not None and m.batch_size % data:
            raise ValueError(
                f"batch_size ({m.batch_size}) must be a multiple of the mesh's data axis ({data})"
            )
        top = m.clock.periods[-1]
        if m.open_loop_ctx % top:
            raise ValueError(
                f"open_loop_ctx ({m.open_loop_ctx}) must be a multiple of the top level's "
                f"period ({top})"
            )
        if t.video_every and m.open_loop_ctx >= m.seq_len:
            raise ValueError(
                f"videos predict seq_len - open_loop_ctx frames: open_loop_ctx "
                f"({m.open_loop_ctx}) must be below seq_len ({m.seq_len}), or set video_every 0"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain YAML-ready values (tuples as lists)."""
        return {"model": _plain(self.model.to_dict()), "train": _plain(dataclasses.asdict(self.train))}


SECTIONS: dict[str, type] = {"model": CWVAEConfig, "train": TrainConfig}
FIELD_SECTION: dict[str, str] = {
    f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
}
_HINTS = {section: typing.get_type_hints(cls) for section, cls in SECTIONS.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _options(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             type(None): "null"}
    plurals = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    parts = []
    for option in _options(hint):
        if typing.get_origin(option) is tuple:
            parts.append(f"a list of {plurals[typing.get_args(option)[0]]}")
        else:
            parts.append(names[option])
    return " or ".join(parts)


def _convert(value: Any, option: Any) -> Any:
    """``value`` as the type ``option``; raises TypeError if it is not one."""
    if option is type(None) and value is None:
        return None
    if option is bool and isinstance(value, bool):
        return value
    if option is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if option is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    if option is str and isinstance(value, str):
        return value
    if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)) and value:
        element = typing.get_args(option)[0]
        return tuple(_coerce_one(v, element) for v in value)
    raise TypeError


def _coerce_one(value: Any, hint: Any) -> Any:
    for option in _options(hint):
        try:
            return _convert(value, option)
        except TypeError:
            continue
    raise TypeError


def coerce(name: str, value: Any) -> Any:
    """``value`` converted to the declared type of field ``name``.

    Raises:
      KeyError: ``name`` is not a field.
      ValueError: ``value`` does not have the field's type.
    """
    section = FIELD_SECTION[name]
    hint = _HINTS[section][name]
    try:
        return _coerce_one(value, hint)
    except TypeError:
        raise ValueError(f"{name} must be {_describe(hint)}, got {value!r}") from None


def unknown_key_message(keys: Sequence[str], prefix: str = "") -> str:
    """``unknown config key(s): ...`` with the closest known names."""
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, list(FIELD_SECTION), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        parts.append(f"{prefix}{key}{hint}")
    return f"unknown config key(s): {', '.join(parts)}"


def build(values: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any] = {}) -> RunConfig:
    """A checked :class:`RunConfig` from ``{"model": {...}, "train": {...}}`` and flat overrides.

    Raises:
      ValueError: an unknown section or field, a value of the wrong type, or a value that
        the configuration classes reject; the message names the field.
    """
    extra = set(values) - set(SECTIONS)
    if extra:
        raise ValueError(f"unknown config section(s) {sorted(extra)}; expected 'model' and 'train'")
    fields: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for section in SECTIONS:
        given = values.get(section) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {given!r}")
        misplaced = [k for k in given if FIELD_SECTION.get(k) != section]
        if misplaced:
            raise ValueError(f"in section {section!r}: {unknown_key_message(misplaced)}")
        fields[section].update(given)
    unknown = [k for k in overrides if k not in FIELD_SECTION]
    if unknown:
        raise ValueError(unknown_key_message(unknown))
    for key, value in overrides.items():
        fields[FIELD_SECTION[key]][key] = value
    for section_fields in fields.values():
        for key, value in section_fields.items():
            section_fields[key] = coerce(key, value)
    try:
        return RunConfig(CWVAEConfig(**fields["model"]), TrainConfig(**fields["train"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid config: {e}") from None


def config_path(name: str) -> pathlib.Path:
    """A preset name (``demo``, ``mmnist``, ...) or a path to a YAML file."""
    path = pathlib.Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        return path
    preset = CONFIG_DIR / f"{name}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"unknown config {name!r}; choose one of {names} or give a .yaml path")
    return preset


def load(name: str, overrides: Mapping[str, Any] = {}) -> RunConfig:
    """The YAML config ``name`` (see :func:`config_path`) with ``overrides`` applied."""
    with open(config_path(name)) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"config {name!r} must be a YAML mapping with 'model' and 'train'")
    return build(values, overrides)


def save(config: RunConfig, path: str | os.PathLike[str]) -> None:
    """Writes ``config`` as YAML, atomically."""
    with fileio.replacing(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read(path: str | os.PathLike[str]) -> RunConfig:
    """A config written by :func:`save`."""
    with open(path) as f:
        return build(yaml.safe_load(f))


def parse_value(name: str, text: str) -> Any:
    """The command-line value ``text`` of field ``name``, converted to its type.

    ``text`` is read as YAML, a comma-separated one as a list; a field that takes
    strings keeps ``text`` as is when its YAML reading is not a valid value
    (``--datadir yes`` is the folder ``yes``).
    """
    value = yaml.safe_load(text) if text.strip() else text
    if isinstance(value, str) and "," in value:
        value = [yaml.safe_load(part) for part in value.split(",")]
    try:
        return coerce(name, value)
    except ValueError:
        if str in _options(_HINTS[FIELD_SECTION[name]][name]):
            return text
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` (also ``--<field-with-dashes>``) option per config field."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(
            f"{section} overrides", f"fields of {cls.__name__}; values are YAML"
        )
        for field in dataclasses.fields(cls):
            flags = [f"--{field.name}"]
            if "_" in field.name:
                flags.append(f"--{field.name.replace('_', '-')}")
            group.add_argument(*flags, dest=field.name, default=argparse.SUPPRESS, metavar="VALUE")


def overrides(namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line, converted (raises ValueError)."""
    return {
        name: parse_value(name, text)
        for name, text in vars(namespace).items()
        if name in FIELD_SECTION
    }


def resume_conflicts(saved: RunConfig, current: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose change would alter a resumed run's trajectory: ``{name: (saved, now)}``."""
    old, new = saved.to_dict(), current.to_dict()
    return {
        name: (old[section][name], new[section].get(name))
        for section in SECTIONS
        for name in old[section]
        if old[section][name] != new[section].get(name) and name not in RESUMABLE_CHANGES
    }
