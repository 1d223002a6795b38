"""Your own videos: `VideoFolder` over video files and arrays, through `VideoPipeline`."""

import logging
import zipfile

import numpy as np
import pytest

from clockwork.data import VideoFolder, VideoPipeline, VideoReadError, split_of, write_video


def square_video(frames: int, height: int = 32, width: int = 32, channels: int = 3, start: int = 0):
    """A white 8x8 square moving right one pixel per frame on black."""
    video = np.zeros((frames, height, width, channels), np.uint8)
    for t in range(frames):
        x = (start + t) % (width - 8)
        video[t, 8:16, x:x + 8] = 255
    return video


def labelled(lengths, size=(8, 8), channels=1):
    """Videos whose pixel (0, 0) is the video's id and pixel (0, 1) the frame's index."""
    out = []
    for v, n in enumerate(lengths):
        video = np.zeros((n, *size, channels), np.uint8)
        video[:, 0, 0] = v
        video[:, 0, 1] = np.arange(n)[:, None]
        out.append(video)
    return out


def pipeline(videos, **kw):
    return VideoPipeline(videos, **{"seq_len": 10, "batch_size": 2, "seed": 0, "process_index": 0,
                                    "process_count": 1, "prefetch": 0, **kw})


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".gif"])
def test_own_video_files_decode_to_their_frames(tmp_path, suffix):
    clip = square_video(12, 32, 48)
    write_video(tmp_path / f"clip{suffix}", clip)
    folder = VideoFolder(tmp_path)
    assert (len(folder), folder.lengths, folder.frame_shape, folder.names) == (
        1, (12,), (32, 48, 3), (f"clip{suffix}",))
    video = folder[0]
    assert video.shape == (12, 32, 48, 3) and video.dtype == np.uint8
    # Lossy codecs: close to the frames written, and the square is where it was drawn.
    error = np.abs(video.astype(int) - clip.astype(int))
    assert error.mean() < 8
    columns = video[..., 0].astype(float).sum(axis=1)  # (T, W)
    centre = (columns * np.arange(48)).sum(axis=1) / columns.sum(axis=1)
    np.testing.assert_allclose(centre, np.arange(12) + 3.5, atol=1.0)
    gray = VideoFolder(tmp_path, channels=1)[0]
    assert gray.shape == (12, 32, 48, 1) and abs(int(gray[0, 12, 4, 0]) - 255) < 12


def test_own_video_arrays_npy_npz_memory_mapped_or_in_memory(tmp_path):
    many = np.stack(labelled([6, 6, 6]))
    np.save(tmp_path / "a.npy", many)  # (N, T, H, W, C): three videos
    one = labelled([9])[0]
    np.savez(tmp_path / "b.npz", first=one, second=one[:5])
    np.savez_compressed(tmp_path / "c.npz", videos=many[:2])
    folder = VideoFolder(tmp_path, channels=1)
    assert folder.names == ("a.npy#0", "a.npy#1", "a.npy#2", "b.npz:first", "b.npz:second",
                            "c.npz:videos#0", "c.npz:videos#1")
    assert folder.lengths == (6, 6, 6, 9, 5, 6, 6)
    for i, expected in enumerate([*many, one, one[:5], *many[:2]]):
        np.testing.assert_array_equal(folder[i], expected)
    # .npy and stored .npz members are memory-mapped; compressed members are in memory.
    assert isinstance(folder._videos[0].array, np.memmap)
    assert isinstance(folder._videos[3].array, np.memmap)
    assert not isinstance(folder._videos[5].array, np.memmap)


def test_own_video_resize_is_an_area_filter(tmp_path):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 64, 96, 1), np.uint8)
    np.save(tmp_path / "v.npy", video)
    small = VideoFolder(tmp_path, channels=1, frame_size=(32, 48))[0]
    # Halving each side averages 2x2 blocks (NumPy reference), up to rounding.
    blocks = video.reshape(3, 32, 2, 48, 2, 1).astype(float).mean(axis=(2, 4))
    assert small.shape == (3, 32, 48, 1)
    assert np.abs(small - blocks).max() <= 1.0
    # Video files go through the same filter while decoding.
    (tmp_path / "files").mkdir()
    write_video(tmp_path / "files" / "clip.mp4", square_video(4, 64, 64))
    folder = VideoFolder(tmp_path / "files", frame_size=(32, 32))
    assert folder.frame_shape == (32, 32, 3) and folder[0].shape == (4, 32, 32, 3)
    decoded = VideoFolder(tmp_path / "files")[0].astype(float)
    assert np.abs(folder[0] - decoded.reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4))).max() <= 4.0  # resized in YUV


def test_own_video_split_is_a_function_of_the_name(tmp_path):
    for i in range(40):
        np.save(tmp_path / f"v{i:02d}.npy", labelled([4])[0])
    train = VideoFolder(tmp_path, "train", test_fraction=0.25, channels=1)
    test = VideoFolder(tmp_path, "test", test_fraction=0.25, channels=1)
    assert sorted(train.names + test.names) == [f"v{i:02d}.npy" for i in range(40)]
    assert set(test.names) == {n for n in train.names + test.names if split_of(n, 0.25) == "test"}
    assert 4 <= len(test) <= 18  # about a quarter
    # Adding videos moves none of the old ones.
    for i in range(40, 60):
        np.save(tmp_path / f"v{i:02d}.npy", labelled([4])[0])
    grown = VideoFolder(tmp_path, "test", test_fraction=0.25, channels=1)
    assert set(test.names) <= set(grown.names)
    with pytest.raises(ValueError, match=r"the test split of .* is empty: none of its 60 videos"):
        VideoFolder(tmp_path, "test", test_fraction=0.0, channels=1)


def test_own_video_lengths_windows_never_cross_a_video_end(tmp_path, caplog):
    for i, video in enumerate(labelled([25, 7, 40, 10])):
        np.save(tmp_path / f"v{i}.npy", video)
    folder = VideoFolder(tmp_path, channels=1)
    with caplog.at_level(logging.WARNING):
        pipe = pipeline(folder, shuffle=False, num_epochs=1, batch_size=1)
    assert "1 of 4 videos are shorter than seq_len=10" in caplog.text
    assert pipe.skipped == 1 and pipe.num_windows == 2 + 0 + 4 + 1
    windows = [(int(b[0, 0, 0, 0, 0]), b[0, :, 0, 1, 0].tolist()) for b in pipe]
    assert windows == [(0, list(range(0, 10))), (0, list(range(10, 20))),
                       *[(2, list(range(s, s + 10))) for s in range(0, 40, 10)],
                       (3, list(range(10)))]


def test_own_video_folder_pipeline_resumes_exactly_and_shards(tmp_path):
    for i, video in enumerate(labelled([30, 20, 50, 40])):
        np.save(tmp_path / f"v{i}.npy", video)
    folder = VideoFolder(tmp_path, channels=1)

    def ids(batch):
        return [(int(w[0, 0, 0, 0]), int(w[0, 0, 1, 0])) for w in batch]

    whole = pipeline(folder, prefetch=2)
    expected = [ids(next(whole)) for _ in range(12)]  # 14 windows, 7 per epoch: 2 epochs
    first = pipeline(folder, prefetch=2)
    head = [ids(next(first)) for _ in range(5)]
    state = first.state()
    first.close()
    resumed = pipeline(folder, prefetch=2)  # a new process after a kill
    resumed.restore(state)
    assert head + [ids(next(resumed)) for _ in range(7)] == expected
    # Two hosts read disjoint halves of each global batch.
    hosts = [pipeline(folder, batch_size=1, process_index=p, process_count=2) for p in (0, 1)]
    for step in range(7):
        a, b = (ids(h.batch_at(0, step)) for h in hosts)
        assert sorted(a + b) == sorted(expected[step])
    whole.close(), resumed.close()


def test_own_video_cache_decodes_each_file_once(tmp_path, monkeypatch):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    videos.mkdir()
    write_video(videos / "a.mp4", square_video(6))
    write_video(videos / "b.gif", square_video(5))
    first = VideoFolder(videos, cache_dir=cache)
    frames = [first[i].copy() for i in range(2)]
    assert len(list(cache.glob("*.npy"))) == 2 and (cache / "index.json").exists()

    def no_decoding(self, path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(VideoFolder, "_decode", no_decoding)
    again = VideoFolder(videos, cache_dir=cache)
    assert again.lengths == (6, 5) and isinstance(again[0], np.memmap)
    for i in range(2):
        np.testing.assert_array_equal(again[i], frames[i])
    monkeypatch.undo()
    write_video(videos / "a.mp4", square_video(9))  # a changed file is decoded again
    assert VideoFolder(videos, cache_dir=cache).lengths == (9, 5)


def test_own_video_bad_input_names_the_file(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here")
    with pytest.raises(FileNotFoundError, match=r"no video files .* under .*empty"):
        VideoFolder(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolder(tmp_path / "missing")

    def folder_with(name, writer):
        root = tmp_path / name.replace(".", "_")
        root.mkdir()
        np.save(root / "good.npy", labelled([4])[0])
        writer(root / name)
        return root

    cases = [
        ("broken.mp4", lambda p: p.write_bytes(b"\x00not a video" * 50), r"broken.mp4: cannot decode"),
        ("float.npy", lambda p: np.save(p, np.zeros((4, 8, 8, 1), np.float32)),
         r"float.npy: float32 of shape \(4, 8, 8, 1\); arrays must be uint8"),
        ("rank3.npy", lambda p: np.save(p, np.zeros((4, 8, 8), np.uint8)), r"rank3.npy: uint8 of shape"),
        ("rgb.npy", lambda p: np.save(p, np.zeros((4, 8, 8, 3), np.uint8)),
         r"rgb.npy: frames have 3 channel\(s\), but channels=1"),
        ("empty.npy", lambda p: np.save(p, np.zeros((0, 8, 8, 1), np.uint8)), r"empty.npy: no frames"),
        ("big.npy", lambda p: np.save(p, np.zeros((4, 16, 8, 1), np.uint8)),
         r"good.npy: frames are 8x8, but big.npy's are 16x8; pass frame_size"),
        ("cut.npz", lambda p: p.write_bytes(b"PK\x03\x04broken"), r"cut.npz: cannot read the array"),
    ]
    for name, writer, message in cases:
        root = folder_with(name, writer)
        with pytest.raises(VideoReadError, match=message):
            VideoFolder(root, channels=1)
    # With on_error='skip' unreadable files are left out, counted and named.
    root = tmp_path / "broken_mp4"
    with caplog.at_level(logging.WARNING):
        folder = VideoFolder(root, channels=1, on_error="skip")
    assert folder.names == ("good.npy",) and list(folder.skipped) == ["broken.mp4"]
    assert "skipped 1 unreadable file(s)" in caplog.text and "broken.mp4" in caplog.text
    for bad, message in [({"split": "val"}, "split must be"), ({"test_fraction": 1.5}, "test_fraction"),
                         ({"channels": 2}, "channels must be 1 or 3"),
                         ({"frame_size": (0, 8)}, "frame_size must be")]:
        with pytest.raises(ValueError, match=message):
            VideoFolder(root, **bad)
    assert zipfile.is_zipfile(tmp_path / "cut_npz" / "cut.npz") is False
