"""The clock of a temporal hierarchy: which level ticks when (docs/model.md#clock).

Level ``l`` ticks once every ``P_l`` frames, with ``P_0 = 1`` and
``P_l = k_1 * ... * k_l`` for the factors ``(k_1, ..., k_{L-1})``, one per level
boundary. All methods are pure functions of static integers and arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from clockwork import _checks


@dataclasses.dataclass(frozen=True)
class Clock:
    """Per-level periods for temporal factors ``(k_1, ..., k_{L-1})``.

    Examples:
      >>> clock = Clock((2, 3))
      >>> clock.periods
      (1, 2, 6)
      >>> clock.num_steps(13)
      (13, 7, 3)
    """

    factors: tuple[int, ...]

    def __init__(self, factors: Sequence[int]):
        """Raises ``TypeError``/``ValueError`` unless ``factors`` are positive ints."""
        _checks.sequence("factors", factors, "positive ints")
        checked = tuple(_checks.integer(f"factors[{i}]", k) for i, k in enumerate(factors))
        object.__setattr__(self, "factors", checked)

    @classmethod
    def uniform(cls, levels: int, k: int) -> Clock:
        """The paper's clock: ``levels`` levels with the same factor ``k``."""
        levels = _checks.integer("levels", levels)
        return cls((_checks.integer("k", k),) * (levels - 1))

    @property
    def levels(self) -> int:
        return len(self.factors) + 1

    @property
    def periods(self) -> tuple[int, ...]:
        """``P_l`` for every level, fastest first."""
        out = [1]
        for k in self.factors:
            out.append(out[-1] * k)
        return tuple(out)

    def num_steps(self, frames: int) -> tuple[int, ...]:
        """``ceil(frames / P_l)`` for every level."""
        frames = _checks.integer("frames", frames)
        return tuple(math.ceil(frames / p) for p in self.periods)

    @property
    def top_period(self) -> int:
        """``P_{L-1}``: a context or an imagination's ``start`` is a multiple of it."""
        return self.periods[-1]

    def check_top_multiple(self, value: object, name: str) -> int:
        """``value`` if it is a non-negative multiple of the top period, else a clear error.

        This is the one rule for context lengths, imagination starts and streamed chunks:
        the top level must have seen whole steps, so that every level starts afresh.

        Examples:
          >>> Clock((2, 3)).check_top_multiple(12, "context")
          12
          >>> Clock((2, 3)).check_top_multiple(8, "context")
          Traceback (most recent call last):
          ...
          ValueError: context=8 must be a non-negative multiple of the top period 6
        """
        value = _checks.integer(name, value, 0)
        if value % self.top_period:
            raise ValueError(
                f"{name}={value} must be a non-negative multiple of the top period {self.top_period}"
            )
        return value

    def merge(self, x: jax.Array, level: int) -> jax.Array:
        """Sum consecutive blocks of ``P_level`` frames (zero-padding the end).

        Args:
          x: ``(B, T, ...)`` per-frame features.
          level: which level's period to merge to.
        Returns:
          ``(B, ceil(T / P_level), ...)``.
        """
        period = self.periods[self._level(level)]
        _checks.array("x", x, ("B", "T", ...))
        if period == 1:
            return x
        b, t = x.shape[:2]
        steps = -(-t // period)
        pad = steps * period - t
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, steps, period, *x.shape[2:]).sum(axis=2)

    def tile(self, x: jax.Array, level: int, steps: int) -> jax.Array:
        """Repeat level ``level``'s outputs ``k_level`` times along time, cut to ``steps``.

        This turns level ``level``'s per-step outputs into the context of level
        ``level - 1``: step ``t`` of the lower level reads step ``t // k_level``.

        Args:
          x: ``(B, N, ...)`` outputs of level ``level`` (``level >= 1``).
          level: the upper level.
          steps: number of steps of level ``level - 1``; at most ``N * k_level``.
        Returns:
          ``(B, steps, ...)``.
        """
        level = self._level(level)
        _checks.array("x", x, ("B", "N", ...))
        steps = _checks.integer("steps", steps, 0)
        if level == 0:
            raise ValueError("tile goes from a level to the one below it; level must be >= 1")
        k = self.factors[level - 1]
        if steps > x.shape[1] * k:
            raise ValueError(
                f"cannot tile {x.shape[1]} steps of level {level} (factor {k}) to {steps} steps"
            )
        return jnp.repeat(x, k, axis=1, total_repeat_length=x.shape[1] * k)[:, :steps]

    def _level(self, level: int) -> int:
        if _checks.integer("level", level, 0) >= self.levels:
            raise ValueError(f"level must be in [0, {self.levels}), got {level}")
        return int(level)
