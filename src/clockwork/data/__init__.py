"""Datasets and input pipeline for the Clockwork VAE.

Videos are uint8 `(T, H, W, C)` on the host (64x64 in the paper's datasets) and float in
[0, 1] on the device.

- `load_split(name, split, ...)`: a prepared split of `moving_mnist_2digit`, `gqn_mazes`
  or `clockwork_minerl_navigate` (presets 'mmnist', 'mazes', 'minerl', see `PRESETS`),
  built offline from the published zip on first use.
- `generate_moving_mnist(num_videos, num_frames, seed)`: Moving MNIST in memory,
  `(N, T, 64, 64, 1)` uint8, from MNIST digits shipped with the package;
  `generate_pushed_mnist` gives videos with the actions that move their digit.
- `VideoFolder(root, split, ...)`: your own videos, a folder of video files (decoded
  with PyAV) or `.npy`/`.npz` arrays, of any frame size and of different lengths.
- `VideoPipeline(videos, seq_len=..., batch_size=..., actions=None)`: shuffled, sharded,
  resumable uint8 batches `(B, seq_len, 64, 64, C)` (with `actions`, pairs of frames and
  their actions); `to_float` maps them to [0, 1] on device.

The tfds builders (`clockwork.data.builders`) are registered on import when
`tensorflow_datasets` is installed (the `data` extra); the generator and the pipeline
need only NumPy and JAX.
"""

import importlib.util

from clockwork.data.archives import ArchiveNotFoundError
from clockwork.data.datasets import PRESETS, TfdsVideos, builder_name, load_split
from clockwork.data.folders import VideoFolder, VideoReadError, split_of, write_video
from clockwork.data.moving_mnist import (
    generate_moving_mnist,
    generate_pushed_mnist,
    iter_moving_mnist,
    mnist_digits,
    mnist_labels,
)
from clockwork._util import to_float
from clockwork.data.pipeline import Batch, PipelineState, VideoPipeline, VideoSource

if importlib.util.find_spec("tensorflow_datasets") is not None:
    from clockwork.data import builders  # noqa: F401  (registers the tfds builders)

__all__ = [
    "PRESETS",
    "ArchiveNotFoundError",
    "Batch",
    "PipelineState",
    "TfdsVideos",
    "VideoFolder",
    "VideoPipeline",
    "VideoReadError",
    "VideoSource",
    "builder_name",
    "generate_moving_mnist",
    "generate_pushed_mnist",
    "iter_moving_mnist",
    "load_split",
    "mnist_digits",
    "mnist_labels",
    "split_of",
    "to_float",
    "write_video",
]
