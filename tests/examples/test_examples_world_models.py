"""The World Models example's stages (examples/world_models) on tiny sizes, in CarRacing-v3."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from examples_testlib import EXAMPLES
from world_models import collect
from world_models.presets import PRESETS

TINY = dataclasses.replace(PRESETS["smoke"].collect, rollouts=3, max_steps=12, shard_episodes=2,
                           workers=1)


def test_world_models_shrink_is_the_area_average():
    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    # Independently: out = A f A^T, A[i, j] = overlap of output pixel i's span
    # [1.5 i, 1.5 i + 1.5) with input pixel j's [j, j + 1), over 1.5.
    edges = np.arange(65) * 1.5
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(96)[None, :]
    area = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / 1.5
    want = np.einsum("ij,jkc,lk->ilc", area, frame.astype(np.float64), area)
    got = collect.shrink(frame)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.floor(want + 0.5 + 1e-9).astype(np.uint8))


def test_world_models_blank_and_malformed_frames_are_named():
    good = np.zeros((96, 96, 3), np.uint8)
    good[10, 20] = 7
    assert collect.frame_problem(good) is None
    assert collect.frame_problem(np.zeros((96, 96, 3), np.uint8)) == "is blank (every pixel [0, 0, 0])"
    assert collect.frame_problem(np.zeros((96, 96, 4), np.uint8)).startswith("is not a 96x96x3 uint8 frame")
    assert collect.frame_problem(np.zeros((96, 96, 3), np.float32)).startswith("is not a 96x96x3")


def test_world_models_random_actions_lie_in_the_action_space_and_are_held():
    actions = collect.random_actions(np.random.default_rng(1), 400, hold=8)
    assert actions.shape == (400, 3) and actions.dtype == np.float32
    assert (actions[:, 0] >= -1).all() and (actions[:, 0] <= 1).all()
    assert (actions[:, 1:] >= 0).all() and (actions[:, 1:] <= 1).all()
    changes = np.flatnonzero(np.any(np.diff(actions, axis=0) != 0, axis=1)) + 1
    runs = np.diff(np.concatenate([[0], changes, [400]]))
    assert runs.min() >= 1 and runs[:-1].max() <= 8 and runs.mean() > 2  # held 1..8 steps


def test_world_models_collect_writes_shards_resumes_and_is_deterministic(tmp_path):
    collect.collect(tmp_path / "a", TINY)
    shards = sorted((tmp_path / "a" / "rollouts").glob("shard_*.npz"))
    assert [p.name for p in shards] == ["shard_000000.npz", "shard_000001.npz"]
    data = collect.load(tmp_path / "a")
    n = 3 * 12  # no episode ends within 12 steps
    assert data["frames"].shape == (n, 64, 64, 3) and data["frames"].dtype == np.uint8
    assert data["actions"].shape == (n, 3) and data["actions"].dtype == np.float32
    assert data["rewards"].dtype == np.float32 and data["dones"].dtype == bool
    np.testing.assert_array_equal(data["episodes"], np.repeat([0, 1, 2], 12))
    assert not data["dones"].any()
    assert (data["rewards"] < 0).any()  # -0.1 per step off new tiles
    # Resume: a missing shard is rewritten, the other is left as it was.
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    assert collect.missing_shards(tmp_path / "a", TINY) == [1]
    collect.collect(tmp_path / "a", TINY)
    assert shards[0].stat().st_mtime_ns == kept
    again = collect.load(tmp_path / "a")
    # Determinism: another folder, two workers, the same arrays.
    collect.collect(tmp_path / "b", dataclasses.replace(TINY, workers=2))
    other = collect.load(tmp_path / "b")
    for name in data:
        np.testing.assert_array_equal(again[name], data[name])
        np.testing.assert_array_equal(other[name], data[name])


def test_world_models_an_episode_with_a_blank_frame_is_reported_and_not_stored(tmp_path, monkeypatch):
    real = collect.episode

    def blank_second(seed, max_steps, hold, env=None):
        if seed == 1:
            return "frame 5 is blank (every pixel [0, 0, 0])"
        return real(seed, max_steps, hold, env)

    monkeypatch.setattr(collect, "episode", blank_second)
    steps, reports = collect.write_shard(tmp_path, 0, TINY)
    assert reports == ["episode 1 (seed 1): frame 5 is blank (every pixel [0, 0, 0]); not stored"]
    with np.load(collect.shard_path(tmp_path, 0)) as shard:
        assert shard["skipped"].tolist() == [1]
        assert sorted(set(shard["episodes"].tolist())) == [0] and steps == 12


def test_world_models_command_line_collects_the_smoke_preset(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "world_models"), "collect", "--run",
                           str(tmp_path), "--preset", "smoke"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"collect: wrote 2 shards into {tmp_path / 'rollouts'}"
    assert len(collect.load(tmp_path)["frames"]) == 4 * 40
