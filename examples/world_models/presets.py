"""The sizes of a World Models run: ``smoke`` (a minute or two, for the test suite),
``small`` (about an hour on 2 cores) and ``paper`` (the original's)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CollectPreset:
    """The random rollouts of the ``collect`` stage.

    Attributes:
      rollouts: episodes to collect.
      max_steps: steps per episode at most (CarRacing-v3 ends an episode at 1,000).
      shard_episodes: episodes per shard file.
      workers: processes that run episodes side by side.
      hold: each random action is held for 1 to ``hold`` steps (drawn per action).
      seed: the first episode's seed; episode ``i`` is seeded with ``seed + i``.
    """

    rollouts: int
    max_steps: int
    shard_episodes: int
    workers: int
    hold: int = 8
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Preset:
    """Every stage's sizes."""

    collect: CollectPreset


PRESETS = {
    "smoke": Preset(CollectPreset(rollouts=4, max_steps=40, shard_episodes=2, workers=2)),
    "small": Preset(CollectPreset(rollouts=200, max_steps=500, shard_episodes=10, workers=2)),
    "paper": Preset(CollectPreset(rollouts=10_000, max_steps=1000, shard_episodes=100, workers=2)),
}
