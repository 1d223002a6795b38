"""Actions from data through the trainer and the evaluator: the pushed-digit source."""

import numpy as np
import pytest
from examples_testlib import cli, demo_tiny, records

import eval as evaluator
import run_config
import train


def test_pushed_digits_train_with_actions_and_evaluate(tmp_path):
    run = tmp_path / "run"
    settings = demo_tiny(num_steps=2, log_every=1, ckpt_every=1, keep_every=0, video_every=2,
                         data_source="pushed", action_size=2)
    train.main(["--config", "demo", "--logdir", str(run), *cli(settings)])
    trained = [r for r in records(run) if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) for r in trained)
    # The validation videos were predicted with their actions (the open loop needs them).
    val = [r for r in records(run) if "val/psnr" in r]
    assert [r["step"] for r in val] == [2] and np.isfinite(val[0]["val/psnr"])
    assert (run / "videos" / "val_step0000002.png").exists()
    summary = evaluator.evaluate(run, evaluator.EvalSettings(num_examples=1, save_grid=False))
    assert summary["step"] == 2 and np.isfinite(summary["psnr"]) and np.isfinite(summary["ssim"])


@pytest.mark.parametrize("changes,match", [
    ({"data_source": "pushed", "frame_size": (64, 64)}, "data source 'pushed' has 2 action dims, but the model has action_size=0"),
    ({"action_size": 2}, "data source 'generated' has no action dims, but the model has action_size=2"),
])
def test_action_size_must_match_the_data_source(changes, match):
    with pytest.raises(ValueError, match=match):
        run_config.load("demo", changes)
