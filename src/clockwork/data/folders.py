"""Your own videos: a folder of video files or NumPy arrays as a `VideoSource`
(docs/own_videos.md).

`VideoFolder(root, split)` finds, under `root` and its subfolders (sorted by path,
hidden files skipped):

- video files (`.mp4`, `.webm`, `.avi`, `.gif`, `.mov`, `.mkv`), decoded with PyAV
  (the `data` extra): one video each;
- `.npy` files and the members of `.npz` files holding uint8 `(T, H, W, C)` (one
  video) or `(N, T, H, W, C)` (N videos of T frames). `.npy` files and the members of
  uncompressed `.npz` files (`np.savez`) are memory-mapped; members of compressed ones
  (`np.savez_compressed`) are read into memory when the folder is opened.

Videos may have different lengths (`lengths`); `VideoPipeline` cuts each into windows
that never cross its end. The split is a pure function of each video's name (a hash of
its path, member and index; see `split_of`), so it is the same on every machine and a
video keeps its split when others are added. With `frame_size` every frame is resized
with an area filter (anti-aliased: each output pixel averages the input pixels it
covers); without it every video must have the first one's frame size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import struct
import zipfile
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from clockwork import _checks

_log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".gif", ".mov", ".mkv")
ARRAY_SUFFIXES = (".npy", ".npz")
SPLITS = ("train", "test")
_INDEX = "index.json"
_INDEX_VERSION = 1


class VideoReadError(ValueError):
    """A file (or an array member) of a video folder cannot be used; the message names it."""


def split_of(name: str, test_fraction: float) -> str:
    """``'test'`` for a fixed ``test_fraction`` of names, else ``'train'``.

    The name's SHA-256 read as a number in [0, 1) decides, so the split does not depend
    on the order or number of videos.

    Examples:
      >>> split_of("clips/a.mp4", 0.5), split_of("clips/a.mp4", 0.0)
      ('train', 'train')
    """
    _checks.number("test_fraction", test_fraction, low=0.0, high=1.0)
    digest = hashlib.sha256(name.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction else "train"


class VideoFolder:
    """The videos of a folder (video files, `.npy` and `.npz` arrays) as a `VideoSource`.

    Args:
      root: the folder; searched recursively.
      split: ``'train'`` or ``'test'`` (see `split_of`), or ``None`` for every video.
      test_fraction: share of videos in the test split, in [0, 1].
      channels: 3 decodes video files as RGB, 1 as grayscale; arrays must have this
        many channels.
      frame_size: ``(H, W)`` to resize every frame to (area filter), or ``None`` to keep
        the stored size, which must then be the same for every video.
      cache_dir: if given, every decoded (and resized) video is stored there as an
        ``.npy`` file once and memory-mapped afterwards, with an index of lengths and
        sizes that is reused while each file's size and modification time stay the
        same. Without it, video files are decoded again on every read.
      on_error: ``'raise'`` stops at the first unreadable file or member, naming it;
        ``'skip'`` leaves such videos out and logs how many and which (`skipped`).

    Attributes:
      names: one per video, ``path`` relative to ``root`` (``path:member`` for an
        ``.npz`` member, ``...#i`` for video ``i`` of a 5-d array).
      lengths: frames per video.
      frame_shape: ``(H, W, C)`` of every frame.
      skipped: ``{name: reason}`` of the videos left out with ``on_error='skip'``.

    Raises:
      FileNotFoundError: ``root`` is not a folder, or holds no video file or array.
      VideoReadError: a file or member is unreadable, has no frames, the wrong dtype,
        rank or channels, or a frame size unlike the first video's without
        ``frame_size`` (naming the file and what was expected).
      ValueError: a bad argument, or an empty split.

    Examples:
      >>> import tempfile
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> np.save(root / "clips.npy", np.zeros((3, 12, 32, 32, 1), np.uint8))
      >>> folder = VideoFolder(root, channels=1)
      >>> len(folder), folder.lengths, folder.frame_shape, folder.names[2]
      (3, (12, 12, 12), (32, 32, 1), 'clips.npy#2')
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        test_fraction: float = 0.1,
        channels: int = 3,
        frame_size: tuple[int, int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ):
        self.root = pathlib.Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        _checks.number("test_fraction", test_fraction, low=0.0, high=1.0)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if frame_size is not None:
            if (not isinstance(frame_size, (tuple, list)) or len(frame_size) != 2 or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in frame_size)):
                raise ValueError(f"frame_size must be (height, width) positive integers or None, "
                                 f"got {frame_size!r}")
            frame_size = (int(frame_size[0]), int(frame_size[1]))
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist or is not a folder")
        self.split, self.test_fraction = split, float(test_fraction)
        self.channels, self.frame_size, self.on_error = channels, frame_size, on_error
        self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
        files = sorted(
            (p for p in self.root.rglob("*")
             if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + ARRAY_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(self.root).parts)),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not files:
            raise FileNotFoundError(
                f"no video files ({', '.join(VIDEO_SUFFIXES)}) or arrays "
                f"({', '.join(ARRAY_SUFFIXES)}) under {self.root}"
            )
        self.skipped: dict[str, str] = {}
        self._videos: list[_Video] = []
        cached = self._read_index()
        index: dict[str, Any] = {}
        for path in files:
            rel = path.relative_to(self.root).as_posix()
            try:
                videos, entry = self._open(path, rel, cached.get(rel))
            except VideoReadError as err:
                if on_error == "raise":
                    raise
                self.skipped[rel] = str(err)
                continue
            index[rel] = entry
            self._videos.extend(videos)
        self._write_index(index)
        if self.skipped:
            _log.warning("skipped %d unreadable file(s) under %s: %s", len(self.skipped), self.root,
                         "; ".join(self.skipped.values()))
        self._check_sizes()
        everything = len(self._videos)
        if split is not None:
            self._videos = [v for v in self._videos if split_of(v.name, self.test_fraction) == split]
        if not self._videos:
            raise ValueError(
                f"the {split} split of {self.root} is empty: none of its {everything} videos "
                f"falls in it with test_fraction={self.test_fraction}"
            )
        self.names: tuple[str, ...] = tuple(v.name for v in self._videos)
        self.lengths: tuple[int, ...] = tuple(v.length for v in self._videos)
        height, width = self.frame_size or self._videos[0].size
        self.frame_shape: tuple[int, int, int] = (height, width, channels)

    def __repr__(self) -> str:
        return (f"VideoFolder({str(self.root)!r}, split={self.split!r}, {len(self)} videos of "
                f"{min(self.lengths)}-{max(self.lengths)} frames, frame_shape={self.frame_shape})")

    def __len__(self) -> int:
        return len(self._videos)

    def __getitem__(self, index: int) -> np.ndarray:
        """Video ``index``: ``(lengths[index], H, W, C)`` uint8."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"video {index} not in [0, {len(self)})")
        video = self._videos[index]
        if video.cache is not None:
            return np.load(video.cache, mmap_mode="r")
        frames = self._decode(video.path) if video.array is None else self._array(video)
        if frames.shape[0] != video.length:
            raise VideoReadError(f"{video.name}: {frames.shape[0]} frames now, {video.length} when "
                                 f"the folder was opened; reopen the folder")
        return frames

    # Opening: each file gives videos and an index entry.

    def _open(self, path: pathlib.Path, rel: str, cached: dict[str, Any] | None) -> tuple[list[_Video], dict]:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if path.suffix.lower() in ARRAY_SUFFIXES:
            return self._open_arrays(path, rel), {"stamp": stamp}
        cache = None if self.cache_dir is None else self.cache_dir / (
            hashlib.sha256(f"{rel}|{stamp}|{self.channels}|{self.frame_size}".encode()).hexdigest()[:32]
            + ".npy")
        if cached is not None and cached.get("stamp") == stamp and (cache is None or cache.exists()):
            length, size = cached["length"], tuple(cached["size"])
        else:
            frames = self._decode(path)
            length, size = frames.shape[0], frames.shape[1:3]
            if cache is not None:
                _save_atomic(cache, frames)
        video = _Video(rel, path, length, size, cache=cache)
        return [video], {"stamp": stamp, "length": int(length), "size": list(size)}

    def _decode(self, path: pathlib.Path) -> np.ndarray:
        """All frames of a video file, ``(T, H, W, C)`` uint8, resized when asked."""
        import av  # the data extra: pip install 'clockwork-vae[data]'

        rel = path.relative_to(self.root).as_posix()
        fmt = "gray" if self.channels == 1 else "rgb24"
        frames = []
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoReadError(f"{rel}: no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if self.frame_size is not None:
                        frame = _area_filter(frame, self.frame_size, fmt)
                    frames.append(frame.to_ndarray(format=fmt))
        except VideoReadError:
            raise
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoReadError(f"{rel}: cannot decode the video: {err}") from err
        if not frames:
            raise VideoReadError(f"{rel}: the video has no frames")
        video = np.stack(frames)
        return video.reshape(*video.shape[:3], self.channels)

    def _open_arrays(self, path: pathlib.Path, rel: str) -> list[_Video]:
        members: list[tuple[str, np.ndarray]] = []
        try:
            if path.suffix.lower() == ".npy":
                members.append((rel, np.load(path, mmap_mode="r")))
            else:
                members.extend((f"{rel}:{member}", array) for member, array in _npz_members(path))
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise VideoReadError(f"{rel}: cannot read the array: {err}") from err
        videos = []
        for name, array in members:
            if array.dtype != np.uint8 or array.ndim not in (4, 5):
                raise VideoReadError(
                    f"{name}: {array.dtype} of shape {array.shape}; arrays must be uint8 "
                    f"(T, H, W, C) for one video or (N, T, H, W, C) for N videos"
                )
            if array.shape[-1] != self.channels:
                raise VideoReadError(f"{name}: frames have {array.shape[-1]} channel(s), but "
                                     f"channels={self.channels}")
            if array.shape[-4] == 0 or (array.ndim == 5 and array.shape[0] == 0):
                raise VideoReadError(f"{name}: no frames (shape {array.shape})")
            if array.ndim == 4:
                videos.append(_Video(name, path, array.shape[0], array.shape[1:3], array=array))
            else:
                videos.extend(_Video(f"{name}#{i}", path, array.shape[1], array.shape[2:4],
                                     array=array, row=i) for i in range(array.shape[0]))
        return videos

    def _array(self, video: _Video) -> np.ndarray:
        frames = video.array if video.row is None else video.array[video.row]
        if self.frame_size is None or tuple(frames.shape[1:3]) == self.frame_size:
            return frames
        return _resize(np.asarray(frames), self.frame_size)

    def _check_sizes(self) -> None:
        if self.frame_size is not None or not self._videos:
            return
        first = self._videos[0]
        for video in self._videos:
            if tuple(video.size) != tuple(first.size):
                raise VideoReadError(
                    f"{video.name}: frames are {video.size[0]}x{video.size[1]}, but "
                    f"{first.name}'s are {first.size[0]}x{first.size[1]}; pass frame_size=(H, W) "
                    f"to resize every video to one size"
                )

    # The index of decoded lengths and sizes, next to the cached videos.

    def _read_index(self) -> dict[str, Any]:
        if self.cache_dir is None or not (self.cache_dir / _INDEX).exists():
            return {}
        try:
            saved = json.loads((self.cache_dir / _INDEX).read_text())
        except (OSError, ValueError):
            _log.warning("ignoring the unreadable index %s", self.cache_dir / _INDEX)
            return {}
        same = saved.get("version") == _INDEX_VERSION and saved.get("settings") == self._settings()
        return saved.get("files", {}) if same else {}

    def _write_index(self, files: dict[str, Any]) -> None:
        if self.cache_dir is None:
            return
        text = json.dumps({"version": _INDEX_VERSION, "settings": self._settings(), "files": files})
        path = self.cache_dir / _INDEX
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        partial.replace(path)

    def _settings(self) -> dict[str, Any]:
        return {"root": str(self.root.resolve()), "channels": self.channels,
                "frame_size": None if self.frame_size is None else list(self.frame_size)}


class _Video:
    """One video of a folder: where its frames are and how many."""

    def __init__(self, name: str, path: pathlib.Path, length: int, size: Sequence[int], *,
                 array: np.ndarray | None = None, row: int | None = None,
                 cache: pathlib.Path | None = None):
        self.name, self.path, self.length, self.size = name, path, int(length), tuple(int(s) for s in size)
        self.array, self.row, self.cache = array, row, cache


def _resize(frames: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """``(T, h, w, C)`` uint8 -> ``(T, H, W, C)`` with the area filter of the video path."""
    import av

    channels = frames.shape[-1]
    fmt = "gray" if channels == 1 else "rgb24"
    out = np.empty((frames.shape[0], *frame_size, channels), np.uint8)
    for t, frame in enumerate(frames):
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., 0] if channels == 1 else frame),
                                           format=fmt)
        out[t] = _area_filter(image, frame_size, fmt).to_ndarray(format=fmt).reshape(*frame_size, channels)
    return out


def _area_filter(frame: Any, frame_size: tuple[int, int], fmt: str) -> Any:
    """A PyAV frame resized to ``(H, W)`` with swscale's area filter, in pixel format ``fmt``."""
    return frame.reformat(width=frame_size[1], height=frame_size[0], format=fmt, interpolation="AREA")


def _npz_members(path: pathlib.Path) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` of each member of an ``.npz``: stored members memory-mapped
    (read-only), compressed ones read into memory."""
    out = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    out.append((name, np.lib.format.read_array(member)))
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename} has a damaged header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            out.append((name, np.memmap(path, dtype, "r", f.tell(), shape, "F" if fortran else "C")))
    return out


def _save_atomic(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    partial.replace(path)


_CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"),
           ".mkv": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"),
           ".avi": ("mjpeg", "yuvj420p"), ".gif": ("gif", "rgb8")}


def write_video(path: str | os.PathLike[str], frames: np.ndarray, *, fps: int = 10) -> pathlib.Path:
    """Encodes ``frames`` ``(T, H, W, C)`` uint8 (C 1 or 3) as a video file with PyAV.

    The suffix picks the codec: ``.mp4``/``.mov``/``.mkv`` H.264, ``.webm`` VP9, ``.avi``
    Motion JPEG, ``.gif`` GIF. All are lossy: decoded frames differ from ``frames`` by
    a few levels. Even ``H`` and ``W`` suit every codec (4:2:0 chroma).

    Examples:
      >>> import tempfile
      >>> clip = np.zeros((5, 32, 32, 3), np.uint8)
      >>> write_video(pathlib.Path(tempfile.mkdtemp()) / "clip.mp4", clip).suffix
      '.mp4'
    """
    import av

    path = pathlib.Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3) or not len(frames):
        raise ValueError(f"frames must be uint8 (T, H, W, C) with T >= 1 and C 1 or 3, got "
                         f"{frames.dtype} {frames.shape}")
    if path.suffix.lower() not in _CODECS:
        raise ValueError(f"{path}: the suffix must be one of {sorted(_CODECS)}")
    codec, pix_fmt = _CODECS[path.suffix.lower()]
    rgb = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for image in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
