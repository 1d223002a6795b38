"""Run configuration of the example programs: the library's configs plus the programs' own.

A run is configured by a YAML file with up to six sections, each the fields of one
frozen dataclass:

* ``model``: :class:`clockwork.config.ModelConfig` (the architecture, cells included);
* ``loss``: :class:`clockwork.config.LossConfig`;
* ``optim``: :class:`clockwork.config.OptimConfig`;
* ``speed``: :class:`clockwork.config.SpeedConfig`;
* ``train``: :class:`TrainConfig` (data, batch, schedule, checkpoints, videos, mesh);
* ``eval``: :class:`EvalConfig` (the open loop's context and the evaluator's length);

and an optional top-level ``imports: [module, ...]``: Python modules imported before
anything is built, so that their ``clockwork.cells.register(...)`` calls have run when
``model.cell`` names a cell. A cell may also be named by an import path
``package.module:Factory``, which needs no registration.

Every field of every section can be overridden on the command line, ``--<field> VALUE``
(field names are unique across sections), and ``--imports a,b``. Values are parsed as
YAML (``--lr 1e-4``, ``--beta null``, ``--remat true``, ``--cell_options "{stoch_size: 4}"``);
a comma-separated value is a list (``--factors 4,4,4``, ``--cell rssm,gru``). Unknown or
misplaced fields and values of the wrong type are rejected with a message that names the
section and the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import importlib
import math
import os
import pathlib
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

# dacite builds the typed, frozen dataclasses straight from the YAML mappings: it checks
# every value against the field's annotation (unions, ``tuple[int, ...]``, ``dict[str,
# Any]``, ``None``), rejects unknown keys (strict) and casts YAML lists to tuples, so the
# dataclasses' annotations are the one schema and this module keeps no type logic of
# its own; the dataclasses' ``__post_init__`` then check the values.
import dacite
import yaml

import fileio
from clockwork import cells, parallel
from clockwork.config import LossConfig, ModelConfig, OptimConfig, SpeedConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
DATASETS = {"mmnist": 1, "mazes": 3, "minerl": 3}  # dataset -> channels
DATA_SOURCES = ("tfds", "generated", "pushed", "folder")
ACTION_SIZES = {"pushed": 2}  # data source -> size of its actions (others have none)
IMPORTS = "imports"


def _check_ints(obj: Any, positive: Sequence[str], non_negative: Sequence[str] = ()) -> None:
    for name in (*positive, *non_negative):
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < (1 if name in positive else 0):
            sign = "positive" if name in positive else "non-negative"
            raise ValueError(f"{name} must be {sign}, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs besides the model, the loss and the optimiser.

    Attributes:
      dataset: ``mmnist``, ``mazes`` or ``minerl`` (not read by the ``folder`` source).
      data_source: ``tfds`` reads the prepared tfds dataset from ``datadir`` (Moving MNIST
        falls back to the generated config when its archive is missing); ``generated``
        renders Moving MNIST in memory (``mmnist`` only); ``pushed`` renders one digit
        moved by 2-d actions (``clockwork.data.generate_pushed_mnist``; the model needs
        ``action_size: 2``), which the trainer and the evaluator feed to the model;
        ``folder`` reads your own videos from ``video_dir``
        (:class:`clockwork.data.VideoFolder`), with ``model.channels`` channels and
        frames of ``model.frame_size``.
      video_dir: the folder of video files and arrays (``folder`` only, and needed there).
      test_fraction: share of the folder's videos in its test split, which the videos
        and the evaluator use.
      resize: resize the folder's frames to ``model.frame_size`` (area filter); without
        it they must have that size.
      video_cache: a folder where decoded videos are kept (memory-mapped ``.npy``), so
        each video file is decoded once; ``None`` decodes on every read.
      generated_videos: training videos rendered when ``data_source`` is ``generated``
        or ``pushed``.
      generated_digits, generated_speed: digits per generated Moving MNIST video and
        their speed range in pixels per frame (``generated`` only). Generated videos are
        rendered at 64x64; a ``model.frame_size`` of 32 a side averages each 2x2 block.
      datadir: tfds data folder; ``None`` is tfds's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      seed: seeds the parameters, the training noise, the data order and the video noise.
      batch_size: sequences per training step (the global batch with a mesh).
      seq_len: frames per training sequence.
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
    generated_digits: int = 2
    generated_speed: tuple[float, float] = (2.0, 5.0)
    datadir: str | None = None
    video_dir: str | None = None
    test_fraction: float = 0.1
    resize: bool = False
    video_cache: str | None = None
    seed: int = 0
    batch_size: int = 50
    seq_len: int = 100
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
        if self.data_source in ("generated", "pushed") and self.dataset != "mmnist":
            raise ValueError(f"data_source {self.data_source!r} is Moving MNIST only, not {self.dataset!r}")
        if (self.data_source == "folder") != (self.video_dir is not None):
            raise ValueError("data_source 'folder' needs video_dir, and video_dir needs "
                             f"data_source 'folder' (got data_source {self.data_source!r}, "
                             f"video_dir {self.video_dir!r})")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        low, high = self.generated_speed
        if not (0.0 <= low <= high and math.isfinite(high)):
            raise ValueError(f"generated_speed must be [low, high] with 0 <= low <= high, both "
                             f"finite, got {list(self.generated_speed)}")
        _check_ints(
            self,
            ("generated_videos", "generated_digits", "batch_size", "seq_len", "num_steps", "log_every",
             "ckpt_every", "keep", "video_examples"),
            ("seed", "keep_every", "video_every", "prefetch"),
        )
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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The open loop's settings: the trainer's videos and the evaluator's defaults.

    Attributes:
      eval_seq_len: context plus predicted frames of an evaluation (``eval.py --seq-len``).
      open_loop_ctx: context frames of the videos and of an evaluation; a multiple of the
        top level's period, below ``eval_seq_len``.
    """

    eval_seq_len: int = 1000
    open_loop_ctx: int = 36

    def __post_init__(self) -> None:
        _check_ints(self, ("eval_seq_len",), ("open_loop_ctx",))
        if self.open_loop_ctx >= self.eval_seq_len:
            raise ValueError(
                f"an evaluation predicts eval_seq_len - open_loop_ctx frames: open_loop_ctx "
                f"({self.open_loop_ctx}) must be below eval_seq_len ({self.eval_seq_len})"
            )


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "speed": SpeedConfig,
    "train": TrainConfig, "eval": EvalConfig,
}
FIELD_SECTION: dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _field in dataclasses.fields(_cls):
        if _field.name in FIELD_SECTION or _field.name == IMPORTS:
            raise RuntimeError(f"field {_field.name!r} of section {_section!r} is not unique: "
                               "the flat command-line overrides need unique names")
        FIELD_SECTION[_field.name] = _section

RESUMABLE_CHANGES = frozenset(
    {"num_steps", "log_every", "ckpt_every", "keep", "keep_every", "video_every",
     "video_examples", "prefetch", "datadir", "video_cache", "wandb", "wandb_project", "mesh"}
)
"""Trainer fields that may differ when a run is resumed: none changes the trajectory
(``mesh`` only up to float32 rounding)."""


def _to_float(value: Any) -> Any:
    """A ``float`` field's value: ints and numeric strings (YAML 1.1 reads ``1e-4`` as a
    string) as floats; anything else unchanged, for dacite to reject."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


DACITE = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _to_float})


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading floats without a dot (``1e-4``) as floats, as
    YAML 1.2 does: ``cell_options`` values have no declared type to convert them to."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One configuration per section and the modules to import, checked together."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    speed: SpeedConfig = dataclasses.field(default_factory=SpeedConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    imports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        m, t, e = self.model, self.train, self.eval
        if t.data_source == "generated" and any(64 % side for side in m.frame_size):
            raise ValueError(f"generated Moving MNIST is rendered at 64x64 and averaged down "
                             f"by whole blocks, so each side of frame_size must divide 64 "
                             f"(32 or 64), got {list(m.frame_size)}")
        if t.data_source not in ("folder", "generated") and m.frame_size != (64, 64):
            raise ValueError(f"dataset {t.dataset!r} has 64x64 frames, but the model has "
                             f"frame_size={list(m.frame_size)}; other sizes need data_source "
                             f"'folder' (your own videos) or 'generated' (32 or 64 a side)")
        if t.data_source != "folder" and m.channels != DATASETS[t.dataset]:
            raise ValueError(
                f"dataset {t.dataset!r} has {DATASETS[t.dataset]} channel(s), but the model "
                f"has channels={m.channels}"
            )
        self.loss.check_levels(m.levels)
        actions = ACTION_SIZES.get(t.data_source, 0)
        if m.action_size != actions:
            raise ValueError(
                f"data source {t.data_source!r} has {actions or 'no'} action dims, but the "
                f"model has action_size={m.action_size}"
            )
        for level, (name, options) in enumerate(m.cells()):
            try:
                _check_cell(name, options)
            except (TypeError, ValueError) as err:
                raise ValueError(f"cell of level {level}: {err}") from None
        if t.video_every and t.video_examples > t.batch_size:
            raise ValueError(
                f"video_examples ({t.video_examples}) must not exceed batch_size ({t.batch_size})"
            )
        data = None if t.mesh is None else parallel.parse_mesh(t.mesh)[0]
        if data is not None and t.batch_size % data:
            raise ValueError(
                f"batch_size ({t.batch_size}) must be a multiple of the mesh's data axis ({data})"
            )
        m.clock.check_top_multiple(e.open_loop_ctx, "open_loop_ctx")
        if t.video_every and e.open_loop_ctx >= t.seq_len:
            raise ValueError(
                f"videos predict seq_len - open_loop_ctx frames: open_loop_ctx "
                f"({e.open_loop_ctx}) must be below seq_len ({t.seq_len}), or set video_every 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (tuples as lists): ``imports`` and one dict per section."""
        out: dict[str, Any] = {IMPORTS: list(self.imports)}
        for section in SECTIONS:
            out[section] = _plain(dataclasses.asdict(getattr(self, section)))
        return out


def _check_cell(name: str, options: dict[str, Any]) -> None:
    """Builds the cell abstractly (computing nothing), so that misspelt ``cell_options``
    stop the program before anything runs; remembers the (factory, options) it built."""
    try:
        key = (cells.resolve(name), tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # unhashable option values: check every time
        cells.feature_size(name, embed_size=1, **options)
        return
    if key not in _CHECKED_CELLS:
        cells.feature_size(name, embed_size=1, **options)
        _CHECKED_CELLS.add(key)


_CHECKED_CELLS: set[tuple[Any, ...]] = set()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


@functools.cache
def _probe(section: str, name: str) -> tuple[type, Any]:
    """A one-field dataclass with the type of field ``name`` (and the type)."""
    hint = typing.get_type_hints(SECTIONS[section])[name]
    return dataclasses.make_dataclass(f"{section}_{name}", [(name, hint)]), hint


def type_error(section: str, name: str, value: Any) -> str | None:
    """The message for ``value`` not having field ``name``'s declared type, or None."""
    probe, hint = _probe(section, name)
    try:
        dacite.from_dict(probe, {name: value}, config=DACITE)
    except (dacite.DaciteError, TypeError, ValueError):  # TypeError: casting 4 to a tuple
        return f"{section}.{name} must be {_type_name(hint)}, got {value!r}"
    return None


def unknown_key_message(keys: Sequence[str], prefix: str = "", section: str | None = None) -> str:
    """``unknown config key(s): ...`` with the closest known names, or the section a
    misplaced key (one of another section, read in ``section``) belongs to."""
    parts = []
    for key in keys:
        if section is not None and key in FIELD_SECTION:
            parts.append(f"{prefix}{key} (a field of section {FIELD_SECTION[key]!r})")
            continue
        if section is not None and key == IMPORTS:
            parts.append(f"{prefix}{key} (a top-level key)")
            continue
        close = difflib.get_close_matches(key, [*FIELD_SECTION, IMPORTS], n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        parts.append(f"{prefix}{key}{hint}")
    return f"unknown config key(s): {', '.join(parts)}"


def _section(section: str, given: Mapping[str, Any]) -> Any:
    """Section ``section`` built by dacite from ``given``; ValueError naming the field."""
    cls = SECTIONS[section]
    for name, value in given.items():
        if FIELD_SECTION.get(name) == section:
            message = type_error(section, name, value)
            if message is not None:
                raise ValueError(message)
    try:
        return dacite.from_dict(cls, dict(given), config=DACITE)
    except dacite.UnexpectedDataError as e:
        keys = [k for k in given if k in e.keys]  # in the order given
        raise ValueError(f"in section {section!r}: {unknown_key_message(keys, section=section)}") from None
    except dacite.DaciteFieldError as e:  # types were checked above; kept for safety
        raise ValueError(f"{section}.{e.field_path}: {e}") from None
    except (TypeError, ValueError) as e:  # the dataclass's own checks
        raise ValueError(f"invalid {section} config: {e}") from None


def _import_names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"imports must be a list of module names, got {value!r}")
    return tuple(value)


def import_modules(names: Sequence[str]) -> None:
    """Imports ``names`` (their cell registrations run); ValueError naming the module."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"imports: cannot import module {name!r} ({e})") from None


def build(values: Mapping[str, Any], overrides: Mapping[str, Any] = {}) -> RunConfig:
    """A checked :class:`RunConfig` from ``{"model": {...}, ..., "imports": [...]}`` and
    flat ``{field: value}`` overrides. Imports the ``imports`` modules first.

    Raises:
      ValueError: an unknown section or field, a value of the wrong type, a module that
        does not import, or a value that the configuration classes reject; the message
        names the section and the field.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"a config must be a mapping of sections, got {values!r}")
    extra = [k for k in values if k not in SECTIONS and k != IMPORTS]
    if extra:
        hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(
            str(k), [*SECTIONS, IMPORTS], n=1)) else "") for k in extra]
        raise ValueError(f"unknown config section(s) {', '.join(hints)}; expected "
                         f"{', '.join(SECTIONS)} and {IMPORTS}")
    fields: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        given = values.get(section) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {given!r}")
        fields[section] = dict(given)
    unknown = [k for k in overrides if k not in FIELD_SECTION and k != IMPORTS]
    if unknown:
        raise ValueError(unknown_key_message(unknown))
    imports = values.get(IMPORTS)
    for key, value in overrides.items():
        if key == IMPORTS:
            imports = value
        else:
            fields[FIELD_SECTION[key]][key] = value
    names = _import_names(imports)
    import_modules(names)  # before the model section resolves its cells
    built = {section: _section(section, fields[section]) for section in SECTIONS}
    try:
        return RunConfig(**built, imports=names)
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
    values = _yaml(config_path(name).read_text()) or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"config {name!r} must be a YAML mapping of sections ({', '.join(SECTIONS)})")
    return build(values, overrides)


def save(config: RunConfig, path: str | os.PathLike[str]) -> None:
    """Writes ``config`` as YAML, atomically."""
    with fileio.replacing(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read(path: str | os.PathLike[str]) -> RunConfig:
    """A config written by :func:`save` (its ``imports`` are imported)."""
    return build(_yaml(pathlib.Path(path).read_text()) or {})


def parse_value(name: str, text: str) -> Any:
    """The command-line value ``text`` of field ``name`` (or of ``imports``).

    ``text`` is read as YAML, a comma-separated one as a list; a field that takes
    strings keeps ``text`` as is when its YAML reading is not a valid value
    (``--datadir yes`` is the folder ``yes``). Types are checked by :func:`build`.
    """
    if name == IMPORTS:
        return [part.strip() for part in text.split(",") if part.strip()]
    value = _yaml(text) if text.strip() else text
    if isinstance(value, str) and "," in value:
        value = [_yaml(part) for part in value.split(",")]
    section = FIELD_SECTION[name]
    hint = _probe(section, name)[1]
    takes_str = hint is str or str in typing.get_args(hint)
    if takes_str and type_error(section, name, value) is not None:
        return text
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` (also ``--<field-with-dashes>``) option per config field, and
    ``--imports``."""
    parser.add_argument("--imports", dest=IMPORTS, default=argparse.SUPPRESS, metavar="MODULES",
                        help="comma-separated Python modules to import first (their "
                             "clockwork.cells.register calls run); replaces the config's")
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
    """The fields (and ``imports``) given on the command line, parsed."""
    return {
        name: parse_value(name, text)
        for name, text in vars(namespace).items()
        if name in FIELD_SECTION or name == IMPORTS
    }


def resume_conflicts(saved: RunConfig, current: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose change would alter a resumed run's trajectory: ``{name: (saved, now)}``
    (``imports`` included: they decide what the cell names mean)."""
    old, new = saved.to_dict(), current.to_dict()
    conflicts = {}
    if old[IMPORTS] != new[IMPORTS]:
        conflicts[IMPORTS] = (old[IMPORTS], new[IMPORTS])
    for section in SECTIONS:
        for name in old[section]:
            if old[section][name] != new[section].get(name) and name not in RESUMABLE_CHANGES:
                conflicts[name] = (old[section][name], new[section].get(name))
    return conflicts
