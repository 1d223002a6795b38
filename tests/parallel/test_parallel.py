"""Sharded training on fake CPU devices and two local processes (clockwork.parallel).

Fake devices need ``XLA_FLAGS`` before JAX starts, so the checks run in subprocesses
(``parallel_worker.py``) and the tests read their JSON. Each run happens once per
session (:func:`once`), however xdist spreads its tests over the workers.
"""

import fcntl
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clockwork import parallel

WORKER = pathlib.Path(__file__).with_name("parallel_worker.py")
QUIET_LIMIT = 900  # seconds without a line from a worker: hung (a collective that never ends)


def start(mode: str, out: pathlib.Path, *args: str, devices: int = 1) -> subprocess.Popen:
    # Without the suite's persistent compilation cache: two processes of one distributed
    # run must compile alike, or the one that loads its program from the cache waits at
    # the first collective for the other longer than Gloo's 30 s deadline.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, quiet_limit: float = QUIET_LIMIT) -> None:
    """Waits for a worker for as long as it keeps printing (each phase prints a line), so
    that a busy machine only slows the run down; a worker silent for ``quiet_limit``
    seconds is hung, and is killed with its output in the failure."""
    lines: list[str] = []
    last = [time.monotonic()]

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while process.poll() is None:
        if time.monotonic() - last[0] > quiet_limit:
            process.kill()
            process.wait()
            reader.join()
            pytest.fail(f"worker printed nothing for {quiet_limit:.0f} s:\n"
                        + "".join(lines)[-3000:])
        time.sleep(0.2)
    reader.join()
    assert process.returncode == 0, "".join(lines)[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> pathlib.Path:
    """The folder where ``build(folder)`` ran, once per test session: the first xdist
    worker to ask runs it (under a file lock), the others wait and reuse its output."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    out = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / "done").touch()
    return out


def mesh_runs(out: pathlib.Path) -> None:
    finish(start("mesh", out, devices=8))
    port = str(free_port())
    workers = [start("restore", out, devices=1), start("restore", out, devices=4),
               *(start("distributed", out, port, str(i)) for i in range(2))]
    for worker in workers:
        finish(worker)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> pathlib.Path:
    """The 8-device run (with its checkpoint and reference), then restores and 2 processes."""
    return once(tmp_path_factory, "parallel", mesh_runs)


def read(out: pathlib.Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.parametrize("mesh", ["8", "2x4"])
def test_a_sharded_step_equals_the_single_device_step(runs, mesh):
    result = read(runs, "mesh")
    assert result["devices"] == 8
    sharded = result[mesh]
    assert sharded["step"] == 1
    np.testing.assert_allclose(sharded["loss"], result["loss_1"], rtol=1e-6)
    assert sharded["grad_norm_diff"] <= 1e-5 * result["loss_1"]
    assert sharded["max_param_diff"] < 1e-6
    assert sharded["grad_rel_diff"] < 1e-5  # Adam's first step hides a gradient's scale
    assert sharded["metric_specs"] == ["P()"]


@pytest.mark.parametrize("mesh", ["8", "2x4"])
def test_no_collective_runs_inside_a_loop(runs, mesh):
    """Scans and chunk loops run per shard; gradients are reduced once, after them."""
    sharded = read(runs, "mesh")[mesh]
    assert sharded["loops"] >= 4  # two levels' scans and the conv chunk maps, both passes
    assert sharded["loop_collectives"] == 0


def test_outputs_have_the_intended_shardings(runs):
    result = read(runs, "mesh")
    assert result["8"]["mesh"] == {"data": 8, "model": 1}
    assert result["8"]["param_specs"] == ["P()"]  # replicated by default
    assert result["2x4"]["mesh"] == {"data": 2, "model": 4}
    assert result["2x4"]["dense_kernel_spec"] == "P(None, 'model')"  # placed by the rule
    assert result["2x4"]["param_specs"] == ["P()", "P(None, 'model')"]


def test_errors_name_the_sizes(runs):
    result = read(runs, "mesh")
    assert result["batch_error"].startswith(
        "batch size 6 is not divisible by the data axis of the mesh (8 devices)")
    assert result["size_error"] == "a 16x1 mesh needs 16 devices; there are 8"
    assert "got '2x'" in result["mesh_error"]


@pytest.mark.parametrize("devices", [1, 4])
def test_a_checkpoint_from_8_devices_restores_on_fewer(runs, devices):
    result = read(runs, f"restore-{devices}")
    assert result["devices"] == devices and result["device_sets"] == [devices]
    assert result["step"] == 1 and result["position"]["step"] == 1
    assert result["max_param_diff"] == 0.0


def test_two_processes_train_like_one_on_the_combined_batch(runs):
    results = [read(runs, f"distributed-{i}") for i in range(2)]
    for r in results:
        assert r["process_count"] == 2 and r["devices"] == 2 and r["local_devices"] == 1
        assert r["rows"] == 2  # each process reads its half of the global batch of 4
    assert results[0]["loss"] == results[1]["loss"]
    first, second = (dict(np.load(runs / f"distributed-{i}.npz")) for i in range(2))
    reference = dict(np.load(runs / "reference.npz"))
    for name, value in reference.items():
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(first[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def cells_run(tmp_path_factory) -> dict:
    """Models with user cells on meshes of 1 and 4 fake devices (one of 2 adds nothing)."""
    out = once(tmp_path_factory, "parallel_cells",
               lambda out: finish(start("cells", out, devices=4)))
    return read(out, "cells")


@pytest.mark.parametrize("kind", ["slow", "both"])
@pytest.mark.parametrize("devices", [1, 4])
def test_user_cells_give_the_same_loss_and_gradients_on_1_and_4_devices(cells_run, kind, devices):
    """Any cell, with the fast path or without it, trains the same on any mesh: its
    noise is drawn for the whole batch before the one shard_map of the step."""
    assert cells_run["devices"] == 4
    result = cells_run[f"{kind}-{devices}"]
    np.testing.assert_allclose(result["sharded_loss"], result["loss"], rtol=1e-6)
    assert result["grad_rel_diff"] < 1e-5


@pytest.mark.parametrize("kind", ["slow", "both"])
def test_user_cell_scans_run_per_device_with_no_collective_inside(cells_run, kind):
    result = cells_run[f"{kind}-4"]
    assert result["loops"] >= 4  # two levels' scans and the conv chunk maps, both passes
    assert result["loop_collectives"] == 0


@pytest.mark.parametrize("devices", [1, 4])
def test_categorical_mdn_and_lstm_cells_train_alike_on_1_and_4_devices(cells_run, devices):
    """A three-level model of the categorical RSSM, the MDN-RNN and the LSTM cells: the
    same loss and gradients on any mesh, and scans with no collective inside."""
    result = cells_run[f"library-{devices}"]
    np.testing.assert_allclose(result["sharded_loss"], result["loss"], rtol=1e-6)
    assert result["grad_rel_diff"] < 1e-5
    assert result["loops"] >= 6 and result["loop_collectives"] == 0


@pytest.mark.parametrize("spec,shape", [
    ("8", (8, 1)), ("2x4", (2, 4)), ("auto", (None, 1)), (8, (8, 1)), (" 1X2 ", (1, 2)),
])
def test_parse_mesh(spec, shape):
    assert parallel.parse_mesh(spec) == shape


@pytest.mark.parametrize("spec", ["", "0", "2x0", "x4", "2x4x1", "eight", "-2"])
def test_parse_mesh_rejects(spec):
    with pytest.raises(ValueError, match="mesh must be 'auto', DATA or DATAxMODEL"):
        parallel.parse_mesh(spec)


def test_the_watchdog_kills_a_silent_worker_and_waits_for_a_slow_one(tmp_path):
    slow = subprocess.Popen([sys.executable, "-c", "import time\nfor i in range(4):\n"
                             "    time.sleep(0.5); print(i, flush=True)"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finish(slow, quiet_limit=1.5)  # 2 s in all, but never silent for 1.5 s
    silent = subprocess.Popen([sys.executable, "-c", "print('started', flush=True)\n"
                               "import time; time.sleep(60)"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with pytest.raises(pytest.fail.Exception, match="printed nothing for 2 s:\nstarted"):
        finish(silent, quiet_limit=2)
    assert silent.poll() is not None  # killed
