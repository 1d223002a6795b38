"""Configurations by concern, and the paper's presets (docs/model.md#presets).

Four small frozen dataclasses, each read by one part of the library:

* ``ModelConfig``: the architecture (what decides the parameters), read by
  ``clockwork.CWVAE.from_config``;
* ``LossConfig``: the likelihood's scale and the KL options, also read there;
* ``OptimConfig``: the optimiser, read by ``clockwork.training.make_optimizer``;
* ``SpeedConfig``: options that change speed and memory, not the numbers (but
  ``compute_dtype``), read by ``from_config`` and the training steps.

A ``Preset`` bundles one of each; ``preset`` gives the paper's ``mmnist``,
``mazes`` and ``minerl``. Batch size, sequence lengths and the evaluation's settings are
the example programs' (``examples/configs/*.yaml``).

Examples:
  >>> p = preset("minerl")
  >>> p.model.cell_options["det_size"], p.loss.dec_stddev, p.optim.lr
  (800, 0.4, 0.0001)
  >>> preset("mmnist").model.replace(factors=(4, 8)).clock.periods
  (1, 4, 32)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from clockwork import _checks
from clockwork.cells.registry import resolve
from clockwork.hierarchy.clock import Clock
from clockwork.losses.elbo import FREE_BITS, KL_BALANCE, check_kl_options
from clockwork.nets import FRAME_SIZE, check_conv_options, conv_layout
from clockwork.training import COMPUTE_DTYPES

CellOptions = dict[str, Any]


def _per_level_floats(name: str, value: Any) -> Any:
    """``None``, a float, or a tuple of floats (their ranges are checked by
    ``check_kl_options``, their number by ``LossConfig.check_levels``, which knows the
    levels)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must hold numbers, got {value!r}")
        return tuple(float(v) for v in value)
    raise TypeError(f"{name} must be a number, one number per level, or None, got "
                    f"{_checks.describe(value)}")


class _Replace:
    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (and validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Replace):
    """The architecture of a CW-VAE.

    Attributes:
      frame_size: ``(H, W)`` of the frames; the conv stacks' shapes follow from it
        (``clockwork.nets.conv_layout``: sides multiples of 16 from 64, or of 8
        from 32 when a side is below 64).
      channels: image channels ``C``.
      levels: number of levels ``L``.
      temporal_factor: the paper's factor ``k`` between all levels, used when
        ``factors`` is ``None``.
      factors: one temporal factor per level boundary ``(k_1, ..., k_{L-1})``.
      cell: the cell of every level, or one per level (fastest first): a registered
        name (``rssm``, ``gru``, ``lstm``, ``categorical``, ``mdn``, or one added by
        ``clockwork.cells.register``) or an import path
        ``package.module:Factory``.
      cell_options: keyword arguments of the cell factory (for ``rssm``: ``stoch_size``,
        ``det_size``, ``hidden_size``, ``min_stddev``, ``stddev_shift``; for ``gru`` and
        ``lstm``: ``det_size``, ``hidden_size``; for ``categorical``: ``groups``,
        ``classes``, ``det_size``, ``hidden_size``, ``unimix``; for ``mdn``:
        ``stoch_size``, ``det_size``, ``hidden_size``, ``mixtures``, ``temperature``,
        ``shared_weights``): one mapping for every level, or one per level (needed when
        the levels' cells take different options).
      action_size: size of actions concatenated to level 0's context (0: none).
      channel_mult, filters: the conv nets' widths ``m`` and ``f``.
      enc_dense_layers, enc_dense_embed_size: the encoder's per-level dense stacks.

    Every field is checked when the config is made (``TypeError`` for a value of the
    wrong type, ``ValueError`` for one out of range; the message names the field).
    """

    frame_size: tuple[int, int] = FRAME_SIZE
    channels: int = 1
    levels: int = 3
    temporal_factor: int = 6
    factors: tuple[int, ...] | None = None
    cell: str | tuple[str, ...] = "rssm"
    cell_options: CellOptions | tuple[CellOptions, ...] = dataclasses.field(default_factory=dict)
    action_size: int = 0
    channel_mult: int = 1
    filters: int = 32
    enc_dense_layers: int = 3
    enc_dense_embed_size: int = 1000

    def __post_init__(self) -> None:
        conv_layout(self.frame_size)  # names the size and the nearest sizes that work
        object.__setattr__(self, "frame_size", tuple(self.frame_size))
        for name in ("channels", "levels", "temporal_factor", "channel_mult", "filters",
                     "enc_dense_embed_size"):
            _checks.integer(name, getattr(self, name))
        for name in ("enc_dense_layers", "action_size"):
            _checks.integer(name, getattr(self, name), 0)
        if self.factors is not None:
            _checks.sequence("factors", self.factors, "positive ints, or None")
            object.__setattr__(self, "factors", tuple(self.factors))
        self.clock  # noqa: B018 -- validates the factors against levels
        cells = self.cell if isinstance(self.cell, (list, tuple)) else (self.cell,)
        if isinstance(self.cell, (list, tuple)):
            if len(self.cell) != self.levels:
                raise ValueError(f"cell needs one name per level ({self.levels}), got {self.cell!r}")
            object.__setattr__(self, "cell", tuple(self.cell))
        for name in cells:
            if not isinstance(name, str):
                raise TypeError(f"cell must be a name or an import path, got {_checks.describe(name)}")
            resolve(name)  # an unknown name lists the registered ones
        options = self.cell_options
        if isinstance(options, (list, tuple)):
            if len(options) != self.levels:
                raise ValueError(
                    f"cell_options needs one mapping per level ({self.levels}), got {len(options)}"
                )
            object.__setattr__(self, "cell_options", tuple(dict(o) for o in options))
            options = self.cell_options
        elif isinstance(options, Mapping):
            object.__setattr__(self, "cell_options", dict(options))
            options = (self.cell_options,)
        else:
            raise TypeError(f"cell_options must be a mapping or one per level, got "
                            f"{_checks.describe(options)}")
        for o in options:
            if not isinstance(o, Mapping) or not all(isinstance(k, str) for k in o):
                raise TypeError(f"cell_options must map option names to values, got {o!r}")

    @property
    def clock(self) -> Clock:
        """The levels' clock: ``factors``, else ``temporal_factor`` at every boundary."""
        if self.factors is None:
            return Clock.uniform(self.levels, self.temporal_factor)
        clock = Clock(self.factors)
        if clock.levels != self.levels:
            raise ValueError(
                f"factors {self.factors} give {clock.levels} levels but levels={self.levels}; "
                f"give levels - 1 factors"
            )
        return clock

    def cells(self) -> tuple[tuple[str, CellOptions], ...]:
        """``(name, options)`` of every level's cell, fastest first."""
        names = self.cell if isinstance(self.cell, tuple) else (self.cell,) * self.levels
        opts = self.cell_options
        per_level = opts if isinstance(opts, tuple) else (opts,) * self.levels
        return tuple((n, dict(o)) for n, o in zip(names, per_level))


@dataclasses.dataclass(frozen=True)
class LossConfig(_Replace):
    """The objective (docs/model.md#loss).

    Attributes:
      dec_stddev: the stddev of the decoder's per-pixel Normal.
      beta: scales each level's KL: one number, one per level, or ``None`` (1).
      free_nats: the official TF code's threshold, ``max(0, kl - free_nats)`` on the
        per-sequence KL (one number, one per level, or ``None``).
      free_bits: DreamerV3's threshold, ``max(free_bits, kl_n)`` on each step's KL (one
        number, one per level, or ``None``; DreamerV3 uses 1.0).
      kl_grad_post_perc: the JAX port's KL balancing ``a`` in ``[0, 1]``, or ``None``.
      kl_balance: DreamerV2/V3's KL balancing weights ``(dynamics, representation)``
        (DreamerV3: ``(0.5, 0.1)``), or ``None``.

    ``dreamerv3`` gives DreamerV3's free bits and balancing. Every field is checked
    when the config is made (``check_kl_options``).
    """

    dec_stddev: float = 1.0
    beta: float | tuple[float, ...] | None = None
    free_nats: float | tuple[float, ...] | None = None
    kl_grad_post_perc: float | None = None
    free_bits: float | tuple[float, ...] | None = None
    kl_balance: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dec_stddev",
                           _checks.number("dec_stddev", self.dec_stddev, low=0.0, low_open=True))
        for name in ("beta", "free_nats", "free_bits"):
            object.__setattr__(self, name, _per_level_floats(name, getattr(self, name)))
        if isinstance(self.kl_balance, list):
            object.__setattr__(self, "kl_balance", tuple(self.kl_balance))
        check_kl_options(beta=self.beta, free_nats=self.free_nats, free_bits=self.free_bits,
                         kl_grad_post_perc=self.kl_grad_post_perc, kl_balance=self.kl_balance)
        if self.kl_balance is not None:
            object.__setattr__(self, "kl_balance", tuple(float(w) for w in self.kl_balance))

    @classmethod
    def dreamerv3(cls, **changes: Any) -> LossConfig:
        """DreamerV3's KL options: free bits of 1 nat and balancing weights (0.5, 0.1).

        Examples:
          >>> LossConfig.dreamerv3(dec_stddev=0.4)
          LossConfig(dec_stddev=0.4, beta=None, free_nats=None, kl_grad_post_perc=None, free_bits=1.0, kl_balance=(0.5, 0.1))
        """
        return cls(**{"free_bits": FREE_BITS, "kl_balance": KL_BALANCE, **changes})

    def check_levels(self, levels: int) -> None:
        """Raise unless ``beta``, ``free_nats`` and ``free_bits`` are scalars or have
        ``levels`` values."""
        for name in ("beta", "free_nats", "free_bits"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != levels:
                raise ValueError(f"{name} needs one value per level ({levels}), got {value!r}")


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Replace):
    """Adam after clipping the gradients' global norm (docs/model.md#presets); every
    field a finite number > 0."""

    lr: float = 3e-4
    adam_eps: float = 1e-4
    grad_clip_norm: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("lr", "adam_eps", "grad_clip_norm"):
            object.__setattr__(self, name, _checks.number(name, getattr(self, name), low=0.0,
                                                          low_open=True))


@dataclasses.dataclass(frozen=True)
class SpeedConfig(_Replace):
    """Speed and memory options (docs/performance.md).

    Attributes:
      conv_impl: ``fast`` (convolutions as matrix products) or ``lax`` (the plain ones).
      conv_chunk: the conv nets run over this many frames at a time; ``None``: all.
      remat: recompute the scans' steps and the conv chunks in the backward pass.
      compute_dtype: ``bfloat16`` runs the training loss's products in bfloat16 on
        bfloat16 copies of the float32 parameters; read by the training steps.
      conv_product_dtype: ``bfloat16`` gives the fast convolutions' matrix products
        bfloat16 operands and float32 accumulation (with ``conv_impl="fast"``);
        ``None``: float32.

    ``compute_dtype`` and ``conv_product_dtype`` are the options that change the
    numbers (docs/performance.md#bfloat16-conv-products).
    """

    conv_impl: str = "fast"
    conv_chunk: int | None = 50
    remat: bool = False
    compute_dtype: str = "float32"
    conv_product_dtype: str | None = None

    def __post_init__(self) -> None:
        check_conv_options(self.conv_impl, self.conv_product_dtype)
        if self.conv_chunk is not None:
            _checks.integer("conv_chunk", self.conv_chunk)
        _checks.flag("remat", self.remat)
        _checks.choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclasses.dataclass(frozen=True)
class Preset(_Replace):
    """One configuration of each concern."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    speed: SpeedConfig = dataclasses.field(default_factory=SpeedConfig)


def _sizes(stoch: int, det: int) -> CellOptions:
    return {"stoch_size": stoch, "det_size": det, "hidden_size": det}


PRESETS: dict[str, Preset] = {
    "mmnist": Preset(
        ModelConfig(channels=1, cell_options=_sizes(20, 200)), LossConfig(dec_stddev=1.0),
        OptimConfig(lr=3e-4),
    ),
    "mazes": Preset(
        ModelConfig(channels=3, cell_options=_sizes(20, 200)), LossConfig(dec_stddev=0.1),
        OptimConfig(lr=3e-4),
    ),
    "minerl": Preset(
        ModelConfig(channels=3, cell_options=_sizes(100, 800)), LossConfig(dec_stddev=0.4),
        OptimConfig(lr=1e-4),
    ),
}
"""The paper's settings for its three datasets."""


def preset(name: str) -> Preset:
    """One of ``PRESETS`` (``mmnist``, ``mazes``, ``minerl``)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
