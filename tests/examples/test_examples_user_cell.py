"""A cell of one's own, through the trainer and the evaluator: by import path and by a
name that an ``imports`` module registers."""

import sys
import textwrap

import jax
import numpy as np
import pytest
import yaml
from examples_testlib import TINY_CELL, cli, demo_tiny, records

import checkpointing
import eval as evaluator
import run_config
import train
from clockwork import cells

# A small stochastic cell with no prepare/step fast path: a leaky average of a tanh
# layer as its deterministic state, Gaussian prior and posterior heads on it.
MY_CELLS = '''
import jax
import jax.numpy as jnp
from flax import nnx

from clockwork.cells import GaussianState, StepOutput


class LeakyCell(nnx.Module):
    """``det = (1 - leak) det + leak tanh(W [sample, context])``, Gaussian heads on it."""

    def __init__(self, embed_size, context_size, *, stoch_size=2, det_size=3, leak=0.5, rngs):
        self.embed_size, self.context_size = embed_size, context_size
        self.stoch_size, self.det_size, self.leak = stoch_size, det_size, leak
        self.feature_size = stoch_size + det_size
        self.inp = nnx.Linear(stoch_size + context_size, det_size, rngs=rngs)
        self.prior = nnx.Linear(det_size, 2 * stoch_size, rngs=rngs)
        self.post = nnx.Linear(det_size + embed_size, 2 * stoch_size, rngs=rngs)

    def initial_state(self, batch_size, dtype=jnp.float32):
        s = jnp.zeros((batch_size, self.stoch_size), dtype)
        d = jnp.zeros((batch_size, self.det_size), dtype)
        return GaussianState(sample=s, det_state=d, det_out=d, mean=s, stddev=s)

    def noise(self, key, batch_size, dtype=jnp.float32):
        return jax.random.normal(key, (batch_size, 2, self.stoch_size), dtype)

    def _gaussian(self, head, x, det, eps):
        mean, pre = jnp.split(head(x), 2, axis=-1)
        stddev = jax.nn.softplus(pre) + 0.1
        return GaussianState(sample=mean + stddev * eps, det_state=det, det_out=det,
                             mean=mean, stddev=stddev)

    def __call__(self, state, embed, context, noise, *, use_obs):
        x = jnp.tanh(self.inp(jnp.concatenate([state.sample, context], axis=-1)))
        det = (1.0 - self.leak) * state.det_state + self.leak * x
        prior = self._gaussian(self.prior, det, det, noise[:, 0])
        if not use_obs:
            return prior, StepOutput(prior, prior)
        post = self._gaussian(self.post, jnp.concatenate([det, embed], axis=-1), det, noise[:, 1])
        return post, StepOutput(prior, post)
'''

MY_CELLS_REGISTERING = '''
import clockwork.cells
from my_cells import LeakyCell

clockwork.cells.register("leaky", LeakyCell)
'''

LEAKY = {"stoch_size": 2, "det_size": 3}
ONE_STEP_EACH = {"log_every": 1, "ckpt_every": 1, "keep": 5, "keep_every": 0, "video_every": 0}


@pytest.fixture
def user_cells(tmp_path, monkeypatch):
    """``my_cells`` and ``my_cells_registering`` importable from ``tmp_path``; afterwards
    the modules are forgotten and ``leaky`` unregistered."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "my_cells.py").write_text(textwrap.dedent(MY_CELLS))
    (modules / "my_cells_registering.py").write_text(textwrap.dedent(MY_CELLS_REGISTERING))
    monkeypatch.syspath_prepend(str(modules))
    names = ("my_cells", "my_cells_registering")
    for name in names:
        sys.modules.pop(name, None)
    yield modules
    if "leaky" in cells.registered():
        cells.unregister("leaky")
    for name in names:
        sys.modules.pop(name, None)


def assert_same_tree(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def restored(run, step):
    config = run_config.read(run / "config.yaml")
    mgr = checkpointing.manager(run / checkpointing.CHECKPOINT_DIR, read_only=True)
    state, _ = checkpointing.restore(mgr, step, checkpointing.abstract_state(config)[1])
    mgr.close()
    return state


def test_user_cell_by_import_path_trains_and_evaluates(user_cells, tmp_path):
    run = tmp_path / "run"
    settings = demo_tiny(num_steps=2, **ONE_STEP_EACH, cell=("my_cells:LeakyCell", "rssm"),
                         cell_options=(LEAKY, TINY_CELL))
    train.main(["--config", "demo", "--logdir", str(run), *cli(settings)])
    assert [r["step"] for r in records(run)] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) for r in records(run))

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["cell"] == ["my_cells:LeakyCell", "rssm"]
    assert saved["model"]["cell_options"] == [LEAKY, TINY_CELL]
    config = run_config.read(run / "config.yaml")
    model = checkpointing.build_model(config)
    assert type(model.hierarchy.cells[0]).__name__ == "LeakyCell"
    assert model.hierarchy.cells[0].feature_size == 5

    # The checkpoint restores into the model the config describes, and runs again.
    state = restored(run, 2)
    assert int(state.step) == 2
    again = train.train_and_evaluate(config, run)  # finished: restores and stops
    assert_same_tree(state.params, again.params)

    summary = evaluator.evaluate(run, evaluator.EvalSettings(num_examples=1, save_grid=False))
    assert summary["step"] == 2 and summary["seq_len"] == 8 and summary["open_loop_ctx"] == 2
    assert np.isfinite(summary["psnr"]) and np.isfinite(summary["ssim"])


def test_user_cell_registered_by_imports_trains_and_resumes(user_cells, tmp_path, capsys):
    assert "leaky" not in cells.registered()
    values = run_config.load("demo", demo_tiny(num_steps=2, **ONE_STEP_EACH)).to_dict()
    values["imports"] = ["my_cells_registering"]
    values["model"].update(cell="leaky", cell_options=LEAKY)  # every level, the top included
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))

    config = run_config.load(str(path))  # imports the module, which registers "leaky"
    assert "leaky" in cells.registered() and config.imports == ("my_cells_registering",)
    assert config.model.cells() == (("leaky", LEAKY),) * 2
    run = tmp_path / "run"
    first = train.train_and_evaluate(config, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["imports"] == ["my_cells_registering"] and saved["model"]["cell"] == "leaky"
    assert_same_tree(restored(run, 2).params, first.params)  # the restored params are the saved ones

    # Resuming from the run folder alone: its config.yaml brings the imports along.
    cells.unregister("leaky")
    sys.modules.pop("my_cells_registering")
    capsys.readouterr()
    train.main(["--logdir", str(run), "--num_steps", "3"])
    assert f"resuming {run} from step 2" in capsys.readouterr().out
    assert "leaky" in cells.registered()
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    resumed = restored(run, 3)
    assert int(resumed.step) == 3
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(resumed.params), strict=True):
        assert a.shape == b.shape and not np.array_equal(np.asarray(a), np.asarray(b))
