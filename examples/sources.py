"""The videos a run trains and evaluates on, from its :class:`~run_config.TrainConfig`.

A source is frames only, or, for a data source with actions (``pushed``), frames and
the actions that lead to them (``actions[i]`` is ``(T, A)`` float32 for video ``i``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clockwork import data
from run_config import TrainConfig

GENERATED_SEED = 0
"""Seed of generated Moving MNIST: every run sees the same videos, whatever its seed."""


class Prefix:
    """The first ``count`` videos of ``videos``, cut to their first ``frames`` frames
    (and their ``actions``, when given, likewise)."""

    def __init__(self, videos: data.VideoSource, count: int, frames: int, actions: Any = None):
        if len(videos) < count:
            raise ValueError(f"the split has {len(videos)} videos, fewer than the {count} needed")
        length = videos[0].shape[0]
        if length < frames:
            raise ValueError(f"the split's videos have {length} frames, fewer than {frames}")
        self.videos, self.count, self.frames = videos, count, frames
        self.actions = None if actions is None else _Cut(actions, count, frames)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.videos[index][: self.frames]


class _Cut:
    def __init__(self, actions: Any, count: int, frames: int):
        self.actions, self.count, self.frames = actions, count, frames

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return np.asarray(self.actions[index][: self.frames], np.float32)


def train_videos(cfg: TrainConfig) -> tuple[data.VideoSource, Any]:
    """The training split and its actions (``None`` without); generated videos are
    ``cfg.seq_len`` frames long."""
    if cfg.data_source == "generated":
        return data.generate_moving_mnist(cfg.generated_videos, cfg.seq_len, GENERATED_SEED,
                                          **_generated(cfg)), None
    if cfg.data_source == "pushed":
        return data.generate_pushed_mnist(cfg.generated_videos, cfg.seq_len, GENERATED_SEED)
    return _tfds_split(cfg, "train"), None


def test_videos(cfg: TrainConfig, count: int, frames: int) -> Prefix:
    """The first ``count`` test videos, cut to ``frames`` frames (with their actions)."""
    actions = None
    if cfg.data_source == "generated":
        videos = data.generate_moving_mnist(count, frames, GENERATED_SEED, digit_split="test",
                                            **_generated(cfg))
    elif cfg.data_source == "pushed":
        videos, actions = data.generate_pushed_mnist(count, frames, GENERATED_SEED, digit_split="test")
    else:
        videos = _tfds_split(cfg, "test")
    return Prefix(videos, count, frames, actions)


def _generated(cfg: TrainConfig) -> dict[str, Any]:
    return {"num_digits": cfg.generated_digits, "speed_range": tuple(cfg.generated_speed)}


def _tfds_split(cfg: TrainConfig, split: str) -> data.TfdsVideos:
    return data.load_split(
        cfg.dataset, split, data_dir=cfg.datadir, generate_if_missing=cfg.dataset == "mmnist"
    )
