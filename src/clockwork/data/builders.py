"""TFDS builders for the paper's three video datasets; importing this module registers them.

| builder                     | splits (frames per video)       | frames       |
|-----------------------------|---------------------------------|--------------|
| `moving_mnist_2digit`       | train (100), test (1000)        | 64x64x1      |
| `gqn_mazes`                 | train (300), test (300)         | 64x64x3      |
| `clockwork_minerl_navigate` | train (500), test (500)         | 64x64x3      |

Every example is `{'video': (T, 64, 64, C) uint8}`, a `tfds.features.Tensor` with bytes
encoding, written to `array_record` files: preparing and reading (`as_data_source()`)
need neither TensorFlow nor ffmpeg. The builders read the published zips from
`manual_dir` and download them only when built with `allow_download=True`.
`moving_mnist_2digit/generated` needs no archive: it renders Moving MNIST itself.

Version 2.0.0: the reference implementation's builders (version 1.0.0, `Video` feature,
TFRecord files) write a different directory, so neither reads the other's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import os
import pathlib
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from clockwork.data import archives, moving_mnist

VERSION = tfds.core.Version("2.0.0")
RELEASE_NOTES = {
    "2.0.0": "uint8 Tensor feature (bytes encoding) in array_record files, decoded with "
    "PyAV; the reference code's 1.0.0 (Video feature, TFRecord) is a different format.",
}
_CITATION = """@inproceedings{saxena2021clockwork,
  title={Clockwork Variational Autoencoders},
  author={Saxena, Vaibhav and Ba, Jimmy and Hafner, Danijar},
  booktitle={Advances in Neural Information Processing Systems},
  year={2021}
}"""
Example = tuple[int, dict[str, np.ndarray]]


def video_features(channels: int) -> tfds.features.FeaturesDict:
    """`{'video': (T, 64, 64, channels) uint8}` stored as raw bytes."""
    video = tfds.features.Tensor(shape=(None, 64, 64, channels), dtype=np.uint8, encoding="bytes")
    return tfds.features.FeaturesDict({"video": video})


def ordered_key(index: int, count: int) -> int:
    """Example key that keeps `index` order and spreads `count` keys over [0, 2**128).

    The builders disable tfds's shuffling, so examples are stored sorted by key: video
    `i` of a split is the i-th mp4 by name (or the i-th generated). A split over 1 GB is
    sorted in 1000 on-disk buckets by key range; spread keys keep each bucket small.
    """
    return (index << 128) // count


class _NeverRaised(Exception):
    pass


# The part of `tf` that tfds's shuffler uses for its on-disk buckets, on plain files.
_PLAIN_FILE_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(
        gfile=types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)
    ),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)


@contextlib.contextmanager
def _buckets_without_tensorflow() -> Iterator[None]:
    """Lets tfds spill a split over 1 GB to disk without TensorFlow installed.

    tfds keeps up to 1 GB of serialized examples per split in memory and writes the rest
    to 1000 bucket files through `tf.io.gfile`, which imports TensorFlow. Without
    TensorFlow, point the shuffler module at plain files (and allow the open files).
    """
    if importlib.util.find_spec("tensorflow") is not None:
        yield
        return
    import resource  # Unix only, like array_record

    from tensorflow_datasets.core import shuffle

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    saved_tf = shuffle.tf
    shuffle.tf = _PLAIN_FILE_TF
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        shuffle.tf = saved_tf
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    # The public `manual_dir` property raises when the folder is missing or empty; the
    # error we raise then must still name the folder.
    return pathlib.Path(dl_manager._manual_dir)


class _ArchiveBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds from a published zip of mp4s (see `archives`); abstract, not registered.

    Args:
      allow_download: fetch the zip into `manual_dir` when it holds no copy. Without it a
        missing archive raises `FileNotFoundError` at once (no network access).
      file_format: defaults to 'array_record', the only format that builds without
        TensorFlow.
      **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, `config`, `version`).
    """

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    ARCHIVE: ClassVar[archives.ArchiveSpec]

    def __init__(
        self, *, allow_download: bool = False, file_format: str | None = None, **kwargs: Any
    ):
        self.allow_download = allow_download
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__class__.__doc__,
            features=video_features(self.ARCHIVE.channels),
            homepage=self.ARCHIVE.url.rsplit("/", 1)[0].replace("/download/", "/details/"),
            citation=_CITATION,
            disable_shuffling=True,
        )

    def _download_and_prepare(
        self, dl_manager: tfds.download.DownloadManager, download_config: Any
    ) -> None:
        with _buckets_without_tensorflow():
            super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[Example]]:
        manual_dir = _manual_dir(dl_manager)
        archive = archives.find_archive(self.ARCHIVE, manual_dir)
        if archive is None and self.allow_download:
            archives.download(self.ARCHIVE, manual_dir)
            archive = archives.find_archive(self.ARCHIVE, manual_dir)
        if archive is None:
            raise archives.ArchiveNotFoundError(self.ARCHIVE.missing_message(manual_dir))
        # Listing every split first fails before anything is written if one is empty.
        names = {split: archive.videos(split) for split in self.ARCHIVE.split_dirs}
        return {split: self._generate_examples(archive, names[split]) for split in names}

    def _generate_examples(
        self, archive: archives.VideoArchive, names: list[str]
    ) -> Iterator[Example]:
        length = None  # every video of a split has the frame count of its first one
        for index, (name, data) in enumerate(zip(names, archive.read(names), strict=True)):
            try:
                video = archives.decode_mp4(data, self.ARCHIVE.channels)
            except ValueError as e:
                raise ValueError(f"{archive}: member {name}: {e}") from e
            if length is None:
                length = len(video)
            elif len(video) != length:
                raise ValueError(f"{archive}: member {name} has {len(video)} frames, but the "
                                 f"split's first video {names[0]} has {length}")
            yield ordered_key(index, len(names)), {"video": video}


def _instructions(spec: archives.ArchiveSpec) -> str:
    return (
        f"Download {spec.url} and put it, zipped or extracted, in the manual folder "
        "(by default <data_dir>/downloads/manual), or build with allow_download=True."
    )


@dataclasses.dataclass(eq=False)
class MovingMnistConfig(tfds.core.BuilderConfig):
    """A `moving_mnist_2digit` config: the published archive or generated videos.

    Attributes:
      generated: render videos with `generate_moving_mnist` instead of reading the zip.
      num_train: generated training videos (100 frames each).
      num_test: generated test videos (1000 frames each).
      seed: generator seed (train and test draw different digits and motions).
    """

    generated: bool = False
    num_train: int = 1000
    num_test: int = 100
    seed: int = 0


class MovingMnist2digit(_ArchiveBuilder):
    """Moving MNIST with two digits (Srivastava et al., 2015) as used by the CW-VAE paper.

    Configs: 'archive' (default) reads moving_mnist_2digit.zip; 'generated' renders
    1000 training and 100 test videos from the MNIST digits shipped with clockwork. Pass
    `config=MovingMnistConfig(name=..., generated=True, num_train=..., ...)` for other
    sizes (each config name gets its own folder).
    """

    name = "moving_mnist_2digit"
    ARCHIVE = archives.MOVING_MNIST
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(ARCHIVE)
    BUILDER_CONFIGS: ClassVar[list[MovingMnistConfig]] = [
        MovingMnistConfig(name="archive", description="Read from moving_mnist_2digit.zip."),
        MovingMnistConfig(name="generated", generated=True, description="Rendered by clockwork."),
    ]
    FRAMES: ClassVar[dict[str, int]] = {"train": 100, "test": 1000}

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[Example]]:
        config = self.builder_config
        if not config.generated:
            return super()._split_generators(dl_manager)
        counts = {"train": config.num_train, "test": config.num_test}
        return {split: self._generated_examples(split, counts[split]) for split in counts}

    def _generated_examples(self, split: str, num_videos: int) -> Iterator[Example]:
        chunks = moving_mnist.iter_moving_mnist(
            num_videos, self.FRAMES[split], self.builder_config.seed, digit_split=split
        )
        for index, video in enumerate(itertools.chain.from_iterable(chunks)):
            yield ordered_key(index, num_videos), {"video": video}


class GqnMazes(_ArchiveBuilder):
    """GQN Mazes: 300-frame walks through DeepMind Lab mazes, 64x64 RGB."""

    name = "gqn_mazes"
    ARCHIVE = archives.GQN_MAZES
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(ARCHIVE)


class ClockworkMinerlNavigate(_ArchiveBuilder):
    """MineRL Navigate: 500-frame Minecraft navigation episodes, 64x64 RGB.

    Registered as `clockwork_minerl_navigate` because the PyPI package `minerl-navigate`
    owns `minerl_navigate` (and imports TensorFlow); both read the same zip.
    """

    name = "clockwork_minerl_navigate"
    ARCHIVE = archives.MINERL_NAVIGATE
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(ARCHIVE)
