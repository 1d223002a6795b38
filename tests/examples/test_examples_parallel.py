"""The trainer's --mesh and multi-process flags (the sharded path itself: tests/parallel)."""

import numpy as np
import pytest
from examples_testlib import cli, demo_tiny, records

import checkpointing
import run_config
import train


def test_mesh_run_trains_checkpoints_and_resumes(tmp_path):
    """--mesh 1 takes the sharded path of the trainer end to end, resume included."""
    workdir = tmp_path / "run"
    settings = demo_tiny(num_steps=2, log_every=1, ckpt_every=1, video_every=2, mesh=1)
    train.main(["--config", "demo", "--logdir", str(workdir), *cli(settings)])
    assert [r["step"] for r in records(workdir)] == [1, 2, 2]
    assert np.isfinite(records(workdir)[1]["train/loss"])
    assert (workdir / "videos" / "val_step0000002.png").is_file()
    train.main(["--logdir", str(workdir), "--num_steps", "3", "--mesh", "auto"])
    assert [r["step"] for r in records(workdir)][-1] == 3
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert mgr.latest_step() == 3


@pytest.mark.parametrize("args,message", [
    (["--mesh", "2x"], "mesh must be 'auto', DATA or DATAxMODEL"),
    (["--mesh", "3"], "batch_size (8) must be a multiple of the mesh's data axis (3)"),
    (["--process_id", "1"], "--process_id need(s) --distributed"),
    (["--distributed"], "--distributed needs --mesh"),
])
def test_bad_parallel_flags_stop_the_cli(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "demo", "--logdir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_mesh_is_a_config_field(tmp_path):
    config = run_config.load("demo", {"mesh": "2x2"})
    assert config.train.mesh == "2x2" and "mesh" in run_config.RESUMABLE_CHANGES
    run_config.save(config, tmp_path / "config.yaml")
    assert run_config.read(tmp_path / "config.yaml") == config
    # A run may resume on another mesh, but not with another seed.
    plain = run_config.load("demo")
    assert run_config.resume_conflicts(plain, config) == {}
    reseeded = run_config.load("demo", {"mesh": "2x2", "seed": 1})
    assert run_config.resume_conflicts(plain, reseeded) == {"seed": (0, 1)}
