"""One real training step per preset, the demo's videos and the non-finite-loss stop."""

import io
import pathlib
import zipfile

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from examples_testlib import TINY, cli, demo_tiny, records
from PIL import Image

import checkpointing
import run_config
import train
from clockwork.data import archives

ONE_STEP = {"num_steps": 1, "log_every": 1, "ckpt_every": 1, "keep_every": 0, "video_every": 0}


def encode_mp4(video: np.ndarray) -> bytes:
    """Lossless H.264 of ``(T, 64, 64, 3)`` uint8."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt, stream.options = "yuv444p", {"crf": "0"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_archive(spec: archives.ArchiveSpec, manual_dir: pathlib.Path) -> None:
    """``<spec.name>.zip`` laid out like the published one, with two 8-frame videos a split."""
    manual_dir.mkdir(parents=True)
    prefix = f"{spec.top_folder}/" if spec.top_folder else ""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(manual_dir / f"{spec.name}.zip", "w") as zf:
        for folder in spec.split_dirs.values():
            for i in range(2):
                video = rng.integers(0, 256, (8, 8, 8, 3), np.uint8).repeat(8, 1).repeat(8, 2)
                zf.writestr(f"{prefix}{folder}/{i:02d}.mp4", encode_mp4(video))


def assert_one_good_step(workdir: pathlib.Path, levels: int) -> None:
    [record] = records(workdir)
    assert record["step"] == 1
    assert np.isfinite(record["train/loss"]) and record["train/grad_norm"] > 0
    for level in range(levels):
        assert record[f"train/kl/{level}"] >= 0
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert list(mgr.all_steps()) == [1]
    assert (workdir / "checkpoints" / "1" / "pipeline").is_dir()
    assert list((workdir / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("preset,spec", [
    ("mazes", archives.GQN_MAZES), ("minerl", archives.MINERL_NAVIGATE),
])
def test_one_step_on_a_prepared_archive(tmp_path, preset, spec):
    """The whole path: archive -> tfds dataset -> pipeline -> step -> logs and checkpoint."""
    write_archive(spec, tmp_path / "data" / "downloads" / "manual")
    workdir = tmp_path / "run"
    train.main(["--config", preset, "--logdir", str(workdir), "--datadir", str(tmp_path / "data"),
                *cli(TINY), *cli(ONE_STEP)])
    assert_one_good_step(workdir, TINY["levels"])
    saved = run_config.read(workdir / "config.yaml")
    expected = run_config.load(preset, {**TINY, **ONE_STEP, "datadir": str(tmp_path / "data")})
    assert saved == expected and saved.model.channels == 3


def test_one_step_on_generated_moving_mnist(tmp_path):
    """mmnist with no archive on disk trains on the generated tfds config."""
    workdir = tmp_path / "run"
    train.main(["--config", "mmnist", "--logdir", str(workdir), "--datadir", str(tmp_path / "data"),
                *cli(TINY), *cli(ONE_STEP)])
    assert_one_good_step(workdir, TINY["levels"])
    assert (tmp_path / "data" / "moving_mnist_2digit" / "generated").is_dir()


def test_demo_trains_and_ends_with_open_loop_videos(tmp_path, capsys):
    workdir = tmp_path / "run"
    settings = demo_tiny(num_steps=2, log_every=1, ckpt_every=1, video_every=2, video_examples=1)
    train.main(["--config", "demo", "--logdir", str(workdir), *cli(settings)])
    out = capsys.readouterr().out
    assert "step 2/2  loss" in out and "open-loop predictions:" in out
    steps = [r["step"] for r in records(workdir)]
    assert steps == [1, 2, 2]  # train metrics at 1 and 2, validation metrics at 2
    val = records(workdir)[-1]
    assert np.isfinite(val["val/loss"]) and 0 < val["val/ssim"] <= 1 and "val/psnr" in val
    tile = 64 + 4  # frame and border
    for split in ("train", "val"):
        png = Image.open(workdir / "videos" / f"{split}_step0000002.png")
        assert png.size == (4 * tile, 3 * tile)  # 4 frames; truth, model, error
        gif = Image.open(workdir / "videos" / f"{split}_step0000002.gif")
        assert gif.n_frames == 4 and gif.size == (tile, 3 * tile)
        assert f"{split}_step0000002.gif" in out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = train.make_train_step

    def diverging(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            state, metrics = step(state, batch)
            if int(state.step) == 3:  # as a diverged update would leave it
                state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
                metrics = dict(metrics, loss=jnp.float32(jnp.nan))
            return state, metrics

        return wrapped

    monkeypatch.setattr(train, "make_train_step", diverging)
    workdir = tmp_path / "run"
    settings = demo_tiny(num_steps=6, log_every=1, ckpt_every=2, video_every=0)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "demo", "--logdir", str(workdir), *cli(settings)])
    assert exit_info.value.code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: non-finite values at step 3: {'loss': nan}")
    assert f"the last good checkpoint is step 2 in {workdir / 'checkpoints'}" in message
    assert [r["step"] for r in records(workdir)] == [1, 2]
    mgr = checkpointing.manager(workdir / "checkpoints", read_only=True)
    assert list(mgr.all_steps()) == [2]
    config = run_config.read(workdir / "config.yaml")
    state, position = checkpointing.restore(mgr, 2, checkpointing.abstract_state(config)[1])
    assert int(state.step) == 2 and position["step"] == 2
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))
