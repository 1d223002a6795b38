"""Input pipeline: windows of `seq_len` frames, seeded shuffle, batches, epochs; resumable.

Every video of T frames is cut into `T // seq_len` consecutive, non-overlapping windows
(the remainder is dropped: 500 frames -> 5 x 100), so no window crosses a video's end.
Windows are numbered video by video: with videos of equal length, window `w` is frames
`[(w % k) * seq_len, (w % k + 1) * seq_len)` of video `w // k`, with `k = T // seq_len`.
A source with a `lengths` attribute may hold videos of different lengths; those shorter
than `seq_len` give no window and are counted in a logged warning.

Epoch `e` visits the windows in the order `default_rng([seed, e]).permutation(n)` (or
`0..n-1` without shuffling). The order is cut into global batches of
`batch_size * process_count` windows (an incomplete last one is dropped), and process `p`
reads the `p`-th slice of `batch_size` windows of each. So every batch is a pure function
of `(epoch, step)`, the processes' batches are disjoint, their union does not depend on
how many processes share it, and the pipeline's whole position is two integers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from clockwork import _checks

PipelineState = dict[str, int]
Batch = np.ndarray | tuple[np.ndarray, np.ndarray]
"""Frames ``(B, seq_len, H, W, C)`` uint8, or ``(frames, actions (B, seq_len, A))``."""
_Pending = tuple[tuple[int, int], concurrent.futures.Future[Batch]]  # (epoch, step), batch
_log = logging.getLogger(__name__)


class VideoSource(Protocol):
    """Random access to N videos: `source[i]` is `(T, H, W, C)` uint8.

    A uint8 array `(N, T, H, W, C)` (in memory or `np.memmap`) is one; so are
    `TfdsVideos` and `VideoFolder`. Without a `lengths` attribute (frames per video,
    known without reading the videos) every video must be as long as video 0.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class VideoPipeline:
    """Iterates uint8 batches `(batch_size, seq_len, H, W, C)` of windows cut from videos.

    Args:
      videos: the videos (see `VideoSource`): all of one length T, or of the lengths
        given by their `lengths` attribute.
      seq_len: frames per window; `T // seq_len` windows per video.
      batch_size: windows per batch on this process.
      seed: shuffling seed (non-negative); equal seeds give equal batches.
      shuffle: visit windows in a fresh seeded order each epoch; if False, in order.
      num_epochs: passes over the windows, or None to repeat forever.
      process_index: this process's shard, default `jax.process_index()`.
      process_count: number of shards, default `jax.process_count()`.
      prefetch: batches read ahead in background threads (0 reads on demand).
      actions: optional per-video actions, ``actions[i]`` a float ``(T, A)`` array for
        ``videos[i]`` (an ``(N, T, A)`` array is one). With them every batch is a pair
        ``(frames, actions)``, the actions ``(batch_size, seq_len, A)`` float32 of the
        same windows.

    `state()` returns the position as a JSON-serialisable dict; `restore(state)` on a
    pipeline built with the same arguments continues exactly where it was saved.

    Examples:
      >>> videos = np.zeros((4, 10, 64, 64, 1), np.uint8)
      >>> pipe = VideoPipeline(videos, seq_len=5, batch_size=2, num_epochs=1,
      ...                      process_index=0, process_count=1, prefetch=0)
      >>> [b.shape for b in pipe]  # 8 windows, 4 batches
      [(2, 5, 64, 64, 1), (2, 5, 64, 64, 1), (2, 5, 64, 64, 1), (2, 5, 64, 64, 1)]
    """

    def __init__(
        self,
        videos: VideoSource,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        actions: Any = None,
    ):
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        _checks.integer("process_count", self.process_count)
        if not 0 <= _checks.integer("process_index", self.process_index, 0) < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, {self.process_count})")
        _checks.integer("seq_len", seq_len)
        _checks.integer("batch_size", batch_size)
        _checks.integer("seed", seed, 0)
        _checks.integer("prefetch", prefetch, 0)
        _checks.flag("shuffle", shuffle)
        if num_epochs is not None:
            _checks.integer("num_epochs", num_epochs, 0)
        if len(videos) == 0:
            raise ValueError("no videos")
        first = videos[0]
        if first.dtype != np.uint8 or first.ndim != 4:
            raise TypeError(f"videos must be uint8 (T, H, W, C); got {first.dtype} {first.shape}")
        lengths = getattr(videos, "lengths", None)
        self.lengths = np.full(len(videos), first.shape[0], np.int64) if lengths is None else (
            np.asarray(lengths, np.int64))
        if self.lengths.shape != (len(videos),) or self.lengths[0] != first.shape[0]:
            raise ValueError(f"videos.lengths must give one length per video ({len(videos)}) "
                             f"and match video 0's {first.shape[0]} frames")
        if actions is not None:
            if len(actions) != len(videos):
                raise ValueError(f"actions are given for {len(actions)} videos, but there are {len(videos)}")
            a0 = np.asarray(actions[0])
            if a0.ndim != 2 or a0.shape[0] != first.shape[0] or not np.issubdtype(a0.dtype, np.floating):
                raise ValueError(f"actions[i] must be float (T, A) with T = {first.shape[0]} frames "
                                 f"like video 0; got {a0.dtype} {a0.shape}")
        self.videos = videos
        self.actions = actions
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.frame_shape: tuple[int, ...] = tuple(first.shape[1:])
        self.windows_per_video = self.lengths // seq_len
        self._first_window = np.concatenate([[0], np.cumsum(self.windows_per_video)])
        self.num_windows = int(self._first_window[-1])
        self.skipped = int(np.sum(self.windows_per_video == 0))  # shorter than a window
        if self.skipped:
            _log.warning("%d of %d videos are shorter than seq_len=%d frames and give no window",
                         self.skipped, len(videos), seq_len)
        self.global_batch_size = batch_size * self.process_count
        self.steps_per_epoch = self.num_windows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(videos)} videos of {_describe(self.lengths)} frames give {self.num_windows} "
                f"windows of {seq_len}, fewer than one global batch of {self.global_batch_size}"
            )
        self._epoch = 0
        self._step = 0
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(prefetch, thread_name_prefix="VideoPipeline")
            if prefetch
            else None
        )
        self._prefetch = prefetch
        self._pending: collections.deque[_Pending] = collections.deque()

    # Pure access: batches as functions of their position.

    def window_order(self, epoch: int) -> np.ndarray:
        """Window ids `(num_windows,)` int64 in the order epoch `epoch` visits them."""
        with self._orders_lock:
            order = self._orders.get(epoch)
            if order is None:
                if self.shuffle:
                    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
                else:
                    order = np.arange(self.num_windows)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return order

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """Window ids `(batch_size,)` that this process reads at `(epoch, step)`."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} not in [0, {self.steps_per_epoch})")
        begin = (step * self.process_count + self.process_index) * self.batch_size
        return self.window_order(epoch)[begin : begin + self.batch_size]

    def locate(self, windows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(video ids, window slots)`` of windows by id: window ``w`` is frames
        ``[slot * seq_len, (slot + 1) * seq_len)`` of its video."""
        windows = np.asarray(windows, np.int64)
        video_ids = np.searchsorted(self._first_window, windows, side="right") - 1
        return video_ids, windows - self._first_window[video_ids]

    def read_windows(self, windows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Reads windows by id: `(len(windows), seq_len, H, W, C)` uint8."""
        video_ids, slots = self.locate(windows)
        loaded: dict[int, np.ndarray] = {}  # a video read once serves all its windows
        out = np.empty((len(video_ids), self.seq_len, *self.frame_shape), np.uint8)
        for j, (v, slot) in enumerate(zip(video_ids.tolist(), slots.tolist(), strict=True)):
            video = loaded.get(v)
            if video is None:
                video = loaded[v] = self.videos[v]
            if video.shape != (self.lengths[v], *self.frame_shape):
                raise ValueError(
                    f"video {v} has shape {video.shape}; the pipeline expected "
                    f"{(int(self.lengths[v]), *self.frame_shape)} (its length; video 0's frames)"
                )
            out[j] = video[slot * self.seq_len : (slot + 1) * self.seq_len]
        return out

    def read_actions(self, windows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The actions of windows by id: `(len(windows), seq_len, A)` float32."""
        if self.actions is None:
            raise ValueError("this pipeline was built without actions")
        video_ids, slots = self.locate(windows)
        rows = []
        for v, slot in zip(video_ids.tolist(), slots.tolist(), strict=True):
            a = np.asarray(self.actions[v], np.float32)
            if a.shape[0] != self.lengths[v]:
                raise ValueError(f"actions[{v}] has {a.shape[0]} steps; video {v} has {self.lengths[v]} frames")
            rows.append(a[slot * self.seq_len : (slot + 1) * self.seq_len])
        return np.stack(rows)

    def batch_at(self, epoch: int, step: int) -> Batch:
        """This process's batch at `(epoch, step)`: `(batch_size, seq_len, H, W, C)` uint8,
        or with actions the pair `(frames, actions)`."""
        windows = self.batch_windows(epoch, step)
        if self.actions is None:
            return self.read_windows(windows)
        return self.read_windows(windows), self.read_actions(windows)

    # Iteration and its state.

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        position = (self._epoch, self._step)
        if self._done(position):
            raise StopIteration
        if self._executor is None:
            batch = self.batch_at(*position)
        else:
            self._schedule()
            batch = self._pending.popleft()[1].result()
        self._epoch, self._step = self._after(position)
        return batch

    def state(self) -> PipelineState:
        """The position of the next batch plus the settings it is only valid for."""
        return {"epoch": self._epoch, "step": self._step, **self._fingerprint()}

    def restore(self, state: PipelineState) -> None:
        """Continues from `state()` of a pipeline with the same videos and settings.

        Raises:
          ValueError: if `state` came from a pipeline with other settings.
        """
        mine = self._fingerprint()
        names = (set(mine) | set(state)) - {"epoch", "step"}
        mismatched = {k: (state.get(k), mine.get(k)) for k in sorted(names) if state.get(k) != mine.get(k)}
        if mismatched:
            raise ValueError(
                f"state is for other pipeline settings, (saved, current): {mismatched}"
            )
        self._cancel()
        self._epoch, self._step = int(state["epoch"]), int(state["step"])

    def close(self) -> None:
        """Stops the background threads."""
        self._cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> VideoPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fingerprint(self) -> PipelineState:
        return {
            "seed": self.seed,
            "shuffle": int(self.shuffle),
            "seq_len": self.seq_len,
            "num_windows": self.num_windows,
            "global_batch_size": self.global_batch_size,
            **({} if self.actions is None else {"actions": 1}),
        }

    def _done(self, position: tuple[int, int]) -> bool:
        return self.num_epochs is not None and position[0] >= self.num_epochs

    def _after(self, position: tuple[int, int]) -> tuple[int, int]:
        epoch, step = position
        return (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)

    def _schedule(self) -> None:
        assert self._executor is not None
        position = self._after(self._pending[-1][0]) if self._pending else (self._epoch, self._step)
        while len(self._pending) < self._prefetch and not self._done(position):
            self._pending.append((position, self._executor.submit(self.batch_at, *position)))
            position = self._after(position)

    def _cancel(self) -> None:
        while self._pending:
            self._pending.popleft()[1].cancel()


def _describe(lengths: np.ndarray) -> str:
    low, high = int(lengths.min()), int(lengths.max())
    return str(low) if low == high else f"{low} to {high}"
