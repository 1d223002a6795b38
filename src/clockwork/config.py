"""``CWVAEConfig``: a frozen configuration with the paper's presets (SPEC section 7)."""

from __future__ import annotations

import dataclasses
from typing import Any

from clockwork.hierarchy.clock import Clock
from clockwork.nets import CONV_IMPLS

CELLS = ("rssm", "gru")
PerLevelInt = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CWVAEConfig:
    """Every setting of a CW-VAE model and of its training.

    Sizes marked per level take one int for all levels or a tuple with one value per
    level (fastest first). ``factors`` gives one temporal factor per level boundary;
    when ``None`` the paper's ``temporal_factor`` is used at every boundary.
    """

    # Data.
    channels: int = 1
    # Hierarchy.
    levels: int = 3
    temporal_factor: int = 6
    factors: tuple[int, ...] | None = None
    cell: str | tuple[str, ...] = "rssm"
    stoch_size: PerLevelInt = 20
    det_size: PerLevelInt = 200
    hidden_size: PerLevelInt = 200
    min_stddev: float = 1e-4
    stddev_shift: str = "input"
    action_size: int = 0
    # Conv networks.
    channel_mult: int = 1
    filters: int = 32
    enc_dense_layers: int = 3
    enc_dense_embed_size: int = 1000
    dec_stddev: float = 1.0
    # Loss options (off by default).
    beta: float | tuple[float, ...] | None = None
    free_nats: float | tuple[float, ...] | None = None
    kl_grad_post_perc: float | None = None
    # Training and evaluation.
    lr: float = 3e-4
    adam_eps: float = 1e-4
    grad_clip_norm: float = 10000.0
    batch_size: int = 50
    seq_len: int = 100
    eval_seq_len: int = 1000
    open_loop_ctx: int = 36
    # Speed and memory options (docs/performance.md); none but bfloat16 changes the numbers.
    compute_dtype: str = "float32"  # "bfloat16": products in bfloat16, parameters float32
    conv_impl: str = "fast"  # "lax": the plain convolutions
    remat: bool = False  # recompute the scans' steps and the conv chunks in the backward pass
    conv_chunk: int | None = 50  # conv nets over this many frames at a time; None: all

    def __post_init__(self) -> None:
        for name in ("channels", "levels", "channel_mult", "filters", "batch_size", "seq_len",
                     "eval_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("enc_dense_layers", "action_size", "open_loop_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.factors is not None:
            object.__setattr__(self, "factors", tuple(self.factors))
        self.clock  # noqa: B018 -- validates factors against levels
        for name in ("stoch_size", "det_size", "hidden_size"):
            for v in self.per_level(name):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{name} must hold positive integers, got {getattr(self, name)!r}")
        for v in self.per_level("cell"):
            if v not in CELLS:
                raise ValueError(f"cell must be one of {CELLS} (or one per level), got {v!r}")
        if self.stddev_shift not in ("input", "preactivation"):
            raise ValueError(f"stddev_shift must be 'input' or 'preactivation', got {self.stddev_shift!r}")
        for name in ("dec_stddev", "lr", "adam_eps", "grad_clip_norm", "min_stddev"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if self.conv_chunk is not None and (
            isinstance(self.conv_chunk, bool) or not isinstance(self.conv_chunk, int)
            or self.conv_chunk < 1
        ):
            raise ValueError(f"conv_chunk must be a positive integer or None, got {self.conv_chunk!r}")
        if not isinstance(self.remat, bool):
            raise TypeError(f"remat must be a bool, got {self.remat!r}")
        if self.kl_grad_post_perc is not None and not 0.0 <= self.kl_grad_post_perc <= 1.0:
            raise ValueError(f"kl_grad_post_perc must be in [0, 1], got {self.kl_grad_post_perc}")
        for name in ("beta", "free_nats"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(value) != self.levels:
                    raise ValueError(f"{name} needs one value per level ({self.levels}), got {value!r}")
                object.__setattr__(self, name, tuple(float(v) for v in value))

    @property
    def clock(self) -> Clock:
        if self.factors is None:
            return Clock.uniform(self.levels, self.temporal_factor)
        clock = Clock(self.factors)
        if clock.levels != self.levels:
            raise ValueError(
                f"factors {self.factors} give {clock.levels} levels but levels={self.levels}; "
                f"give levels - 1 factors"
            )
        return clock

    def per_level(self, name: str) -> tuple[Any, ...]:
        """A per-level field as one value per level, fastest first."""
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            if len(value) != self.levels:
                raise ValueError(f"{name} needs one value per level ({self.levels}), got {value!r}")
            return tuple(value)
        return (value,) * self.levels

    def replace(self, **changes: Any) -> CWVAEConfig:
        """A copy with ``changes`` applied (and validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CWVAEConfig:
        """One of :data:`PRESETS` (``mmnist``, ``mazes``, ``minerl``) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CWVAEConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS: dict[str, CWVAEConfig] = {
    "mmnist": CWVAEConfig(
        channels=1, stoch_size=20, det_size=200, hidden_size=200, dec_stddev=1.0, lr=3e-4,
        seq_len=100, eval_seq_len=1000,
    ),
    "mazes": CWVAEConfig(
        channels=3, stoch_size=20, det_size=200, hidden_size=200, dec_stddev=0.1, lr=3e-4,
        seq_len=100, eval_seq_len=300,
    ),
    "minerl": CWVAEConfig(
        channels=3, stoch_size=100, det_size=800, hidden_size=800, dec_stddev=0.4, lr=1e-4,
        seq_len=100, eval_seq_len=500,
    ),
}
