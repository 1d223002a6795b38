"""Faults injected into the trainer and the evaluator: damaged checkpoints, signals, a
full disk and unwritable paths. Nothing good is lost, and each fault is one clear line."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from examples_testlib import EXAMPLES, cli, demo_tiny, records

import checkpointing
import eval as evaluator
import interrupts
import run_config
import train
from clockwork import data

SETTINGS = demo_tiny(num_steps=6, log_every=1, ckpt_every=2, keep=3, video_every=0)
CHILD_ENV = dict(os.environ)
# The size-limited trainer must not write the suite's compilation cache (past the limit).
UNCACHED_ENV = {k: v for k, v in os.environ.items()
                if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}


def train_metrics(workdir: pathlib.Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith(("step", "train/"))}
            for r in records(workdir)]


def assert_same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run of 6 steps (checkpoints 2, 4, 6), the same run continued to 8
    steps without a fault, and runs of another model (filters 3) and another seed."""
    base = tmp_path_factory.mktemp("faults")
    config = run_config.load("demo", SETTINGS)
    train.train_and_evaluate(config, base / "six")
    longer = run_config.load("demo", {**SETTINGS, "num_steps": 8})
    shutil.copytree(base / "six", base / "eight")
    reference = train.train_and_evaluate(longer, base / "eight")
    train.train_and_evaluate(run_config.load("demo", {**SETTINGS, "filters": 3}), base / "other")
    train.train_and_evaluate(run_config.load("demo", {**SETTINGS, "seed": 1}), base / "seed")
    return base, longer, reference


def largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(step_dir, base):
    path = largest_file(step_dir / "state")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty_file(step_dir, base):
    largest_file(step_dir / "state").write_bytes(b"")


def flip_bit(step_dir, base):
    path = largest_file(step_dir / "state")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def remove_file(step_dir, base):
    largest_file(step_dir / "state").unlink()


def partly_written(step_dir, base):  # the pipeline item never made it to disk
    shutil.rmtree(step_dir / "pipeline")


def emptied(step_dir, base):
    for child in step_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def other_model(step_dir, base):
    shutil.rmtree(step_dir)
    shutil.copytree(base / "other" / "checkpoints" / "6", step_dir)


def other_config(step_dir, base):  # same model and program, another seed
    shutil.rmtree(step_dir)
    shutil.copytree(base / "seed" / "checkpoints" / "6", step_dir)


FAULTS = {
    truncate: "cannot be read", empty_file: "cannot be read", flip_bit: r"damaged|cannot be read",
    remove_file: "cannot be read", partly_written: "is incomplete: it lacks pipeline",
    emptied: "is incomplete", other_model: "holds another model: .*filters|holds another model",
    other_config: r"written by another config \(seed: 1 -> 0\)",
}


@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_damaged_latest_checkpoint_resumes_from_the_newest_good_one(runs, tmp_path, fault, capsys):
    base, longer, reference = runs
    workdir = tmp_path / "run"
    shutil.copytree(base / "six", workdir)
    fault(workdir / "checkpoints" / "6", base)
    capsys.readouterr()
    resumed = train.train_and_evaluate(longer, workdir)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out
    assert f"checkpoint {workdir / 'checkpoints' / '6'}" in warnings[0]
    assert __import__("re").search(FAULTS[fault], warnings[0]), warnings[0]
    assert "resuming" in out and "from step 4" in out
    assert (workdir / "checkpoints.damaged" / "6").is_dir()  # kept, not deleted
    assert_same_params(resumed, reference)
    assert train_metrics(workdir) == train_metrics(base / "eight")


def test_every_checkpoint_damaged_stops_with_one_line_naming_the_folder(runs, tmp_path):
    base, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(base / "six", workdir)
    for step in (2, 4, 6):
        flip_bit(workdir / "checkpoints" / str(step), base)
        truncate(workdir / "checkpoints" / str(step), base)
    done = subprocess.run(
        [sys.executable, "train.py", "--logdir", str(workdir), "--num_steps", "8"],
        cwd=EXAMPLES, env=CHILD_ENV, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no usable checkpoint in {workdir / 'checkpoints'}: all 3 "
                           "are damaged"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (workdir / "checkpoints.damaged").iterdir()) == ["2", "4", "6"]


def test_restore_checks_the_checksum_of_every_leaf(runs, tmp_path):
    """A bit flipped in the stored values themselves (not in the file format) is found by
    the manifest's checksums: written here through Orbax with one leaf changed."""
    base, longer, _ = runs
    graphdef, abstract = checkpointing.abstract_state(longer)
    mgr = checkpointing.manager(base / "six" / "checkpoints", read_only=True)
    state, position = checkpointing.restore(mgr, 6, abstract, config=longer)
    mgr.close()
    stored = state.replace(key=jax.random.key_data(state.key))
    good = checkpointing.manifest(stored, longer)
    leaves, tree = jax.tree.flatten(state.params)
    flipped = np.asarray(leaves[0]).copy()
    flipped.view(np.uint32).reshape(-1)[0] ^= 1  # one bit of one float
    changed = state.replace(params=jax.tree.unflatten(tree, [flipped, *leaves[1:]]))
    mgr = checkpointing.manager(tmp_path / "ckpt")
    checkpointing.save(mgr, changed, position, longer)
    # Put the good manifest back beside the changed values (Orbax's JSON item is one file).
    (tmp_path / "ckpt" / "6" / "manifest" / "metadata").write_text(json.dumps(good))
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"is damaged: the bits of \.params\S+ differ from the checksums written with it$"):
        checkpointing.restore(mgr, 6, abstract, config=longer)
    mgr.close()


def test_checksums_see_one_bit_and_ignore_the_sharding():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = x.copy()
    y.view(np.uint32)[2, 3] ^= 1 << 31
    a, b = checkpointing.checksums([x]), checkpointing.checksums([y])
    assert a != b
    words = x.view(np.uint32).reshape(-1).astype(np.uint64)
    index = np.arange(words.size, dtype=np.uint64)
    weights = ((index * 0x9E3779B1 + 0x7F4A7C15) % 2**32) | 1
    assert a == [int((words * weights).sum() % 2**32)]  # against NumPy's 64-bit arithmetic


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_at_the_next_step_and_the_resumed_run_logs_the_same(
        runs, tmp_path, monkeypatch, signum):
    """Interrupted at step 3 of a run that logs every 2 steps: the checkpoint holds the
    unlogged step 3, and the resumed run's records and parameters are the uninterrupted
    run's."""
    base, _, _ = runs
    settings = {**SETTINGS, "num_steps": 8, "log_every": 2, "ckpt_every": 4}
    config = run_config.load("demo", settings)
    reference = train.train_and_evaluate(config, tmp_path / "plain")
    calls = []
    real = data.VideoPipeline.__next__

    def signalling(self):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # arrives while step 3 is under way
        return real(self)

    monkeypatch.setattr(data.VideoPipeline, "__next__", signalling)
    # A test run in the background (nohup, CI) may ignore SIGINT; this one must not.
    before = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                           else signal.SIG_DFL)
    workdir = tmp_path / "interrupted"
    with pytest.raises(interrupts.Interrupted) as caught:
        train.train_and_evaluate(config, workdir)
    assert caught.value.exit_code == 128 + signum
    assert str(caught.value).startswith(
        f"{signal.Signals(signum).name}: stopped at step 3 of 8, saved in "
        f"{workdir / 'checkpoints' / '3'}; run the same command to resume")
    restored = signal.signal(signum, before)  # the trainer put back what it found
    assert restored is (signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, workdir)
    assert_same_params(resumed, reference)
    assert train_metrics(workdir) == train_metrics(tmp_path / "plain")


def test_ctrl_c_stops_the_trainer_with_one_line_and_status_130(tmp_path):
    workdir = tmp_path / "run"
    settings = {**SETTINGS, "num_steps": 100000, "ckpt_every": 1000}
    process = subprocess.Popen(  # with SIGINT handled as in a terminal, whatever ours does
        [sys.executable, "-c", "import signal, sys, runpy; "
         "signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'train.py'; "
         "runpy.run_path('train.py', run_name='__main__')", "--config", "demo", "--logdir",
         str(workdir), *cli(settings)],
        cwd=EXAMPLES, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait for the first logged step
        if line.startswith("step 1/"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate()
    assert process.returncode == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("SIGINT: stopped at step ") and lines[-1].endswith(
        "run the same command to resume")
    step = int(lines[-1].split("step ")[1].split(" ")[0])
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert mgr.latest_step() == step
    _, abstract = checkpointing.abstract_state(run_config.read(workdir / "config.yaml"))
    checkpointing.restore(mgr, step, abstract)  # verified
    mgr.close()


def test_the_evaluator_stops_on_sigterm_after_the_current_example(runs, tmp_path, monkeypatch):
    base, _, _ = runs
    calls = []
    real = evaluator.write_example

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator, "write_example", signalling)
    settings = evaluator.EvalSettings(num_examples=3, num_samples=1, outdir=tmp_path / "eval")
    with interrupts.Interrupts() as stop, pytest.raises(interrupts.Interrupted) as caught:
        evaluator.evaluate(base / "six", settings, stop=stop)
    assert caught.value.exit_code == 143
    assert str(caught.value) == (f"SIGTERM: stopped after example 1 of 3; {tmp_path / 'eval'}"
                                 "/examples holds those done, summary.json was not written")
    assert (tmp_path / "eval" / "examples" / "ex0000.npz").is_file()
    assert not (tmp_path / "eval" / "summary.json").exists()


# A trainer whose files may not grow beyond 40 kB: the config and metrics fit, a
# checkpoint (its metadata alone is larger) does not, as on a full disk.
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.RLIM_INFINITY))
import train
train.main(sys.argv[1:])
"""


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(runs, tmp_path):
    base, longer, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(base / "six", workdir)
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "--logdir", str(workdir), "--num_steps", "8"],
        cwd=EXAMPLES, env=UNCACHED_ENV, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not write checkpoint {workdir / 'checkpoints' / '8'}: File too large; "
        "the checkpoints before it are intact"), done.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]  # no partial one
    _, abstract = checkpointing.abstract_state(longer)
    mgr = checkpointing.manager(checkpoints, read_only=True)
    for step in (2, 4, 6):
        checkpointing.restore(mgr, step, abstract, config=longer)
    mgr.close()


def test_an_unwritable_run_folder_or_video_folder_is_one_line(runs, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "train.py", "--config", "demo", "--logdir", str(blocker / "run"),
         *cli(SETTINGS)], cwd=EXAMPLES, env=CHILD_ENV, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not write the run folder {blocker / 'run'}: Not a directory")

    base, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(base / "six", workdir)
    (workdir / "videos").write_text("")  # where the video folder should go
    config = run_config.load("demo", {**SETTINGS, "num_steps": 8, "video_every": 8})
    with pytest.raises(train.fileio.WriteError,
                       match=f"could not write videos into {workdir / 'videos'}: File exists"):
        train.train_and_evaluate(config, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_an_ignored_signal_stays_ignored():
    """Under nohup SIGINT is ignored: the trainer must not start answering it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.Interrupts() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_exit_with_leaves_its_line_last_whatever_prints_during_shutdown():
    # As TensorStore's threads do after a failed write: print while Python shuts down.
    late = ("import atexit, sys, fileio\n"
            "atexit.register(lambda: print('RuntimeError: Event loop is closed', file=sys.stderr))\n"
            "print('progress', flush=True)\n"
            "fileio.exit_with('error: the one line', 3)\n")
    done = subprocess.run([sys.executable, "-c", late], cwd=EXAMPLES, capture_output=True,
                          text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "progress\n", "error: the one line\n")
