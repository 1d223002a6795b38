"""Tiny mp4 archives written with PyAV, laid out like the published zips."""

import io
import pathlib
import zipfile

import av
import numpy as np
import pytest

from clockwork.data import archives


def encode_mp4(video: np.ndarray, pixel_format: str = "yuv444p", crf: int = 0) -> bytes:
    """H.264-encodes `(T, 64, 64, C)` uint8 (C = 1 or 3); crf 0 is lossless in YUV."""
    channels = video.shape[-1]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = pixel_format
        stream.options = {"crf": str(crf)}
        for frame in video:
            image = frame[..., 0] if channels == 1 else frame
            packets = stream.encode(
                av.VideoFrame.from_ndarray(image, format="gray" if channels == 1 else "rgb24")
            )
            container.mux(packets)
        container.mux(stream.encode())
    return buffer.getvalue()


def blocky_videos(seed: int, count: int, frames: int, channels: int) -> np.ndarray:
    """`(count, frames, 64, 64, channels)` uint8 of random 8x8-pixel blocks."""
    blocks = np.random.default_rng(seed).integers(
        0, 256, (count, frames, 8, 8, channels), dtype=np.uint8
    )
    return blocks.repeat(8, axis=2).repeat(8, axis=3)


class ArchiveWriter:
    """Writes `<archive>.zip`, or its extracted folders, with known videos per split."""

    def __init__(self, spec: archives.ArchiveSpec, frames: dict[str, int], counts: dict[str, int]):
        self.spec = spec
        self.videos = {
            split: blocky_videos(seed, counts[split], frames[split], spec.channels)
            for seed, split in enumerate(spec.split_dirs)
        }

    def members(self) -> dict[str, bytes]:
        """Path inside the zip -> mp4 bytes, named so that sorted order is video order."""
        prefix = f"{self.spec.top_folder}/" if self.spec.top_folder else ""
        pixel_format = "yuv420p" if self.spec.channels == 1 else "yuv444p"
        return {
            f"{prefix}{self.spec.split_dirs[split]}/{i:04d}.mp4": encode_mp4(video, pixel_format)
            for split, videos in self.videos.items()
            for i, video in enumerate(videos)
        }

    def write_zip(self, manual_dir: pathlib.Path) -> pathlib.Path:
        manual_dir.mkdir(parents=True, exist_ok=True)
        path = manual_dir / f"{self.spec.name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in self.members().items():
                zf.writestr(name, data)
        return path

    def write_folder(self, root: pathlib.Path) -> None:
        """Extracts the zip's contents under `root`."""
        for name, data in self.members().items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


@pytest.fixture
def archive_writer() -> type[ArchiveWriter]:
    return ArchiveWriter


@pytest.fixture(name="encode_mp4")
def encode_mp4_fixture():
    return encode_mp4
