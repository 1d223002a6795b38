"""Configs of the example programs: presets, command-line overrides and their errors."""

import sys

import pytest

import run_config
import train
from clockwork import CWVAEConfig


def parse(tmp_path, *args: str):
    return train.parse_args(["--logdir", str(tmp_path / "run"), *args])


@pytest.mark.parametrize("name", ["mmnist", "mazes", "minerl"])
def test_paper_presets_match_the_library(name):
    config = run_config.load(name)
    assert config.model == CWVAEConfig.preset(name)
    assert config.train.dataset == name and config.train.data_source == "tfds"


def test_demo_is_small_and_needs_no_download():
    config = run_config.load("demo")
    assert config.train.data_source == "generated" and config.train.dataset == "mmnist"
    assert config.model.filters <= 16 and config.train.video_every > 0
    assert config.model.seq_len > config.model.open_loop_ctx


def test_overrides_reach_every_field_kind(tmp_path):
    config, workdir = parse(
        tmp_path, "--config", "mmnist", "--levels", "4", "--factors", "4,4,4",
        "--batch_size", "16", "--seq-len", "128", "--open_loop_ctx", "64", "--lr=1e-4",
        "--beta", "1,2,0.5,1",
        "--cell", "rssm,gru,rssm,gru", "--remat", "true", "--seed", "3", "--datadir", "yes",
        "--num_steps", "10", "--log_every", "5", "--ckpt_every", "10", "--keep_every", "0",
    )
    m, t = config.model, config.train
    assert workdir == tmp_path / "run"
    assert (m.levels, m.factors, m.batch_size, m.seq_len) == (4, (4, 4, 4), 16, 128)
    assert m.lr == 1e-4 and m.beta == (1.0, 2.0, 0.5, 1.0) and m.remat is True
    assert m.cell == ("rssm", "gru", "rssm", "gru") and m.clock.periods == (1, 4, 16, 64)
    assert (t.seed, t.datadir, t.num_steps, t.log_every) == (3, "yes", 10, 5)
    assert m.dec_stddev == 1.0  # untouched fields keep the preset's values


def test_resume_needs_no_config(tmp_path):
    config, _ = parse(tmp_path, "--config", "demo", "--dec_stddev", "0.5")
    (tmp_path / "run").mkdir()
    run_config.save(config, tmp_path / "run" / "config.yaml")
    resumed, _ = parse(tmp_path, "--num_steps", "7")
    assert resumed.model == config.model and resumed.train.num_steps == 7


@pytest.mark.parametrize("args,message", [
    (["--levles", "4"], "unknown config key(s): --levles (did you mean --levels?)"),
    (["--learning_rate", "1"], "unknown config key(s): --learning_rate"),
    (["--levels", "abc"], "levels must be an integer, got 'abc'"),
    (["--levels", "2.5"], "levels must be an integer, got 2.5"),
    (["--levels", "0"], "invalid config: levels must be a positive integer, got 0"),
    (["--lr", "fast"], "lr must be a number, got 'fast'"),
    (["--lr", "-1"], "invalid config: lr must be > 0"),
    (["--factors", "4,4,4"], "factors (4, 4, 4) give 4 levels but levels=3"),
    (["--factors", "4,x"], "factors must be a list of integers or null, got [4, 'x']"),
    (["--remat", "maybe"], "remat must be true or false, got 'maybe'"),
    (["--num_steps", "-1"], "num_steps must be positive, got -1"),
    (["--seed", "-2"], "seed must be non-negative, got -2"),
    (["--log_every", "3"], "ckpt_every (5000) must be a multiple of log_every (3)"),
    (["--keep_every", "7000"], "keep_every (7000) must be a multiple of ckpt_every (5000)"),
    (["--dataset", "kth"], "dataset must be one of ['mazes', 'minerl', 'mmnist'], got 'kth'"),
    (["--dataset", "mazes"], "dataset 'mazes' has 3 channel(s), but the model has channels=1"),
    (["--data_source", "web"], "data_source must be one of ('tfds', 'generated')"),
    (["--video_examples", "51"], "video_examples (51) must not exceed batch_size (50)"),
    (["--open_loop_ctx", "30"], "open_loop_ctx (30) must be a multiple of the top level's period (36)"),
    (["--open_loop_ctx", "108"], "open_loop_ctx (108) must be below seq_len (100)"),
])
def test_cli_rejects_bad_keys_and_values(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(tmp_path, "--config", "mmnist", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--config", "nope"],
     "unknown config 'nope'; choose one of ['demo', 'mazes', 'minerl', 'mmnist']"),
    (["--config", "mazes", "--data_source", "generated"],
     "data_source 'generated' is Moving MNIST only"),
    ([], "--config is required"),
])
def test_cli_rejects_bad_configs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        parse(tmp_path, *args)
    assert message in capsys.readouterr().err


def test_yaml_with_a_misplaced_or_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  levels: 2\n  num_steps: 3\ntrain: {}\n")
    with pytest.raises(ValueError, match=r"in section 'model': unknown config key\(s\): num_steps"):
        run_config.load(str(path))
    path.write_text("model: {}\ntrainer: {}\n")
    with pytest.raises(ValueError, match="unknown config section"):
        run_config.load(str(path))


def test_resuming_with_other_settings_is_refused(tmp_path):
    config = run_config.load("demo")
    train.prepare_workdir(config, tmp_path)
    longer = run_config.build(config.to_dict(), {"num_steps": 5000, "datadir": "/data"})
    train.prepare_workdir(longer, tmp_path)  # schedule and paths may change
    assert run_config.read(tmp_path / "config.yaml") == longer
    other = run_config.build(config.to_dict(), {"lr": 1e-4, "seed": 1})
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.001 -> 0\.0001, seed: 0 -> 1\)"):
        train.prepare_workdir(other, tmp_path)


def test_wandb_is_imported_only_when_enabled(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    config = run_config.load("demo", {"wandb": True})
    with pytest.raises(RuntimeError, match=r"wandb: true needs the wandb package"):
        train.train_and_evaluate(config, tmp_path)
