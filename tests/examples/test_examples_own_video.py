"""Your own videos through the trainer and the evaluator: a folder of mp4 files at a
non-square frame size, resized on the way in."""

import json
import re
import shlex

import numpy as np
import pytest
from examples_testlib import DEMO_DATA, EXAMPLES, cli, demo_tiny, records

import eval as evaluator
import run_config
import train
from clockwork.data import split_of, write_video


def video_dir(tmp_path, size=(64, 96), lengths=(30, 9, 40, 3, 26, 24)):
    """mp4 files of a moving square, named so that both splits get videos."""
    root = tmp_path / "videos"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"clip{i:02d}.mp4" for i in range(40)]
    test = [n for n in names if split_of(n, 0.25) == "test"][:2]
    train_names = [n for n in names if split_of(n, 0.25) == "train"][: len(lengths) - 2]
    for name, length in zip(train_names + test, lengths, strict=True):
        clip = np.zeros((length, *size, 3), np.uint8)
        y, x = rng.integers(0, size[0] - 16), rng.integers(0, size[1] - 16 - length)
        for t in range(length):
            clip[t, y:y + 16, x + t:x + t + 16] = (255, 128, 0)
        write_video(root / name, clip)
    return root


def page_commands() -> list[list[str]]:
    """The shell commands of docs/own_videos.md, one argument list each."""
    page = (EXAMPLES.parent / "docs" / "own_videos.md").read_text()
    block = re.search(r"```bash\n(.*?)```", page, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_own_video_page_commands_train_at_a_non_square_size_and_evaluate(tmp_path):
    root, run = video_dir(tmp_path), tmp_path / "run"
    (train_cmd, eval_cmd) = page_commands()
    assert train_cmd[:2] == ["python", "examples/train.py"] and eval_cmd[:2] == ["python", "examples/eval.py"]
    paths = {"my_videos": str(root), "runs/mine": str(run)}
    train_args = [paths.get(a, a) for a in train_cmd[2:]]
    assert "--frame_size" in train_args and "--resize" in train_args
    # The page's command at test size: the tiny model and schedule override its values.
    tiny = {k: v for k, v in demo_tiny().items()
            if k not in ("seq_len", "eval_seq_len", *DEMO_DATA)}
    train.main([*train_args, *cli({**tiny, "seq_len": 8, "num_steps": 2, "log_every": 1,
                                   "ckpt_every": 1, "keep_every": 0, "video_every": 2})])
    trained = [r for r in records(run) if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2] and all(np.isfinite(r["train/loss"]) for r in trained)
    val = [r for r in records(run) if "val/psnr" in r]
    assert [r["step"] for r in val] == [2] and np.isfinite(val[0]["val/psnr"])
    saved = run_config.load(run / "config.yaml")
    assert saved.model.frame_size == (32, 48) and saved.train.video_dir == str(root)
    evaluator.main([paths.get(a, a) for a in eval_cmd[2:]])
    summary = json.loads(next((run / "eval").glob("*/summary.json")).read_text())
    assert summary["step"] == 2 and np.isfinite(summary["psnr"]) and np.isfinite(summary["ssim"])
    assert summary["num_examples"] == 2


def test_own_video_folder_frame_size_mismatch_names_the_folder(tmp_path):
    root = video_dir(tmp_path, size=(32, 32), lengths=(8, 8, 8))
    settings = demo_tiny(num_steps=1, data_source="folder", video_dir=str(root),
                         test_fraction=0.25, channels=3, frame_size=(32, 48))
    with pytest.raises(ValueError, match=r"videos in .*videos have frames of 32x32, but the model "
                                         r"reads 32x48: set model frame_size \[32, 32\], or resize"):
        train.main(["--config", "demo", "--logdir", str(tmp_path / "run"), *cli(settings)])


@pytest.mark.parametrize("changes,match", [
    ({"data_source": "folder"}, "data_source 'folder' needs video_dir"),
    ({"video_dir": "somewhere"}, "video_dir needs data_source 'folder'"),
    ({"frame_size": [32, 32], "data_source": "tfds"},
     r"has 64x64 frames, but the model has frame_size=\[32, 32\]"),
    ({"frame_size": [48, 48]}, r"each side of frame_size must divide 64 \(32 or 64\), got \[48, 48\]"),
    ({"frame_size": [70, 64]}, "a side of 70 does not fit the conv stacks"),
    ({"data_source": "folder", "video_dir": "v", "test_fraction": 2.0}, r"test_fraction must be in \[0, 1\]"),
])
def test_own_video_config_errors_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        run_config.load("demo", changes)


def test_generated_frames_at_32_are_the_2x2_block_means_of_the_64_ones():
    import sources
    from clockwork import data

    config = run_config.load("demo", demo_tiny(generated_videos=3, seq_len=5, frame_size=(32, 32)))
    train_videos, _ = sources.train_videos(config.train, config.model)
    full = data.generate_moving_mnist(3, 5, sources.GENERATED_SEED).astype(np.float64)
    want = np.rint(full.reshape(3, 5, 32, 2, 32, 2, 1).mean(axis=(3, 5)))
    assert train_videos.shape == (3, 5, 32, 32, 1) and train_videos.dtype == np.uint8
    np.testing.assert_array_equal(train_videos, want.astype(np.uint8))
    test = sources.test_videos(config.train, config.model, 2, 5)
    assert test[0].shape == (5, 32, 32, 1)
