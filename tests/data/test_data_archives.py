"""Finding mp4s in zips and folders, and decoding them with PyAV."""

import zipfile

import numpy as np
import pytest

from clockwork.data import archives


def test_zip_members_are_matched_by_split_folder(tmp_path):
    names = [
        "train-seq100/b.mp4",
        "train-seq100/a.mp4",
        "moving_mnist_2digit/test-seq1000/c.mp4",
        "__MACOSX/train-seq100/._a.mp4",
        "train-seq100/._d.mp4",
        "train-seq100/notes.txt",
        "other/train-seq100/e.mp4",
        "x/y/train-seq100/f.mp4",
    ]
    path = tmp_path / "moving_mnist_2digit.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, name.encode())
    archive = archives.find_archive(archives.MOVING_MNIST, tmp_path)
    assert archive is not None and archive.zip_path == path
    assert archive.videos("train") == ["train-seq100/a.mp4", "train-seq100/b.mp4"]
    assert archive.videos("test") == ["moving_mnist_2digit/test-seq1000/c.mp4"]
    assert list(archive.read(archive.videos("train"))) == [
        b"train-seq100/a.mp4",
        b"train-seq100/b.mp4",
    ]


@pytest.mark.parametrize(
    ("spec", "relative", "found"),
    [
        (archives.GQN_MAZES, ".", True),  # zip extracted in place
        (archives.GQN_MAZES, "gqn_mazes", True),
        (archives.GQN_MAZES, "gqn_mazes/gqn_mazes", True),
        (archives.GQN_MAZES, "elsewhere", False),
        (archives.MINERL_NAVIGATE, "minerl_navigate", True),  # in place: the zip's top folder
        (archives.MINERL_NAVIGATE, "minerl_navigate/minerl_navigate", True),
        (archives.MINERL_NAVIGATE, ".", False),  # bare train/ test/ may be another dataset's
    ],
)
def test_extracted_folder_layouts(tmp_path, spec, relative, found):
    root = tmp_path / relative
    for folder in spec.split_dirs.values():
        (root / folder).mkdir(parents=True)
        (root / folder / "0.mp4").write_bytes(b"")
    archive = archives.find_archive(spec, tmp_path)
    assert (archive is not None) == found
    if found:
        assert archive.split_folders == {s: root / d for s, d in spec.split_dirs.items()}
        assert archive.videos("train") == [str(root / "train" / "0.mp4")]


def test_zip_is_preferred_over_folders(tmp_path):
    for folder in ("train", "test"):
        (tmp_path / folder).mkdir()
    with zipfile.ZipFile(tmp_path / "gqn_mazes.zip", "w") as zf:
        zf.writestr("train/0.mp4", b"")
    assert (
        archives.find_archive(archives.GQN_MAZES, tmp_path).zip_path == tmp_path / "gqn_mazes.zip"
    )
    assert archives.find_archive(archives.GQN_MAZES, tmp_path / "absent") is None


def test_decode_rgb_keeps_channel_order_and_frames(encode_mp4):
    # A smooth frame, red rising along rows, green along columns, blue constant, and the
    # frame index added to blue: yuv420p H.264 at the encoder's default quality.
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    frames = np.stack(
        [np.stack([rows * 3, cols * 3, np.full_like(rows, 40 + 8 * t)], axis=-1) for t in range(8)]
    )
    video = frames.astype(np.uint8)
    decoded = archives.decode_mp4(encode_mp4(video, "yuv420p", crf=18), channels=3)
    assert decoded.shape == (8, 64, 64, 3) and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.int16) - video.astype(np.int16))
    assert error.mean() < 2.0
    np.testing.assert_allclose(decoded[..., 2].mean(axis=(1, 2)), 40 + 8 * np.arange(8), atol=2)


def test_decode_gray_and_errors(encode_mp4):
    video = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 1), dtype=np.uint8)
    decoded = archives.decode_mp4(encode_mp4(video, "yuv420p"), channels=1)
    assert decoded.shape == (5, 64, 64, 1)
    assert np.abs(decoded.astype(np.int16) - video.astype(np.int16)).max() <= 1
    with pytest.raises(ValueError, match="expected 64x64"):
        archives.decode_mp4(encode_mp4(np.zeros((2, 32, 32, 1), np.uint8), "yuv420p"), channels=1)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        archives.decode_mp4(b"", channels=2)
