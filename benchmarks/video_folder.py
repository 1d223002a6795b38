"""Does decoding a folder of mp4 files keep up with training? Run by hand, never as a test.

    .venv/bin/python benchmarks/video_folder.py [--num-videos 100] [--train-steps 2]

Writes ``--num-videos`` generated Moving MNIST videos of 100 frames as mp4 files (H.264,
64x64, and a second folder at 128x128 that is resized to 64x64 while decoding), then
reads shuffled ``(50, 100, 64, 64, 1)`` batches through ``VideoPipeline`` from
``VideoFolder``: decoded on every read (prefetch 0 and 2), and from its cache of
memory-mapped ``.npy`` files. Beside them, frames trained per second by the ``mmnist``
preset's training step at batch 50 x 100 frames, measured in the same process
(``--train-steps 0`` skips it). Prints frames per second for each; the last line is a
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import benchlib
from clockwork.data import VideoFolder, VideoPipeline, generate_moving_mnist, write_video
from clockwork.training import init_train_state, make_optimizer, make_train_step

BATCH, SEQ_LEN = 50, 100


def frames_per_second(folder: VideoFolder, batches: int, prefetch: int) -> float:
    """Frames per second of ``batches`` batches, timed from the pipeline's start (the
    background threads start decoding at once, so a warm-up batch would hide them)."""
    start = time.perf_counter()
    with VideoPipeline(folder, seq_len=SEQ_LEN, batch_size=BATCH, seed=0, process_index=0,
                       process_count=1, prefetch=prefetch) as pipe:
        for _ in range(batches):
            batch = next(pipe)
        elapsed = time.perf_counter() - start
    assert batch.shape == (BATCH, SEQ_LEN, 64, 64, 1)
    return batches * BATCH * SEQ_LEN / elapsed


def train_frames_per_second(steps: int) -> float:
    cfg = benchlib.load("mmnist")
    opt = make_optimizer(**dataclasses.asdict(cfg.optim))
    graphdef, state = init_train_state(benchlib.build(cfg), opt, jax.random.key(0))
    step = make_train_step(graphdef, opt)
    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (BATCH, SEQ_LEN, 64, 64, 1), np.uint8))
    compiled = step.lower(state, frames).compile()
    state, metrics = compiled(state, frames)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frames)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return BATCH * SEQ_LEN / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, {jax.device_count()} device(s)")
    videos = generate_moving_mnist(args.num_videos, SEQ_LEN, seed=0)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for name, scale in (("mp4_64", 1), ("mp4_128_resized", 2)):
            folder_dir = root / name
            folder_dir.mkdir()
            for i, video in enumerate(videos):
                big = video.repeat(scale, axis=1).repeat(scale, axis=2)
                write_video(folder_dir / f"v{i:04d}.mp4", big)
            size = (64, 64) if scale == 2 else None
            start = time.perf_counter()
            folder = VideoFolder(folder_dir, channels=1, frame_size=size)
            figures[f"{name}_open_fps"] = args.num_videos * SEQ_LEN / (time.perf_counter() - start)
            for prefetch in (0, 2):
                figures[f"{name}_prefetch{prefetch}_fps"] = frames_per_second(folder, args.batches, prefetch)
            start = time.perf_counter()
            cached = VideoFolder(folder_dir, channels=1, frame_size=size, cache_dir=root / f"{name}_cache")
            figures[f"{name}_cache_build_s"] = time.perf_counter() - start
            figures[f"{name}_cached_prefetch2_fps"] = frames_per_second(cached, args.batches, 2)
            for key in (f"{name}_open_fps", f"{name}_prefetch0_fps", f"{name}_prefetch2_fps",
                        f"{name}_cached_prefetch2_fps"):
                print(f"{key:32s} {figures[key]:10.0f} frames/s")
    if args.train_steps:
        figures["train_mmnist_b50_fps"] = train_frames_per_second(args.train_steps)
        print(f"{'train_mmnist_b50_fps':32s} {figures['train_mmnist_b50_fps']:10.0f} frames/s")
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
