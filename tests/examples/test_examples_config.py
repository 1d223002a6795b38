"""Configs of the example programs: presets, command-line overrides and their errors."""

import sys

import pytest
import yaml

import run_config
import train
from clockwork.config import LossConfig, ModelConfig, OptimConfig, SpeedConfig, preset

EVAL_SEQ_LEN = {"mmnist": 1000, "mazes": 300, "minerl": 500}


def parse(tmp_path, *args: str):
    return train.parse_args(["--logdir", str(tmp_path / "run"), *args])


@pytest.mark.parametrize("name", ["mmnist", "mazes", "minerl"])
def test_paper_presets_match_the_library(name):
    config = run_config.load(name)
    p = preset(name)
    assert (config.model, config.loss, config.optim, config.speed) == (p.model, p.loss, p.optim, p.speed)
    assert config.train.dataset == name and config.train.data_source == "tfds"
    assert (config.train.batch_size, config.train.seq_len) == (50, 100)
    assert (config.eval.eval_seq_len, config.eval.open_loop_ctx) == (EVAL_SEQ_LEN[name], 36)
    assert config.imports == ()


def test_demo_is_small_and_needs_no_download():
    config = run_config.load("demo")
    assert config.train.data_source == "generated" and config.train.dataset == "mmnist"
    assert config.model.filters <= 16 and config.train.video_every > 0
    assert config.model.cell_options == {"stoch_size": 16, "det_size": 64, "hidden_size": 64}
    assert config.train.seq_len > config.eval.open_loop_ctx


def test_sections_are_the_library_configs_and_the_programs_own():
    assert run_config.SECTIONS == {
        "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "speed": SpeedConfig,
        "train": run_config.TrainConfig, "eval": run_config.EvalConfig,
    }
    assert run_config.FIELD_SECTION["batch_size"] == "train"
    assert run_config.FIELD_SECTION["open_loop_ctx"] == "eval"
    assert run_config.FIELD_SECTION["compute_dtype"] == "speed"


def test_overrides_reach_every_field_kind(tmp_path):
    config, workdir = parse(
        tmp_path, "--config", "mmnist", "--levels", "4", "--factors", "4,4,4",
        "--batch_size", "16", "--seq-len", "128", "--open_loop_ctx", "64", "--lr=1e-4",
        "--beta", "1,2,0.5,1", "--free_nats", "3", "--cell", "rssm,rssm,rssm,rssm",
        "--cell_options", "{stoch_size: 4, det_size: 8, hidden_size: 8, min_stddev: 1e-3}",
        "--remat", "true", "--conv_chunk", "null", "--compute-dtype", "bfloat16",
        "--seed", "3", "--datadir", "yes",
        "--num_steps", "10", "--log_every", "5", "--ckpt_every", "10", "--keep_every", "0",
    )
    m, t = config.model, config.train
    assert workdir == tmp_path / "run"
    assert (m.levels, m.factors, t.batch_size, t.seq_len) == (4, (4, 4, 4), 16, 128)
    assert config.eval.open_loop_ctx == 64
    assert config.optim.lr == 1e-4 and config.loss.beta == (1.0, 2.0, 0.5, 1.0)
    assert config.loss.free_nats == 3.0 and isinstance(config.loss.free_nats, float)
    assert config.speed == SpeedConfig(conv_chunk=None, remat=True, compute_dtype="bfloat16")
    assert m.cell == ("rssm",) * 4 and m.clock.periods == (1, 4, 16, 64)
    # A YAML flow mapping; 1e-3 (a string to PyYAML) is read as a float.
    assert m.cell_options == {"stoch_size": 4, "det_size": 8, "hidden_size": 8, "min_stddev": 1e-3}
    assert (t.seed, t.datadir, t.num_steps, t.log_every) == (3, "yes", 10, 5)
    assert config.loss.dec_stddev == 1.0  # untouched fields keep the preset's values


def test_per_level_cell_options_and_imports_round_trip(tmp_path):
    config, _ = parse(
        tmp_path, "--config", "demo", "--levels", "2", "--cell", "rssm,gru",
        "--cell_options", "[{stoch_size: 2, det_size: 3, hidden_size: 3}, {det_size: 5}]",
        "--imports", "json,clockwork.cells",
    )
    assert config.model.cells() == (
        ("rssm", {"stoch_size": 2, "det_size": 3, "hidden_size": 3}), ("gru", {"det_size": 5})
    )
    assert config.imports == ("json", "clockwork.cells")
    path = tmp_path / "config.yaml"
    run_config.save(config, path)
    saved = yaml.safe_load(path.read_text())
    assert saved["imports"] == ["json", "clockwork.cells"]
    assert list(saved) == ["imports", *run_config.SECTIONS]
    assert run_config.read(path) == config


def test_resume_needs_no_config(tmp_path):
    config, _ = parse(tmp_path, "--config", "demo", "--dec_stddev", "0.5")
    (tmp_path / "run").mkdir()
    run_config.save(config, tmp_path / "run" / "config.yaml")
    resumed, _ = parse(tmp_path, "--num_steps", "7")
    assert resumed.model == config.model and resumed.loss.dec_stddev == 0.5
    assert resumed.train.num_steps == 7


@pytest.mark.parametrize("args,message", [
    (["--levles", "4"], "unknown config key(s): --levles (did you mean --levels?)"),
    (["--learning_rate", "1"], "unknown config key(s): --learning_rate"),
    (["--stoch_size", "4"], "unknown config key(s): --stoch_size"),  # now in cell_options
    (["--levels", "abc"], "model.levels must be int, got 'abc'"),
    (["--levels", "2.5"], "model.levels must be int, got 2.5"),
    (["--levels", "0"], "invalid model config: levels must be a positive int, got 0"),
    (["--lr", "fast"], "optim.lr must be float, got 'fast'"),
    (["--lr", "-1"], "invalid optim config: lr must be a number > 0, got -1"),
    (["--lr", ".inf"], "invalid optim config: lr must be a finite number > 0, got inf"),
    (["--dec_stddev", ".nan"], "invalid loss config: dec_stddev must be a finite number > 0, got nan"),
    (["--free_nats", ".inf"], "invalid loss config: free_nats must be a finite number >= 0, got inf"),
    (["--test_fraction", "half"], "train.test_fraction must be float, got 'half'"),
    (["--generated_speed", "2,.inf"],
     "generated_speed must be [low, high] with 0 <= low <= high, both finite, got [2.0, inf]"),
    (["--factors", "4,4,4"], "factors (4, 4, 4) give 4 levels but levels=3"),
    (["--factors", "4,x"], "model.factors must be tuple[int, ...] | None, got [4, 'x']"),
    (["--factors", "4"], "model.factors must be tuple[int, ...] | None, got 4"),
    (["--cell", "lsmt"], "unknown cell 'lsmt'; registered cells: categorical, gru, lstm, mdn, rssm"),
    (["--cell", "rssm,gru"], "cell needs one name per level (3)"),
    (["--cell", "no_such_module:Cell"], "cannot import module 'no_such_module'"),
    (["--cell_options", "7"], "model.cell_options must be dict[str, Any] | tuple[dict[str, Any], ...], got 7"),
    (["--cell_options", "{stoch_sise: 4}"],
     "cell of level 0: cell 'rssm' with options {'stoch_sise': 4}"),
    (["--cell_options", "{stoch_size: 0, det_size: 4, hidden_size: 4}"],
     "cell of level 0: stoch_size must be a positive int, got 0"),
    (["--cell", "rssm,gru,rssm"],  # options for every level: gru takes no stoch_size
     "cell of level 1: cell 'gru' with options {'stoch_size': 20, 'det_size': 200, 'hidden_size': 200}"),
    (["--beta", "1,2"], "beta needs one value per level (3), got (1.0, 2.0)"),
    (["--remat", "maybe"], "speed.remat must be bool, got 'maybe'"),
    (["--conv_impl", "fft"], "invalid speed config: conv_impl must be one of"),
    (["--num_steps", "-1"], "invalid train config: num_steps must be positive, got -1"),
    (["--seed", "-2"], "seed must be non-negative, got -2"),
    (["--batch_size", "0"], "batch_size must be positive, got 0"),
    (["--eval_seq_len", "x"], "eval.eval_seq_len must be int, got 'x'"),
    (["--eval_seq_len", "36"], "open_loop_ctx (36) must be below eval_seq_len (36)"),
    (["--log_every", "3"], "ckpt_every (5000) must be a multiple of log_every (3)"),
    (["--keep_every", "7000"], "keep_every (7000) must be a multiple of ckpt_every (5000)"),
    (["--dataset", "kth"], "dataset must be one of ['mazes', 'minerl', 'mmnist'], got 'kth'"),
    (["--dataset", "mazes"], "dataset 'mazes' has 3 channel(s), but the model has channels=1"),
    (["--data_source", "web"], "data_source must be one of ('tfds', 'generated', 'pushed', 'folder')"),
    (["--video_examples", "51"], "video_examples (51) must not exceed batch_size (50)"),
    (["--open_loop_ctx", "30"],
     "invalid config: open_loop_ctx=30 must be a non-negative multiple of the top period 36"),
    (["--open_loop_ctx", "108"], "open_loop_ctx (108) must be below seq_len (100)"),
    (["--imports", "no_such_module_either"],
     "imports: cannot import module 'no_such_module_either'"),
])
def test_cli_rejects_bad_keys_and_values(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(tmp_path, "--config", "mmnist", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--config", "nope"],
     "unknown config 'nope'; choose one of ['demo', 'mazes', 'minerl', 'mmnist', 'study']"),
    (["--config", "mazes", "--data_source", "generated"],
     "data_source 'generated' is Moving MNIST only"),
    ([], "--config is required"),
])
def test_cli_rejects_bad_configs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        parse(tmp_path, *args)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("model:\n  levels: 2\n  num_steps: 3\ntrain: {}\n",
     "in section 'model': unknown config key(s): num_steps (a field of section 'train')"),
    ("model:\n  levls: 2\n", "in section 'model': unknown config key(s): levls (did you mean levels?)"),
    ("train:\n  imports: [json]\n", "in section 'train': unknown config key(s): imports (a top-level key)"),
    ("model: {}\ntrainer: {}\n", "unknown config section(s) 'trainer' (did you mean 'train'?)"),
    ("model: [1, 2]\n", "config section 'model' must be a mapping"),
    ("imports: {a: 1}\n", "imports must be a list of module names"),
])
def test_yaml_with_a_misplaced_or_unknown_key_is_rejected(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        run_config.load(str(path))
    assert message in str(error.value)


def test_resuming_with_other_settings_is_refused(tmp_path):
    config = run_config.load("demo")
    train.prepare_workdir(config, tmp_path)
    longer = run_config.build(config.to_dict(), {"num_steps": 5000, "datadir": "/data"})
    train.prepare_workdir(longer, tmp_path)  # schedule and paths may change
    assert run_config.read(tmp_path / "config.yaml") == longer
    other = run_config.build(config.to_dict(), {"lr": 1e-4, "seed": 1})
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.001 -> 0\.0001, seed: 0 -> 1\)"):
        train.prepare_workdir(other, tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(imports: \[\] -> \['json'\]\)"):
        train.prepare_workdir(run_config.build(longer.to_dict(), {"imports": ["json"]}), tmp_path)


def test_wandb_is_imported_only_when_enabled(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    config = run_config.load("demo", {"wandb": True})
    with pytest.raises(RuntimeError, match=r"wandb: true needs the wandb package"):
        train.train_and_evaluate(config, tmp_path)
