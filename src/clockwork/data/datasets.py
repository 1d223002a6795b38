"""Opening a prepared split by preset or builder name, preparing it on first use."""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

PRESETS: Mapping[str, str] = types.MappingProxyType(
    {"mmnist": "moving_mnist_2digit", "mazes": "gqn_mazes", "minerl": "clockwork_minerl_navigate"}
)
"""Preset name of the paper's configs -> tfds builder name."""


class TfdsVideos:
    """A prepared tfds split as a `VideoSource`: `videos[i]` is `(T, 64, 64, C)` uint8.

    Args:
      data_source: `builder.as_data_source(split)`; its records are `{'video': ...}`.
    """

    def __init__(self, data_source: Any):
        self.data_source = data_source

    def __repr__(self) -> str:
        return f"TfdsVideos({self.data_source!r})"

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.data_source[index]["video"]


def builder_name(name: str) -> str:
    """Resolves a preset ('mmnist', 'mazes', 'minerl', optionally '/<config>') to tfds."""
    base, sep, config = name.partition("/")
    return PRESETS.get(base, base) + sep + config


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manual_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    generate_if_missing: bool = False,
) -> TfdsVideos:
    """Opens one split of a dataset, preparing it first if it is not on disk yet.

    Args:
      name: a preset ('mmnist', 'mazes', 'minerl'), a builder name
        ('moving_mnist_2digit', 'gqn_mazes', 'clockwork_minerl_navigate') or either
        with a config ('mmnist/generated').
      split: 'train' or 'test'.
      data_dir: tfds data folder (default: `$TFDS_DATA_DIR` or ~/tensorflow_datasets).
      manual_dir: folder holding the archive, zipped or extracted (default:
        `<data_dir>/downloads/manual`).
      download: fetch the archive into `manual_dir` if it is not there.
      generate_if_missing: Moving MNIST only: with no archive found, use the
        'generated' config instead (rendered from shipped MNIST digits).

    Returns:
      The split's videos, read from `array_record` files.

    Raises:
      ArchiveNotFoundError (a FileNotFoundError): the dataset is not prepared, its
        archive is not in `manual_dir` and `download` is False; the message names the
        archive URL and the folder.
    """
    import tensorflow_datasets as tfds

    from clockwork.data import archives, builders  # importing registers the builders

    resolved = builder_name(name)
    if generate_if_missing and not resolved.startswith(builders.MovingMnist2digit.name):
        raise ValueError(f"generate_if_missing applies to Moving MNIST only, not {name!r}")
    builder = tfds.builder(resolved, data_dir=data_dir, allow_download=download)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(download_config=config)
        except archives.ArchiveNotFoundError as e:
            if not generate_if_missing:
                raise
            _log.warning("%s Using generated Moving MNIST instead.", e)
            builder = tfds.builder(
                f"{builders.MovingMnist2digit.name}/generated", data_dir=data_dir
            )
            builder.download_and_prepare(download_config=config)
    return TfdsVideos(builder.as_data_source(split=split))
