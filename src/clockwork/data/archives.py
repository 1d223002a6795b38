"""The published video archives: where they live, how to find their mp4s, how to decode them.

Each dataset is one zip of `.mp4` videos on archive.org. A `manual_dir` holds either the
zip itself (`<manual_dir>/<archive>.zip`) or its contents, extracted in place or into
`<manual_dir>/<archive>/` (see `find_archive`). Nothing here imports TensorFlow or needs
an ffmpeg binary: mp4s decode in-process with PyAV.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import shutil
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping

import numpy as np

FRAME_SHAPE = (64, 64)
_log = logging.getLogger(__name__)


class ArchiveNotFoundError(FileNotFoundError):
    """No copy of a dataset's archive in `manual_dir` and no download asked for."""


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """One published archive.

    Attributes:
      name: file stem of the zip, e.g. 'gqn_mazes' for `gqn_mazes.zip`.
      url: where the zip is served.
      split_dirs: tfds split name -> folder of that split's mp4s inside the zip.
      top_folder: folder that wraps the split folders inside the zip, or '' if none.
      channels: C of the decoded `(T, 64, 64, C)` frames (1: grayscale, 3: RGB).
    """

    name: str
    url: str
    split_dirs: Mapping[str, str]
    top_folder: str
    channels: int

    def missing_message(self, manual_dir: os.PathLike[str] | str) -> str:
        """What to tell a user whose `manual_dir` holds no copy of this archive."""
        prefix = f"{self.top_folder}/" if self.top_folder else ""
        folders = " and ".join(f"{prefix}{d}/" for d in self.split_dirs.values())
        return (
            f"No {self.name} videos found in {manual_dir}. Download {self.url} and put "
            f"{self.name}.zip, or the folders it extracts to ({folders}), in {manual_dir}; "
            "or ask for the download: load_split(..., download=True) or "
            "tfds.builder(..., allow_download=True)."
        )


MOVING_MNIST = ArchiveSpec(
    name="moving_mnist_2digit",
    url="https://archive.org/download/moving_mnist/moving_mnist_2digit.zip",
    split_dirs={"train": "train-seq100", "test": "test-seq1000"},
    top_folder="",
    channels=1,
)
GQN_MAZES = ArchiveSpec(
    name="gqn_mazes",
    url="https://archive.org/download/gqn_mazes/gqn_mazes.zip",
    split_dirs={"train": "train", "test": "test"},
    top_folder="",
    channels=3,
)
MINERL_NAVIGATE = ArchiveSpec(
    name="minerl_navigate",
    url="https://archive.org/download/minerl_navigate/minerl_navigate.zip",
    split_dirs={"train": "train", "test": "test"},
    top_folder="minerl_navigate",
    channels=3,
)


class VideoArchive:
    """Read access to the mp4s of one archive, zipped or extracted.

    Args:
      spec: the archive.
      zip_path: the zip, or None when reading extracted folders.
      split_folders: split name -> extracted folder (used when `zip_path` is None).
    """

    def __init__(
        self,
        spec: ArchiveSpec,
        zip_path: pathlib.Path | None = None,
        split_folders: Mapping[str, pathlib.Path] | None = None,
    ):
        self.spec = spec
        self.zip_path = zip_path
        self.split_folders = dict(split_folders or {})

    def __repr__(self) -> str:
        where = self.zip_path or self.split_folders
        return f"VideoArchive({self.spec.name!r}, {where})"

    def videos(self, split: str) -> list[str]:
        """Sorted names of one split's mp4s: zip member names or paths of files.

        Raises:
          FileNotFoundError: if the split holds no mp4.
        """
        if self.zip_path is not None:
            with zipfile.ZipFile(self.zip_path) as zf:
                names = [n for n in zf.namelist() if _zip_member_split(n, self.spec) == split]
        else:
            names = [str(p) for p in self.split_folders[split].glob("*.mp4")]
        if not names:
            raise FileNotFoundError(
                f"{self} holds no .mp4 videos for split {split!r} "
                f"(expected them in {self.spec.split_dirs[split]}/)."
            )
        return sorted(names)

    def read(self, names: list[str]) -> Iterator[bytes]:
        """Yields the bytes of the named mp4s (names from `videos`), in order.

        Raises:
          ValueError: a member or file cannot be read (a damaged zip entry fails its
            CRC check); the message names the archive and the member.
        """
        if self.zip_path is None:
            for name in names:
                try:
                    data = pathlib.Path(name).read_bytes()
                except OSError as e:
                    raise ValueError(f"{self}: cannot read {name}: {e.strerror or e}") from e
                yield data
            return
        try:
            zf = zipfile.ZipFile(self.zip_path)
        except (OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.zip_path} is not a readable zip file: {e}") from e
        with zf:
            for name in names:
                try:
                    data = zf.read(name)
                except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
                    raise ValueError(f"{self.zip_path}: member {name} cannot be read: "
                                     f"{e}") from e
                yield data


def _zip_member_split(member: str, spec: ArchiveSpec) -> str | None:
    """The split of a zip member `[<archive>/]<split folder>/<video>.mp4`, else None."""
    parts = member.split("/")
    if not member.endswith(".mp4") or parts[-1].startswith("."):
        return None
    if len(parts) == 3 and parts[0] not in (spec.name, spec.top_folder):
        return None
    if len(parts) not in (2, 3):
        return None
    for split, folder in spec.split_dirs.items():
        if parts[-2] == folder:
            return split
    return None


def find_archive(spec: ArchiveSpec, manual_dir: pathlib.Path) -> VideoArchive | None:
    """Finds the archive in `manual_dir`: the zip first, then extracted folders; or None.

    The zip's contents may be extracted in place or into `<manual_dir>/<archive>/`, so
    the split folders are looked up under `<manual_dir>/[<archive>/][<top folder>/]`.
    Bare split folders (`<manual_dir>/train/`) count only for zips without a top folder,
    so that one dataset never reads another's. Every split must be in the same place.
    """
    zip_path = manual_dir / f"{spec.name}.zip"
    if zip_path.is_file():
        return VideoArchive(spec, zip_path=zip_path)
    named = manual_dir / spec.name
    if spec.top_folder:
        roots = [manual_dir / spec.top_folder, named / spec.top_folder, named]
    else:
        roots = [manual_dir, named, named / spec.name]
    for root in dict.fromkeys(roots):
        folders = {split: root / d for split, d in spec.split_dirs.items()}
        if all(f.is_dir() for f in folders.values()):
            return VideoArchive(spec, split_folders=folders)
    return None


def download(spec: ArchiveSpec, manual_dir: pathlib.Path, timeout_s: float = 60.0) -> pathlib.Path:
    """Downloads the zip to `<manual_dir>/<archive>.zip`, once, with no retries.

    The bytes go to a `.part` file that is renamed only when complete, so an interrupted
    download is never mistaken for the archive.
    """
    manual_dir.mkdir(parents=True, exist_ok=True)
    target = manual_dir / f"{spec.name}.zip"
    partial = target.with_suffix(".zip.part")
    _log.info("Downloading %s to %s", spec.url, target)
    try:
        with (
            urllib.request.urlopen(spec.url, timeout=timeout_s) as response,
            open(partial, "wb") as f,
        ):
            shutil.copyfileobj(response, f, length=1 << 22)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise OSError(
            f"Downloading {spec.url} failed: {e}. {spec.missing_message(manual_dir)}"
        ) from e
    partial.replace(target)
    _log.info("Downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def decode_mp4(data: bytes, channels: int) -> np.ndarray:
    """Decodes an mp4 in-process with PyAV: `(T, 64, 64, channels)` uint8.

    Args:
      data: the file's bytes.
      channels: 1 decodes luma as grayscale, 3 decodes RGB.

    Raises:
      ValueError: if the bytes are not a video, its frames are not 64x64 or it has no
        frames.
    """
    import av  # pip install av: its wheels ship the ffmpeg libraries

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    pixel_format = "gray" if channels == 1 else "rgb24"
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("the file holds no video stream")
            frames = [f.to_ndarray(format=pixel_format) for f in container.decode(video=0)]
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode it as a video ({e})") from e
    if not frames:
        raise ValueError("the video has no frames")
    video = np.stack(frames)
    if video.shape[1:3] != FRAME_SHAPE:
        raise ValueError(f"frames are {video.shape[1]}x{video.shape[2]}, expected 64x64")
    return video.reshape(*video.shape[:3], channels)
