"""The videos a run trains and evaluates on, from its :class:`~run_config.TrainConfig`.

A source is frames only, or, for a data source with actions (``pushed``), frames and
the actions that lead to them (``actions[i]`` is ``(T, A)`` float32 for video ``i``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clockwork import data
from clockwork.config import ModelConfig
from run_config import TrainConfig

GENERATED_SEED = 0
"""Seed of generated Moving MNIST: every run sees the same videos, whatever its seed."""


class Prefix:
    """The first ``count`` videos of ``videos`` with at least ``frames`` frames, cut to
    their first ``frames`` frames (and their ``actions``, when given, likewise)."""

    def __init__(self, videos: data.VideoSource, count: int, frames: int, actions: Any = None):
        lengths = getattr(videos, "lengths", None)
        if lengths is None:
            length = videos[0].shape[0]
            if length < frames:
                raise ValueError(f"the split's videos have {length} frames, fewer than {frames}")
            lengths = [length] * len(videos)
        self.rows = [i for i, n in enumerate(lengths) if n >= frames][:count]
        if len(self.rows) < count:
            raise ValueError(f"the split has {len(self.rows)} videos of at least {frames} frames, "
                             f"fewer than the {count} needed")
        self.videos, self.count, self.frames = videos, count, frames
        self.actions = None if actions is None else _Cut(actions, self.rows, frames)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.videos[self.rows[index]][: self.frames]


class _Cut:
    def __init__(self, actions: Any, rows: list[int], frames: int):
        self.actions, self.rows, self.frames = actions, rows, frames

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.rows):
            raise IndexError(index)
        return np.asarray(self.actions[self.rows[index]][: self.frames], np.float32)


def train_videos(cfg: TrainConfig, model: ModelConfig) -> tuple[data.VideoSource, Any]:
    """The training split and its actions (``None`` without); generated videos are
    ``cfg.seq_len`` frames long."""
    if cfg.data_source == "folder":
        return video_folder(cfg, model, "train"), None
    if cfg.data_source == "generated":
        return block_mean(data.generate_moving_mnist(cfg.generated_videos, cfg.seq_len,
                                                     GENERATED_SEED, **_generated(cfg)),
                          model.frame_size), None
    if cfg.data_source == "pushed":
        return data.generate_pushed_mnist(cfg.generated_videos, cfg.seq_len, GENERATED_SEED)
    return _tfds_split(cfg, "train"), None


def test_videos(cfg: TrainConfig, model: ModelConfig, count: int, frames: int) -> Prefix:
    """The first ``count`` test videos of at least ``frames`` frames, cut to ``frames``
    frames (with their actions)."""
    actions = None
    if cfg.data_source == "folder":
        videos = video_folder(cfg, model, "test")
    elif cfg.data_source == "generated":
        videos = block_mean(data.generate_moving_mnist(count, frames, GENERATED_SEED,
                                                       digit_split="test", **_generated(cfg)),
                            model.frame_size)
    elif cfg.data_source == "pushed":
        videos, actions = data.generate_pushed_mnist(count, frames, GENERATED_SEED, digit_split="test")
    else:
        videos = _tfds_split(cfg, "test")
    return Prefix(videos, count, frames, actions)


def video_folder(cfg: TrainConfig, model: ModelConfig, split: str) -> data.VideoFolder:
    """One split of ``cfg.video_dir``, checked against the model's frames."""
    folder = data.VideoFolder(
        cfg.video_dir, split, test_fraction=cfg.test_fraction, channels=model.channels,
        frame_size=model.frame_size if cfg.resize else None, cache_dir=cfg.video_cache,
    )
    want = (*model.frame_size, model.channels)
    if folder.frame_shape != want:
        raise ValueError(
            f"the videos in {cfg.video_dir} have frames of {folder.frame_shape[0]}x"
            f"{folder.frame_shape[1]}, but the model reads {want[0]}x{want[1]}: set model "
            f"frame_size [{folder.frame_shape[0]}, {folder.frame_shape[1]}], or resize: true"
        )
    return folder


def block_mean(videos: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """``(N, T, H, W, C)`` uint8 videos averaged over whole blocks down to ``frame_size``
    (each side dividing its own), rounded to the nearest level."""
    n, t, h, w, c = videos.shape
    (fh, fw) = frame_size
    if (fh, fw) == (h, w):
        return videos
    blocks = videos.reshape(n, t, fh, h // fh, fw, w // fw, c).mean(axis=(3, 5), dtype=np.float32)
    return np.rint(blocks).astype(np.uint8)


def _generated(cfg: TrainConfig) -> dict[str, Any]:
    return {"num_digits": cfg.generated_digits, "speed_range": tuple(cfg.generated_speed)}


def _tfds_split(cfg: TrainConfig, split: str) -> data.TfdsVideos:
    return data.load_split(
        cfg.dataset, split, data_dir=cfg.datadir, generate_if_missing=cfg.dataset == "mmnist"
    )
