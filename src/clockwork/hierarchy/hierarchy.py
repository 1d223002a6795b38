"""The top-down unroll of a stack of cells on a clock (docs/model.md#hierarchy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork.cells.base import Cell, check_cell, draw_noise, unroll
from clockwork.hierarchy.clock import Clock

UseObs = bool | str | Sequence[bool]


class Rollout(NamedTuple):
    """One unroll of every level, fastest level first.

    ``last``: each level's state after its last step, ``(B, ...)`` leaves.
    ``priors``, ``posteriors``: each level's stacked states, ``(B, N_l, ...)`` leaves.
    """

    last: tuple[Any, ...]
    priors: tuple[Any, ...]
    posteriors: tuple[Any, ...]


def parse_use_obs(use_obs: UseObs, levels: int) -> tuple[bool, ...]:
    """Per-level observation flags, fastest level first.

    ``True``/``False`` applies to every level; a string such as ``"TTF"`` or a sequence of
    bools gives one flag per level (``"TTF"`` skips the top level's observations).

    Raises:
      TypeError: ``use_obs`` is none of these.
      ValueError: a string or sequence of the wrong length, or a string with letters other
        than ``T`` and ``F``.
    """
    levels = _checks.integer("levels", levels)
    if isinstance(use_obs, bool):
        return (use_obs,) * levels
    if isinstance(use_obs, str):
        if len(use_obs) != levels or set(use_obs) - {"T", "F"}:
            raise ValueError(
                f"use_obs must be {levels} letters T or F (one per level), got {use_obs!r}"
            )
        return tuple(c == "T" for c in use_obs)
    if not isinstance(use_obs, Sequence):
        raise TypeError(f"use_obs must be a bool, a string of T and F or a sequence of bools, "
                        f"got {_checks.describe(use_obs)}")
    flags = tuple(use_obs)
    if len(flags) != levels or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"use_obs must hold {levels} bools (one per level), got {use_obs!r}")
    return flags


class Hierarchy(nnx.Module):
    """Cells on a clock, unrolled top-down.

    Level ``L-1`` reads zero context; the posterior features of level ``l`` are repeated
    ``k_l`` times along time and become the context of level ``l-1``. Embeddings come from
    any encoder: level ``l`` reads ``(B, ceil(T / P_l), embed_size_l)``.

    Args:
      cells: one cell per level, fastest first; cell classes and sizes may differ.
      clock: the levels' periods; ``clock.levels == len(cells)``.
      action_size: size of optional actions concatenated to level 0's context.
      remat: recompute the scans' per-step activations in the backward pass.
    """

    def __init__(
        self, cells: Sequence[Cell], clock: Clock, *, action_size: int = 0, remat: bool = False
    ):
        _checks.instance("clock", clock, Clock)
        _checks.sequence("cells", cells, "cells, one per level")
        if len(cells) != clock.levels:
            raise ValueError(
                f"{len(cells)} cells for a clock of {clock.levels} levels "
                f"(factors {clock.factors}); give one cell per level"
            )
        _checks.integer("action_size", action_size, 0)
        _checks.flag("remat", remat)
        for level, cell in enumerate(cells):
            check_cell(cell, f"cells[{level}]")
            if level + 1 < len(cells):
                want = cells[level + 1].feature_size + (action_size if level == 0 else 0)
                if cell.context_size != want:
                    raise ValueError(
                        f"cells[{level}].context_size is {cell.context_size}, but the level "
                        f"above emits features of size {cells[level + 1].feature_size}"
                        + (f" plus {action_size} action dims" if level == 0 and action_size else "")
                    )
        if len(cells) == 1 and cells[0].context_size < action_size:
            raise ValueError(
                f"a one-level hierarchy with {action_size} action dims needs context_size >= "
                f"{action_size}, got {cells[0].context_size}"
            )
        self.cells = nnx.List(cells)
        self.clock = clock
        self.action_size = action_size
        self.remat = remat

    @property
    def levels(self) -> int:
        return self.clock.levels

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> tuple[Any, ...]:
        """Every level's state before its first step, ``(batch_size, ...)`` leaves."""
        _checks.integer("batch_size", batch_size)
        return tuple(cell.initial_state(batch_size, dtype) for cell in self.cells)

    def noise(
        self,
        key: jax.Array,
        frames: int,
        batch_size: int,
        *,
        start: int | jax.Array = 0,
        dtype: DTypeLike = jnp.float32,
    ) -> tuple[Any, ...]:
        """Every level's noise for ``frames`` frames: per level ``(B, N_l, ...)`` or ``None``.

        Level ``l`` draws with ``split(key, levels)[l]`` for its steps from
        ``start // P_l`` on (``draw_noise``), so ``observe(e, key)``
        equals ``observe(e, noise=self.noise(key, T, B))``.
        """
        _checks.prng_key("key", key)
        _checks.integer("batch_size", batch_size)
        steps = self._steps(frames)
        keys = jax.random.split(key, self.levels)
        return tuple(
            draw_noise(cell, k, batch_size, n, start=start // p, dtype=dtype)
            for cell, k, n, p in zip(self.cells, keys, steps, self.clock.periods)
        )

    def observe(
        self,
        embeds: Sequence[jax.Array],
        key: jax.Array | None = None,
        *,
        noise: Sequence[Any] | None = None,
        use_obs: UseObs = True,
        initial: Sequence[Any] | None = None,
        actions: jax.Array | None = None,
    ) -> Rollout:
        """Posterior unroll over ``T`` frames.

        Args:
          embeds: per level ``(B, ceil(T / P_l), embed_size_l)``; ``T`` is level 0's length.
          key: PRNG key of the noise; or give ``noise`` drawn by ``noise``.
          use_obs: per-level observation flags (see ``parse_use_obs``).
          initial: per-level initial states (zeros when ``None``).
          actions: ``(B, T, action_size)``, concatenated to level 0's context.
        """
        _checks.sequence("embeds", embeds, "arrays, one per level")
        if len(embeds) != self.levels:
            raise ValueError(f"expected {self.levels} embeddings (one per level), got {len(embeds)}")
        batch, frames = _checks.float_array("embeds[0]", embeds[0], ("B", "T", "E"))[:2]
        steps = self._steps(frames)
        for level, (e, n) in enumerate(zip(embeds, steps)):
            _checks.float_array(f"embeds[{level}]", e, (batch, n, self.cells[level].embed_size))
        flags = parse_use_obs(use_obs, self.levels)
        noise = self._noise(key, noise, frames, batch, 0, embeds[0].dtype)
        return self._unroll(list(embeds), steps, flags, noise, initial, actions, batch)

    def imagine(
        self,
        initial: Sequence[Any],
        frames: int,
        key: jax.Array | None = None,
        *,
        noise: Sequence[Any] | None = None,
        start: int | jax.Array = 0,
        actions: jax.Array | None = None,
    ) -> Rollout:
        """Prior-only continuation for ``frames`` frames from per-level states ``initial``.

        Level ``l`` takes ``ceil(frames / P_l)`` steps; features of the level above are
        its prior samples. Callers continuing an observed rollout should start it on a
        multiple of the top period (as ``open_loop`` does).

        ``start`` is the frame index of the first imagined frame within a longer
        imagination under the same ``key`` (a multiple of the top period): imagining
        ``a + b`` frames equals imagining ``a`` and then ``b`` with ``start=a`` from the
        first part's last states. With ``noise`` (from ``noise``, which takes the
        ``start``) instead of ``key``, ``start`` is not used.
        """
        _checks.sequence("initial", initial, "states, one per level")
        if len(initial) != self.levels:
            raise ValueError(f"expected {self.levels} initial states, got {len(initial)}")
        if isinstance(start, int):
            self.clock.check_top_multiple(start, "start")
        steps = self._steps(frames)
        batch = jax.tree.leaves(initial[0])[0].shape[0]
        dtype = jax.tree.leaves(initial[-1])[0].dtype
        noise = self._noise(key, noise, frames, batch, start, dtype)
        return self._unroll(
            [None] * self.levels, steps, (False,) * self.levels, noise, initial, actions, batch
        )

    def open_loop(
        self,
        embeds: Sequence[jax.Array],
        horizon: int,
        key: jax.Array,
        *,
        use_obs: UseObs = True,
        actions: jax.Array | None = None,
    ) -> tuple[Rollout, Rollout]:
        """Observe a context, then imagine ``horizon`` frames from its last states.

        Args:
          embeds: per level ``(B, ctx / P_l, embed_size_l)`` for a context of ``ctx``
            frames, a multiple of the top period.
          horizon: frames to predict after the context.
          actions: ``(B, ctx + horizon, action_size)`` when the hierarchy takes actions.
        Returns:
          The observed and the imagined rollouts; level 0's imagined priors hold one
          state per predicted frame.
        """
        _checks.sequence("embeds", embeds, "arrays, one per level")
        context = _checks.array("embeds[0]", embeds[0], ("B", "T", "E"))[1]
        ctx = self.clock.check_top_multiple(context, "context")
        _checks.integer("horizon", horizon, 0)
        _checks.prng_key("key", key)
        obs_actions = img_actions = None
        if actions is not None:
            obs_actions, img_actions = actions[:, :ctx], actions[:, ctx:]
        k_obs, k_img = jax.random.split(key)
        seen = self.observe(embeds, k_obs, use_obs=use_obs, actions=obs_actions)
        return seen, self.imagine(seen.last, horizon, k_img, actions=img_actions)

    def _steps(self, frames: int) -> tuple[int, ...]:
        frames = _checks.integer("frames", frames, 0)
        return self.clock.num_steps(frames) if frames else (0,) * self.levels

    def _noise(
        self, key: jax.Array | None, noise: Sequence[Any] | None, frames: int, batch: int,
        start: int | jax.Array, dtype: DTypeLike,
    ) -> tuple[Any, ...]:
        if (key is None) == (noise is None):
            raise ValueError("give exactly one of key (a PRNG key) and noise (from Hierarchy.noise)")
        if noise is None:
            return self.noise(key, frames, batch, start=start, dtype=dtype)
        if len(noise) != self.levels:
            raise ValueError(f"expected noise for {self.levels} levels, got {len(noise)}")
        return tuple(noise)

    def _unroll(
        self,
        embeds: list[jax.Array | None],
        steps: tuple[int, ...],
        use_obs: tuple[bool, ...],
        noise: tuple[Any, ...],
        initial: Sequence[Any] | None,
        actions: jax.Array | None,
        batch: int,
    ) -> Rollout:
        given = [e for e in embeds if e is not None]
        if initial is None:
            initial = self.initial_state(batch, given[0].dtype if given else jnp.float32)
        elif len(initial) != self.levels:
            raise ValueError(f"expected {self.levels} initial states, got {len(initial)}")
        if (actions is None) != (self.action_size == 0):
            raise ValueError(
                "actions must be given exactly when the hierarchy was built with action_size > 0"
            )
        if actions is not None and actions.shape != (batch, steps[0], self.action_size):
            raise ValueError(
                f"actions have shape {actions.shape}, expected {(batch, steps[0], self.action_size)}"
            )
        top = self.cells[-1]
        top_ctx = top.context_size - (self.action_size if self.levels == 1 else 0)
        dtype = given[0].dtype if given else jax.tree.leaves(initial[-1])[0].dtype
        context = jnp.zeros((batch, steps[-1], top_ctx), dtype)
        last, priors, posts = [None] * self.levels, [None] * self.levels, [None] * self.levels
        for level in reversed(range(self.levels)):
            if level == 0 and actions is not None:
                context = jnp.concatenate([context, actions.astype(context.dtype)], axis=-1)
            state, out = unroll(
                self.cells[level],
                initial[level],
                embeds[level],
                context,
                noise[level],
                use_obs=use_obs[level],
                remat=self.remat,
            )
            last[level], priors[level], posts[level] = state, out.prior, out.posterior
            if level:
                context = self.clock.tile(out.posterior.feature, level, steps[level - 1])
        return Rollout(tuple(last), tuple(priors), tuple(posts))
