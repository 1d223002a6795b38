"""The tfds builders: offline builds from zips and folders, formats, errors, versions."""

import dataclasses
import json
import pathlib
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clockwork.data import (
    PRESETS,
    ArchiveNotFoundError,
    TfdsVideos,
    VideoPipeline,
    archives,
    builders,
    generate_moving_mnist,
    load_split,
)

FRAMES = {"train": 6, "test": 9}
COUNTS = {"train": 3, "test": 2}
BUILDERS = {
    "moving_mnist_2digit": archives.MOVING_MNIST,
    "gqn_mazes": archives.GQN_MAZES,
    "clockwork_minerl_navigate": archives.MINERL_NAVIGATE,
}


def prepare(
    name: str, data_dir: pathlib.Path, manual_dir: pathlib.Path, **kwargs
) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(name, data_dir=data_dir, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def check_round_trip(builder: tfds.core.DatasetBuilder, expected: dict[str, np.ndarray]) -> None:
    """Split sizes, shapes, dtype and pixel error after the H.264 round trip."""
    sources = builder.as_data_source()
    assert {split: len(source) for split, source in sources.items()} == COUNTS
    for split, videos in expected.items():
        for i, video in enumerate(videos):
            stored = sources[split][i]["video"]
            assert stored.dtype == np.uint8
            assert stored.shape == video.shape == (FRAMES[split], 64, 64, video.shape[-1])
            error = np.abs(stored.astype(np.int16) - video.astype(np.int16))
            assert error.max() <= 3, (split, i, error.max())  # lossless YUV: rounding only
            assert error.mean() < 1.0


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("layout", ["zip", "extracted_in_place", "extracted_in_named_folder"])
def test_builds_offline_from_zip_or_folder(name, layout, tmp_path, archive_writer):
    spec = BUILDERS[name]
    writer = archive_writer(spec, FRAMES, COUNTS)
    manual = tmp_path / "manual"
    if layout == "zip":
        writer.write_zip(manual)
    elif layout == "extracted_in_place":
        writer.write_folder(manual)
    else:
        writer.write_folder(manual / spec.name)
    builder = prepare(name, tmp_path / "data", manual)
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert builder.info.features["video"].shape == (None, 64, 64, spec.channels)
    assert builder.info.features["video"].np_dtype == np.uint8
    check_round_trip(builder, writer.videos)
    assert "tensorflow" not in sys.modules


def test_generated_config_stores_the_generator_output(tmp_path):
    config = builders.MovingMnistConfig(
        name="tiny", generated=True, num_train=3, num_test=2, seed=5
    )
    builder = tfds.builder("moving_mnist_2digit", config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    train = builder.as_data_source(split="train")
    test = builder.as_data_source(split="test")
    expected_train = generate_moving_mnist(3, 100, seed=5, digit_split="train")
    expected_test = generate_moving_mnist(2, 1000, seed=5, digit_split="test")
    np.testing.assert_array_equal(np.stack([train[i]["video"] for i in range(3)]), expected_train)
    np.testing.assert_array_equal(np.stack([test[i]["video"] for i in range(2)]), expected_test)


def test_missing_archive_fails_at_once_naming_url_and_folder(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the builder tried the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    manual = tmp_path / "manual"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        prepare("gqn_mazes", tmp_path / "data", manual)
    assert time.perf_counter() - start < 5
    assert isinstance(raised.value, ArchiveNotFoundError)
    message = str(raised.value)
    assert "https://archive.org/download/gqn_mazes/gqn_mazes.zip" in message
    assert str(manual) in message
    assert "download=True" in message


def test_missing_archive_default_manual_dir_is_named(tmp_path):
    with pytest.raises(ArchiveNotFoundError, match=r"minerl_navigate/minerl_navigate\.zip"):
        load_split("minerl", "train", data_dir=tmp_path)
    with pytest.raises(ArchiveNotFoundError) as raised:
        load_split("mmnist", "train", data_dir=tmp_path)
    assert "https://archive.org/download/moving_mnist/moving_mnist_2digit.zip" in str(raised.value)
    assert str(tmp_path / "downloads" / "manual") in str(raised.value)


def test_archive_missing_a_split_is_an_error(tmp_path, archive_writer):
    writer = archive_writer(archives.GQN_MAZES, FRAMES, COUNTS)
    writer.write_folder(tmp_path / "manual")
    for video in (tmp_path / "manual" / "test").iterdir():
        video.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.mp4 videos for split 'test'"):
        prepare("gqn_mazes", tmp_path / "data", tmp_path / "manual")


def test_download_only_when_asked(tmp_path, monkeypatch, archive_writer):
    writer = archive_writer(archives.GQN_MAZES, FRAMES, COUNTS)
    served = writer.write_zip(tmp_path / "server")
    spec = dataclasses.replace(archives.GQN_MAZES, url=served.as_uri())
    monkeypatch.setattr(builders.GqnMazes, "ARCHIVE", spec)
    manual = tmp_path / "manual"
    with pytest.raises(ArchiveNotFoundError):
        prepare("gqn_mazes", tmp_path / "data", manual)
    assert not (manual / "gqn_mazes.zip").exists()
    builder = prepare("gqn_mazes", tmp_path / "data", manual, allow_download=True)
    assert (manual / "gqn_mazes.zip").read_bytes() == served.read_bytes()
    check_round_trip(builder, writer.videos)


def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch):
    spec = dataclasses.replace(archives.GQN_MAZES, url=(tmp_path / "absent.zip").as_uri())
    monkeypatch.setattr(builders.GqnMazes, "ARCHIVE", spec)
    with pytest.raises(OSError, match=r"absent\.zip"):
        prepare("gqn_mazes", tmp_path / "data", tmp_path / "manual", allow_download=True)
    assert list((tmp_path / "manual").iterdir()) == []


def test_reference_format_directory_is_never_read(tmp_path, archive_writer):
    # The reference builders wrote version 1.0.0 (Video feature, TFRecord files).
    old = tmp_path / "data" / "gqn_mazes" / "1.0.0"
    old.mkdir(parents=True)
    (old / "dataset_info.json").write_text(json.dumps({"name": "gqn_mazes", "version": "1.0.0"}))
    builder = tfds.builder("gqn_mazes", data_dir=tmp_path / "data")
    assert builder.version == "2.0.0"
    assert not builder.is_prepared()
    with pytest.raises(AssertionError, match=r"cannot be loaded at version 1\.0\.0, only: 2\.0\.0"):
        tfds.builder("gqn_mazes", data_dir=tmp_path / "data", version="1.0.0")
    archive_writer(archives.GQN_MAZES, FRAMES, COUNTS).write_zip(tmp_path / "manual")
    builder = prepare("gqn_mazes", tmp_path / "data", tmp_path / "manual")
    assert pathlib.Path(builder.data_dir).name == "2.0.0"
    assert sorted(p.name for p in old.iterdir()) == ["dataset_info.json"]


def test_load_split_presets_and_pipeline_match_memory(tmp_path, archive_writer):
    assert dict(PRESETS) == {
        "mmnist": "moving_mnist_2digit",
        "mazes": "gqn_mazes",
        "minerl": "clockwork_minerl_navigate",
    }
    writer = archive_writer(archives.MINERL_NAVIGATE, FRAMES, COUNTS)
    writer.write_zip(tmp_path / "manual")
    videos = load_split(
        "minerl", "test", data_dir=tmp_path / "data", manual_dir=tmp_path / "manual"
    )
    assert isinstance(videos, TfdsVideos) and len(videos) == COUNTS["test"]
    in_memory = np.stack([videos[i] for i in range(len(videos))])
    kwargs = dict(seq_len=4, batch_size=2, seed=3, num_epochs=2, process_index=0, process_count=1)
    from_tfds = list(VideoPipeline(videos, **kwargs))
    from_memory = list(VideoPipeline(in_memory, **kwargs))
    assert len(from_tfds) == 4  # 2 videos x (9 // 4) windows = 2 batches per epoch, 2 epochs
    for a, b in zip(from_tfds, from_memory, strict=True):
        np.testing.assert_array_equal(a, b)


def test_generate_if_missing_falls_back_to_generated(tmp_path, monkeypatch):
    generated = builders.MovingMnist2digit.builder_configs["generated"]
    monkeypatch.setattr(generated, "num_train", 2)
    monkeypatch.setattr(generated, "num_test", 1)
    videos = load_split("mmnist", "train", data_dir=tmp_path, generate_if_missing=True)
    np.testing.assert_array_equal(
        np.stack([videos[0], videos[1]]), generate_moving_mnist(2, 100, seed=0)
    )
    with pytest.raises(ValueError, match="Moving MNIST only"):
        load_split("mazes", "train", data_dir=tmp_path, generate_if_missing=True)


def test_splits_over_the_memory_buffer_spill_to_disk_without_tensorflow(
    tmp_path, monkeypatch, archive_writer
):
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 10_000)  # tfds: 1 GB, then buckets on disk
    spilled = []
    add = shuffle._Bucket.add
    monkeypatch.setattr(
        shuffle._Bucket, "add", lambda self, key, data: spilled.append(key) or add(self, key, data)
    )
    lazy_tf = shuffle.tf
    config = builders.MovingMnistConfig(
        name="spill", generated=True, num_train=6, num_test=1, seed=2
    )
    builder = tfds.builder("moving_mnist_2digit", config=config, data_dir=tmp_path / "data")
    builder.download_and_prepare()
    train = builder.as_data_source(split="train")
    np.testing.assert_array_equal(
        np.stack([train[i]["video"] for i in range(6)]), generate_moving_mnist(6, 100, seed=2)
    )
    writer = archive_writer(archives.GQN_MAZES, FRAMES, COUNTS)
    writer.write_zip(tmp_path / "manual")
    check_round_trip(prepare("gqn_mazes", tmp_path / "data", tmp_path / "manual"), writer.videos)
    assert len(spilled) > 6
    assert shuffle.tf is lazy_tf and "tensorflow" not in sys.modules


def test_ordered_keys_keep_order_and_spread_over_buckets():
    from tensorflow_datasets.core import shuffle

    keys = [builders.ordered_key(i, 5000) for i in range(5000)]
    assert keys == sorted(set(keys)) and keys[0] == 0 and keys[-1] < 2**128
    buckets = [shuffle.get_bucket_number(k, shuffle.BUCKETS_NUMBER) for k in keys]
    assert buckets == sorted(buckets) and np.bincount(buckets).max() == 5


def _zip_with(tmp_path, archive_writer, change) -> pathlib.Path:
    """The mazes zip with ``change(members)`` applied to its ``{name: bytes}``."""
    import zipfile

    writer = archive_writer(archives.GQN_MAZES, FRAMES, COUNTS)
    members = writer.members()
    change(members)
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "gqn_mazes.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return manual


def test_a_video_of_the_wrong_length_names_the_archive_and_member(tmp_path, archive_writer, encode_mp4):
    def shorten(members):
        members["test/0001.mp4"] = encode_mp4(np.zeros((4, 64, 64, 3), np.uint8))

    manual = _zip_with(tmp_path, archive_writer, shorten)
    with pytest.raises(ValueError, match=r"gqn_mazes\.zip.*: member test/0001\.mp4 has 4 frames, "
                                         r"but the split's first video test/0000\.mp4 has 9"):
        prepare("gqn_mazes", tmp_path / "data", manual)


@pytest.mark.parametrize("bad,match", [
    (b"not a video at all", r"member test/0001\.mp4: cannot decode it as a video"),
    ("small", r"member test/0001\.mp4: frames are 32x32, expected 64x64"),
])
def test_an_undecodable_or_wrong_size_member_names_the_archive(tmp_path, archive_writer, encode_mp4,
                                                             bad, match):
    def damage(members):
        members["test/0001.mp4"] = (encode_mp4(np.zeros((9, 32, 32, 3), np.uint8))
                                    if bad == "small" else bad)

    manual = _zip_with(tmp_path, archive_writer, damage)
    with pytest.raises(ValueError, match=r"gqn_mazes\.zip.*" + match):
        prepare("gqn_mazes", tmp_path / "data", manual)


def test_a_damaged_zip_entry_names_the_member_and_leaves_no_dataset(tmp_path, archive_writer):
    """A byte flipped inside a stored member fails the zip's CRC check; the failed build
    leaves nothing that reads as a prepared dataset, and a repaired archive then builds."""
    import zipfile

    manual = _zip_with(tmp_path, archive_writer, lambda members: None)
    path = manual / "gqn_mazes.zip"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("test/0001.mp4")
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # inside its data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"gqn_mazes\.zip: member test/0001\.mp4 cannot be "
                                         r"read: Bad CRC-32"):
        prepare("gqn_mazes", tmp_path / "data", manual)
    assert not tfds.builder("gqn_mazes", data_dir=tmp_path / "data").is_prepared()
    with pytest.raises(ValueError, match="Bad CRC-32"):  # tried again, not read half-built
        load_split("gqn_mazes", "train", data_dir=tmp_path / "data", manual_dir=manual)
    path.unlink()
    archive_writer(archives.GQN_MAZES, FRAMES, COUNTS).write_zip(manual)
    assert len(load_split("gqn_mazes", "test", data_dir=tmp_path / "data", manual_dir=manual)) == 2
