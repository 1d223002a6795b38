"""A trainer killed mid-run and resumed logs exactly the losses of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from examples_testlib import cli, demo_tiny, records

import checkpointing
import run_config
import train
from examples_testlib import EXAMPLES

SETTINGS = demo_tiny(num_steps=8, log_every=1, ckpt_every=2, keep=2, keep_every=4, video_every=0)

# The killed run: the real trainer with each step slowed down, so that the test can kill it
# between two checkpoints.
SLOW_TRAINER = """
import sys, time
import train

real = train.make_train_step

def slow(*args, **kwargs):
    step = real(*args, **kwargs)

    def slowed(state, batch):
        time.sleep(0.3)
        return step(state, batch)

    return slowed

train.make_train_step = slow
train.main(sys.argv[1:])
"""


def train_metrics(workdir) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith(("step", "train/"))} for r in records(workdir)]


def logged_steps(workdir) -> list[int]:
    """Steps logged so far by a running trainer (a line being written is skipped)."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("\n")]


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    config = run_config.load("demo", SETTINGS)
    compiled = []
    real = train.make_train_step

    def recorded(*args, **kwargs):
        compiled.append(real(*args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(train, "make_train_step", recorded)
    reference = train.train_and_evaluate(config, tmp_path / "uninterrupted")
    assert compiled[0]._cache_size() == 1  # one compilation for all steps

    workdir = tmp_path / "killed"
    env = dict(os.environ, JAX_NUMPY_RANK_PROMOTION="raise", JAX_NUMPY_DTYPE_PROMOTION="strict")
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAINER, "--config", "demo", "--logdir", str(workdir),
         *cli(SETTINGS)],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # Kill once checkpoint 4 exists and step 5 is logged: the log holds a step that the
    # checkpoint does not, which the resumed run must recompute and log only once. A
    # busy machine only slows this down; 15 minutes without a new step is a hang.
    seen, last = 0, time.monotonic()
    while 5 not in (steps := logged_steps(workdir)):
        assert process.poll() is None, process.stderr.read()
        if len(steps) > seen:
            seen, last = len(steps), time.monotonic()
        assert time.monotonic() - last < 900, "the trainer logged nothing for 15 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert max(mgr.all_steps()) in (4, 6)  # killed mid-run
    mgr.close()

    resumed = train.train_and_evaluate(config, workdir)
    assert train_metrics(workdir) == train_metrics(tmp_path / "uninterrupted")
    assert [r["step"] for r in train_metrics(workdir)] == list(range(1, 9))
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert list(mgr.all_steps()) == [4, 6, 8]  # the last 2, and every 4th kept
