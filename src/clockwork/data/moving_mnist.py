"""Moving MNIST (Srivastava et al., 2015): two 28x28 digits bouncing inside a 64x64 frame.

Each video draws two digits from the shipped MNIST sample (`mnist_digits.npz`), a start
position uniform over the frame, a direction uniform on the circle and a speed uniform in
`SPEED_RANGE` pixels per frame. A digit reflects off the frame's edges (closed form, so
any video length costs the same per frame) and overlapping digits combine by their
pixelwise maximum. Everything follows from `(seed, digit_split)`, independent of how the
videos are chunked while rendering.

`generate_pushed_mnist` is a variant with actions: one digit whose velocity is the action.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from importlib import resources
from typing import Literal

import numpy as np

from clockwork import _checks

FRAME_SIZE = 64
DIGIT_SIZE = 28
LIMIT = FRAME_SIZE - DIGIT_SIZE  # a digit's top-left corner stays in [0, LIMIT]
NUM_DIGITS = 2
SPEED_RANGE = (2.0, 5.0)
DigitSplit = Literal["train", "test"]
_SPLIT_CODE = {"train": 0, "test": 1}


def mnist_digits(digit_split: DigitSplit = "train") -> np.ndarray:
    """The shipped MNIST digits of one split: `(K, 28, 28)` uint8 (K = 1600 train, 400 test).

    The two splits hold different digits, so generated test videos show unseen digits.
    """
    return _shipped(digit_split, "images")


def mnist_labels(digit_split: DigitSplit = "train") -> np.ndarray:
    """The classes (0-9) of `mnist_digits(digit_split)`: `(K,)` uint8.

    Examples:
      >>> labels = mnist_labels("test")
      >>> labels.shape, int(labels.min()), int(labels.max())
      ((400,), 0, 9)
    """
    return _shipped(digit_split, "labels")


@functools.cache
def _shipped(digit_split: DigitSplit, kind: str) -> np.ndarray:
    """One read-only array of the shipped `mnist_digits.npz`: `<split>_<kind>`."""
    if digit_split not in _SPLIT_CODE:
        raise ValueError(f"digit_split must be 'train' or 'test', got {digit_split!r}")
    with resources.files(__package__).joinpath("mnist_digits.npz").open("rb") as f:
        array = np.load(f)[f"{digit_split}_{kind}"]
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True)
class MovingMnistPlan:
    """The random choices behind N videos; rendering them is deterministic.

    Attributes:
      digit_ids: `(N, 2)` int64, indices into `mnist_digits(digit_split)`.
      start: `(N, 2, 2)` float64, top-left (row, col) of each digit at frame 0, in [0, 36].
      velocity: `(N, 2, 2)` float64, (row, col) pixels per frame of each digit.
    """

    digit_ids: np.ndarray
    start: np.ndarray
    velocity: np.ndarray

    def __len__(self) -> int:
        return len(self.digit_ids)

    def __getitem__(self, index: slice) -> MovingMnistPlan:
        return MovingMnistPlan(self.digit_ids[index], self.start[index], self.velocity[index])


def moving_mnist_plan(
    num_videos: int,
    seed: int = 0,
    digit_split: DigitSplit = "train",
    *,
    num_digits: int = NUM_DIGITS,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> MovingMnistPlan:
    """The random choices behind `generate_moving_mnist(num_videos, T, seed, digit_split=...)`.

    One generator seeded by `(seed, digit_split)` draws five uniforms per digit, video by
    video (digit id, start row, start column, direction, speed), so the plan for N videos
    begins with the plan for fewer, and does not depend on T.
    """
    _checks.integer("num_videos", num_videos, 0)
    _checks.integer("seed", seed, 0)
    _checks.integer("num_digits", num_digits)
    low, high = speed_range
    for i, v in enumerate((low, high)):
        _checks.number(f"speed_range[{i}]", v, low=0.0)
    if not low <= high:
        raise ValueError(f"speed_range must be (low, high) with 0 <= low <= high, got {speed_range!r}")
    pool_size = len(mnist_digits(digit_split))
    u = np.random.default_rng([seed, _SPLIT_CODE[digit_split]]).random((num_videos, num_digits, 5))
    digit_ids = np.minimum((u[..., 0] * pool_size).astype(np.int64), pool_size - 1)
    start = u[..., 1:3] * LIMIT
    angle = u[..., 3] * 2.0 * np.pi
    speed = low + (high - low) * u[..., 4]
    velocity = speed[..., None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    return MovingMnistPlan(digit_ids, start, velocity)


def bouncing_positions(start: np.ndarray, velocity: np.ndarray, num_frames: int) -> np.ndarray:
    """Positions in [0, 36] of points moving at constant speed and reflecting off 0 and 36.

    Args:
      start: `(...)` positions at frame 0, in [0, 36].
      velocity: same shape, displacement per frame.
      num_frames: T.

    Returns:
      `(..., T)` float64; reflection is the triangle wave of period 72 applied to the
      unbounded path `start + velocity * t`.
    """
    t = np.arange(num_frames, dtype=np.float64)
    free = start[..., None] + velocity[..., None] * t
    folded = np.mod(free, 2.0 * LIMIT)
    return LIMIT - np.abs(LIMIT - folded)


def plan_positions(plan: MovingMnistPlan, num_frames: int) -> np.ndarray:
    """Top-left pixel (row, col) of each digit in each frame: `(N, T, D, 2)` int64."""
    positions = bouncing_positions(plan.start, plan.velocity, num_frames)  # (N, D, 2, T)
    return np.rint(positions).astype(np.int64).transpose(0, 3, 1, 2)


def render(plan: MovingMnistPlan, num_frames: int, digits: np.ndarray) -> np.ndarray:
    """Renders planned videos: `(N, T, 64, 64, 1)` uint8.

    Args:
      plan: the videos' random choices; `plan.digit_ids` index `digits`.
      num_frames: T.
      digits: `(K, 28, 28)` uint8 digit images.
    """
    return draw(plan.digit_ids, plan_positions(plan, num_frames), digits)


def draw(digit_ids: np.ndarray, positions: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """Videos of digits at given positions: `(N, T, 64, 64, 1)` uint8.

    Args:
      digit_ids: `(N, D)` indices into `digits`, the digits of each video.
      positions: `(N, T, D, 2)` int top-left (row, col) of each digit in each frame, in
        `[0, 36]`; overlapping digits combine by their pixelwise maximum.
      digits: `(K, 28, 28)` uint8 digit images.
    """
    n, num_frames, num_digits = positions.shape[:3]
    frames = np.zeros((n * num_frames, FRAME_SIZE, FRAME_SIZE), np.uint8)
    # windows[i, r, c] is the 28x28 view of frame i whose top-left pixel is (r, c).
    windows = np.lib.stride_tricks.sliding_window_view(
        frames, (DIGIT_SIZE, DIGIT_SIZE), axis=(1, 2), writeable=True
    )
    positions = positions.reshape(n * num_frames, num_digits, 2)
    frame = np.arange(n * num_frames)
    for d in range(num_digits):
        index = (frame, positions[:, d, 0], positions[:, d, 1])
        patch = np.repeat(digits[digit_ids[:, d]], num_frames, axis=0)  # (N*T, 28, 28)
        windows[index] = np.maximum(windows[index], patch)
    return frames.reshape(n, num_frames, FRAME_SIZE, FRAME_SIZE, 1)


PUSH_SPEED = 3.0
"""Pixels per frame of an action of 1 in ``generate_pushed_mnist``."""


def generate_pushed_mnist(
    num_videos: int,
    num_frames: int = 100,
    seed: int = 0,
    *,
    digit_split: DigitSplit = "train",
    switch_prob: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """One digit pushed around by actions: a generated dataset whose frames need them.

    Each video's action at frame `t` is a velocity `(row, col)` in `[-1, 1]^2`; with
    probability `switch_prob` a frame draws a fresh uniform velocity, else it keeps the
    previous one (frame 0 always draws). The digit's top-left corner moves by `PUSH_SPEED
    * action_t` pixels from frame `t - 1` to frame `t` (from a uniform start for frame
    0), stopping at the frame's edges. So `actions[:, t]` is what leads to frame `t`: in
    a ``CWVAE`` with `action_size=2` it enters level 0's step `t`.

    Returns:
      `videos (N, T, 64, 64, 1)` uint8 and `actions (N, T, 2)` float32; everything
      follows from `(seed, digit_split)`.

    Examples:
      >>> videos, actions = generate_pushed_mnist(2, num_frames=5)
      >>> videos.shape, actions.shape, actions.dtype
      ((2, 5, 64, 64, 1), (2, 5, 2), dtype('float32'))
    """
    _checks.integer("num_videos", num_videos, 0)
    _checks.integer("num_frames", num_frames)
    _checks.integer("seed", seed, 0)
    _checks.number("switch_prob", switch_prob, low=0.0, high=1.0)
    digits = mnist_digits(digit_split)
    rng = np.random.default_rng([seed, _SPLIT_CODE[digit_split], 1])
    digit_ids = rng.integers(0, len(digits), (num_videos, 1))
    start = rng.random((num_videos, 2)) * LIMIT
    fresh = rng.uniform(-1.0, 1.0, (num_videos, num_frames, 2))
    switch = rng.random((num_videos, num_frames)) < switch_prob
    switch[:, 0] = True
    # Hold each velocity until the next switch: index of the latest switching frame.
    latest = np.maximum.accumulate(np.where(switch, np.arange(num_frames), 0), axis=1)
    actions = np.take_along_axis(fresh, latest[..., None], axis=1)
    position = start
    positions = np.empty((num_videos, num_frames, 1, 2), np.int64)
    for t in range(num_frames):
        position = np.clip(position + PUSH_SPEED * actions[:, t], 0.0, LIMIT)
        positions[:, t, 0] = np.rint(position)
    return draw(digit_ids, positions, digits), actions.astype(np.float32)


def iter_moving_mnist(
    num_videos: int,
    num_frames: int = 100,
    seed: int = 0,
    *,
    digit_split: DigitSplit = "train",
    chunk_frames: int = 200_000,
    num_digits: int = NUM_DIGITS,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> Iterator[np.ndarray]:
    """Yields the videos of `generate_moving_mnist` in chunks of `(n, T, 64, 64, 1)` uint8.

    `chunk_frames` bounds the frames per chunk (at least one video per chunk); the
    concatenated chunks do not depend on it.
    """
    _checks.integer("num_frames", num_frames)
    _checks.integer("chunk_frames", chunk_frames)
    digits = mnist_digits(digit_split)
    plan = moving_mnist_plan(num_videos, seed, digit_split, num_digits=num_digits,
                             speed_range=speed_range)
    per_chunk = max(1, chunk_frames // num_frames)
    for begin in range(0, num_videos, per_chunk):
        yield render(plan[begin : begin + per_chunk], num_frames, digits)


def generate_moving_mnist(
    num_videos: int,
    num_frames: int = 100,
    seed: int = 0,
    *,
    digit_split: DigitSplit = "train",
    num_digits: int = NUM_DIGITS,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> np.ndarray:
    """Generates Moving MNIST videos: `(num_videos, num_frames, 64, 64, 1)` uint8.

    Args:
      num_videos: N.
      num_frames: T (100 for the training split, 1000 for the test split of
        `moving_mnist_2digit`).
      seed: non-negative int; the same `(seed, digit_split)` gives the same videos.
      digit_split: which shipped digits to draw from ('train': 1600, 'test': 400 others).
      num_digits: digits per video (2, as in the dataset).
      speed_range: pixels per frame, uniform in `(low, high)` (`SPEED_RANGE`, 2 to 5).

    Examples:
      >>> videos = generate_moving_mnist(3, num_frames=10, seed=0)
      >>> videos.shape, videos.dtype
      ((3, 10, 64, 64, 1), dtype('uint8'))
    """
    chunks = list(iter_moving_mnist(num_videos, num_frames, seed, digit_split=digit_split,
                                    num_digits=num_digits, speed_range=speed_range))
    if not chunks:
        return np.zeros((0, num_frames, FRAME_SIZE, FRAME_SIZE, 1), np.uint8)
    return np.concatenate(chunks)
