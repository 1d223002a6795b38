"""The evaluator on a tiny checkpoint writes every promised file, with the right shapes."""

import csv
import json

import numpy as np
import pytest
from examples_testlib import demo_tiny
from PIL import Image

import eval as evaluator
import run_config
import train
from clockwork.metrics import psnr
from clockwork.data import generate_moving_mnist

TILE = 64 + 4  # a frame and its border in the PNG strips


def test_eval_writes_examples_curves_and_summary(tmp_path, capsys):
    run = tmp_path / "run"
    config = run_config.load("demo", demo_tiny(num_steps=2, log_every=1, ckpt_every=1, video_every=0))
    train.train_and_evaluate(config, run)
    outdir = run / "eval_out"
    evaluator.main(["--logdir", str(run / "checkpoints" / "1"), "--seq-len", "8",
                    "--open-loop-ctx", "2", "--use-obs", "TF", "--num-examples", "2",
                    "--num-samples", "3", "--sample-batch", "2", "--outdir", str(outdir)])
    out = capsys.readouterr().out
    assert "peak_rss_gib" in out and "PSNR" in out
    horizon, frame = 6, (64, 64, 1)
    truth_videos = generate_moving_mnist(2, 8, 0, digit_split="test")
    for i in range(2):
        ex = np.load(outdir / "examples" / f"ex{i:04d}.npz")
        assert ex["context"].shape == (2, *frame) and ex["truth"].shape == (horizon, *frame)
        np.testing.assert_array_equal(np.concatenate([ex["context"], ex["truth"]]), truth_videos[i])
        assert ex["psnr"].shape == ex["ssim"].shape == (3, horizon)
        for name in ("best_ssim", "best_psnr"):
            assert ex[name].shape == (horizon, *frame) and ex[name].dtype == np.uint8
        assert ex["random"].shape == (1, horizon, *frame) and ex["random_index"].shape == (1,)
        for name in ("psnr", "ssim"):  # the kept sample has the best mean over the horizon
            means = ex[name].mean(axis=1)
            assert means[int(ex[f"best_{name}_index"])] == pytest.approx(means.max(), abs=1e-6)
        best = int(ex["best_psnr_index"])
        # The stored sample is the one scored, frame by frame (up to uint8 rounding).
        rescored = psnr(ex["best_psnr"] / np.float32(255), ex["truth"] / np.float32(255))
        np.testing.assert_allclose(rescored, ex["psnr"][best], atol=0.05)
        assert Image.open(outdir / "examples" / f"ex{i:04d}_context.png").size == (2 * TILE, TILE)
        # rows: truth, best by SSIM, best by PSNR, one random sample
        pred_png = Image.open(outdir / "examples" / f"ex{i:04d}_pred.png")
        assert pred_png.size == (horizon * TILE, 4 * TILE)

    metrics = np.load(outdir / "metrics.npz")
    np.testing.assert_array_equal(metrics["frame"], np.arange(2, 8))
    assert metrics["psnr"].shape == metrics["ssim"].shape == (2, 3, horizon)
    for name in ("psnr", "ssim"):
        assert metrics[f"{name}_best"].shape == (2, horizon)
        for stat in ("mean", "std", "p5", "p50", "p95"):
            assert metrics[f"{name}_{stat}"].shape == (horizon,)
        np.testing.assert_allclose(metrics[f"{name}_mean"], metrics[f"{name}_best"].mean(0), rtol=1e-6)
    ex1 = np.load(outdir / "examples" / "ex0001.npz")
    best = int(metrics["ssim_best_index"][1])
    np.testing.assert_array_equal(metrics["ssim_best"][1], ex1["ssim"][best])
    with open(outdir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(2, 8))
    assert float(rows[0]["ssim_mean"]) == pytest.approx(float(metrics["ssim_mean"][0]), rel=1e-5)
    for name in ("psnr", "ssim"):
        assert Image.open(outdir / f"{name}.png").format == "PNG"
    summary = json.loads((outdir / "summary.json").read_text())
    settings = (summary["step"], summary["open_loop_ctx"], summary["seq_len"], summary["use_obs"])
    assert settings == (1, 2, 8, "TF")
    assert summary["num_samples"] == 3 and summary["sample_batch"] == 2
    assert summary["peak_rss_gib"] > 0
    assert summary["ssim"] == pytest.approx(float(metrics["ssim_mean"].mean()))
    # Baselines on the same frames, against NumPy: the last context frame repeated, and
    # black frames (PSNR = -10 log10(mean(x^2)) with a peak of 1).
    truth = truth_videos[:, 2:] / np.float32(255)
    blank = -10 * np.log10(np.mean(truth**2, axis=(2, 3, 4)))
    copy = -10 * np.log10(np.mean((truth - truth_videos[:, 1:2] / np.float32(255)) ** 2, axis=(2, 3, 4)))
    assert summary["baselines"]["blank"]["psnr"] == pytest.approx(float(blank.mean()), rel=1e-5)
    assert summary["baselines"]["copy_last"]["psnr"] == pytest.approx(float(copy.mean()), rel=1e-5)
    assert 0 < summary["baselines"]["blank"]["ssim"] < 1 and "baseline copy_last" in out

    # Defaults: the latest checkpoint, the config's context and eval_seq_len, one sample.
    summary = evaluator.evaluate(run, evaluator.EvalSettings(num_examples=1, save_grid=False))
    outdir = run / "eval" / "step2-ctx2-len8-obsTT-1x1-seed0"
    assert summary["step"] == 2 and summary["seq_len"] == 8  # latest checkpoint, eval_seq_len
    ex = np.load(outdir / "examples" / "ex0000.npz")
    assert ex["sample"].shape == (6, 64, 64, 1) and ex["psnr"].shape == (1, 6)
    assert not list(outdir.glob("examples/*.png"))
    assert (outdir / "metrics.csv").exists() and (outdir / "ssim.png").exists()


@pytest.fixture
def run(tmp_path):
    """A run folder with a config and no checkpoint: enough for the evaluator's checks."""
    run_config.save(run_config.load("demo", demo_tiny()), tmp_path / "config.yaml")
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["--open-loop-ctx", "3"], "--open-loop-ctx=3 must be a non-negative multiple of the top period 2"),
    (["--seq-len", "2"], "--seq-len 2 must exceed --open-loop-ctx 2"),
    (["--use-obs", "TTT"], "use_obs must be 2 letters T or F"),
    (["--num-samples", "0"], "--num-samples must be positive"),
    (["--num-examples", "3"], "no checkpoint in"),
])
def test_eval_rejects_bad_settings(run, capsys, args, message):
    with pytest.raises(SystemExit):
        evaluator.main(["--logdir", str(run), *args])
    assert message in capsys.readouterr().err


def test_eval_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluator.main(["--logdir", str(tmp_path)])
    error = capsys.readouterr().err
    assert "is neither a run folder (with config.yaml) nor a checkpoint in one" in error
