"""Read speed of `(50, 100, 64, 64, 1)` uint8 batches per storage format.

Writes N generated Moving MNIST videos of 100 frames twice, as a prepared tfds dataset
(`array_record`, read through `as_data_source()`) and as an `.npy` file opened with
`np.memmap`, then times shuffled `VideoPipeline` batches from each, with reads on
demand (`prefetch=0`) and in background threads. The files sit in the page cache, so
this measures decoding and copying, not the disk.

    python benchmarks/data.py [--num-videos 500] [--batches 200]

The last line printed is a JSON object with every figure (batches per second).
"""

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from clockwork.data import TfdsVideos, VideoPipeline, VideoSource, builders, iter_moving_mnist

SEQ_LEN = 100


def batches_per_second(
    videos: VideoSource, batch_size: int, num_batches: int, prefetch: int
) -> float:
    """Times `num_batches` shuffled batches (after one warm-up batch)."""
    with VideoPipeline(
        videos,
        seq_len=SEQ_LEN,
        batch_size=batch_size,
        seed=0,
        process_index=0,
        process_count=1,
        prefetch=prefetch,
    ) as pipeline:
        next(pipeline)
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(pipeline)
        elapsed = time.perf_counter() - start
    assert batch.shape == (batch_size, SEQ_LEN, 64, 64, 1) and batch.dtype == np.uint8
    return num_batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        config = builders.MovingMnistConfig(
            name="bench", generated=True, num_train=args.num_videos, num_test=1
        )
        start = time.perf_counter()
        builder = tfds.builder("moving_mnist_2digit", config=config, data_dir=root / "tfds")
        builder.download_and_prepare()
        build_s = time.perf_counter() - start

        path = root / "videos.npy"
        start = time.perf_counter()
        out = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(args.num_videos, SEQ_LEN, 64, 64, 1)
        )
        begin = 0
        for chunk in iter_moving_mnist(args.num_videos, SEQ_LEN, seed=0):
            out[begin : begin + len(chunk)] = chunk
            begin += len(chunk)
        out.flush()
        del out
        memmap_write_s = time.perf_counter() - start

        sources: dict[str, VideoSource] = {
            "tfds_array_record": TfdsVideos(builder.as_data_source(split="train")),
            "np_memmap": np.load(path, mmap_mode="r"),
        }
        figures: dict[str, float] = {"tfds_build_s": build_s, "memmap_write_s": memmap_write_s}
        for fmt, videos in sources.items():
            for prefetch in (0, 2, 4):
                rate = batches_per_second(videos, args.batch_size, args.batches, prefetch)
                figures[f"{fmt}_prefetch{prefetch}"] = rate
                shape = f"({args.batch_size}, {SEQ_LEN}, 64, 64, 1)"
                print(f"{fmt:18s} prefetch={prefetch}: {rate:8.1f} batches/s of {shape}")
        written = f"tfds build {build_s:.1f} s, npy write {memmap_write_s:.1f} s"
        print(f"for {args.num_videos} videos: {written}")
        print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
