"""The World Models example's stages (examples/world_models) on tiny sizes, in CarRacing-v3."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples_testlib import EXAMPLES
from world_models import collect, controller, memory, vae
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
    times = json.loads((tmp_path / "times.json").read_text())
    assert list(times) == ["collect"] and times["collect"] > 0


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    run = tmp_path_factory.mktemp("wm")
    collect.collect(run, TINY)
    return run


VAE_TINY = dataclasses.replace(PRESETS["smoke"].vae, latent_size=4, filters=2, batch_size=4,
                               steps=4, ckpt_every=2)


def test_world_models_vae_loss_is_squared_error_plus_the_tolerated_kl():
    model = vae.VAE(latent_size=3, filters=2, rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(1), (5, 64, 64, 3))
    key = jax.random.key(2)
    mean, std = (np.asarray(x, np.float64) for x in model.encode(frames))
    z = mean + std * np.asarray(jax.random.normal(key, mean.shape))
    recon = np.asarray(model.decode(jnp.asarray(z, jnp.float32)), np.float64)
    squared = ((recon - np.asarray(frames)) ** 2).sum(axis=(1, 2, 3))
    kl = -0.5 * (1 + np.log(std**2) - mean**2 - std**2).sum(axis=1)  # the original's form
    loss, terms = vae.vae_loss(model, frames, key, kl_tolerance=0.0)
    assert float(loss) == pytest.approx(squared.mean() + kl.mean(), rel=1e-4)
    assert float(terms["kl"]) == pytest.approx(kl.mean(), rel=1e-4)
    floored, _ = vae.vae_loss(model, frames, key, kl_tolerance=100.0)  # floor 300 nats
    assert float(floored) == pytest.approx(squared.mean() + 300.0, rel=1e-5)
    assert model.decode(jnp.zeros((2, 7, 3))).shape == (2, 7, 64, 64, 3)


def test_world_models_vae_resumes_to_the_same_parameters(collected, tmp_path):
    import shutil

    for name in ("once", "twice"):
        shutil.copytree(collected / "rollouts", tmp_path / name / "rollouts")
    whole = vae.train_vae(tmp_path / "once", VAE_TINY)
    vae.train_vae(tmp_path / "twice", dataclasses.replace(VAE_TINY, steps=2))
    resumed = vae.train_vae(tmp_path / "twice", VAE_TINY)
    for a, b in zip(jax.tree.leaves(nnx.state(whole)), jax.tree.leaves(nnx.state(resumed)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "twice" / "vae" / "losses.csv").read_text().splitlines()
    assert lines == (tmp_path / "once" / "vae" / "losses.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step", "1", "2", "3", "4"]
    assert lines[0] == "step,loss,kl,reconstruction"
    loss, kl, reconstruction = map(float, lines[-1].split(",")[1:])
    assert loss == pytest.approx(reconstruction + max(kl, 0.5 * 4), rel=1e-3)  # before the step
    png = (tmp_path / "once" / "vae" / "reconstructions.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    loaded = vae.load_vae(tmp_path / "once", VAE_TINY)
    np.testing.assert_array_equal(np.asarray(loaded.mean.kernel[...]), np.asarray(whole.mean.kernel[...]))


MDN_TINY = dataclasses.replace(PRESETS["smoke"].mdnrnn, hidden_size=8, mixtures=2, seq_len=5,
                               batch_size=3, steps=4, ckpt_every=2)


def test_world_models_episode_bounds_and_windows_mask_short_episodes():
    episodes = np.array([0, 0, 0, 3, 3, 7, 7, 7, 7], np.int32)
    np.testing.assert_array_equal(memory.episode_bounds(episodes), [[0, 3], [3, 5], [5, 9]])
    n = len(episodes)
    data = {"means": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
            "stddevs": np.zeros((n, 2), np.float32), "actions": np.ones((n, 3), np.float32),
            "rewards": np.arange(n, dtype=np.float32), "dones": episodes == 9, "episodes": episodes}
    bounds = memory.episode_bounds(episodes)
    w = memory.sample_windows(data, bounds, dataclasses.replace(MDN_TINY, batch_size=16), 0)
    assert w.latents.shape == (16, 5, 2) and w.mask.shape == (16, 5)
    for i in range(16):
        m = int(w.mask[i].sum())
        assert m in (2, 3, 4) and not w.mask[i, m:].any()  # no episode holds 5 steps
        rewards = np.asarray(w.rewards[i, :m]).astype(int)
        assert (np.diff(rewards) == 1).all()  # consecutive steps of one episode
        np.testing.assert_array_equal(np.asarray(w.latents[i, :m]), data["means"][rewards])  # stddev 0
        assert len({int(episodes[r]) for r in rewards}) == 1


def test_world_models_memory_loss_ignores_padded_steps_and_reads_only_the_past():
    model = memory.build(4, MDN_TINY, seed=1)
    key = jax.random.split(jax.random.key(0), 4)
    w = memory.Windows(jax.random.normal(key[0], (2, 6, 4)), jax.random.uniform(key[1], (2, 6, 3)),
                       jax.random.normal(key[2], (2, 6)), jnp.zeros((2, 6), bool),
                       jnp.array([[True] * 6, [True] * 4 + [False] * 2]))
    loss, terms = memory.memory_loss(model, w)
    changed = w._replace(latents=w.latents.at[1, 4:].set(9.0), rewards=w.rewards.at[1, 4:].set(-5.0),
                         dones=w.dones.at[1, 4:].set(True))
    np.testing.assert_allclose(np.asarray(memory.memory_loss(model, changed)[0]), np.asarray(loss), rtol=1e-6)
    # The reward predicted for step t reads z_<=t and a_<=t only.
    b, n, s = w.latents.shape
    latents = jnp.concatenate([w.latents, jnp.zeros((b, 1, s))], axis=1)
    contexts = jnp.concatenate([jnp.zeros((b, 1, 3)), w.actions], axis=1)
    reward = model.heads(model.cell.predict(latents, contexts).hidden[:, 1:])[0]
    later = latents.at[:, 3:].add(1.0)
    reward_later = model.heads(model.cell.predict(later, contexts).hidden[:, 1:])[0]
    np.testing.assert_array_equal(np.asarray(reward[:, :3]), np.asarray(reward_later[:, :3]))
    assert not np.allclose(np.asarray(reward[:, 3:]), np.asarray(reward_later[:, 3:]))
    mse = float(jnp.mean(jnp.square(reward[0] - w.rewards[0])))
    mse_short = float(jnp.mean(jnp.square(reward[1, :4] - w.rewards[1, :4])))
    assert float(terms["reward_mse"]) == pytest.approx((6 * mse + 4 * mse_short) / 10, rel=1e-5)


def test_world_models_encode_and_mdnrnn_stages_resume(collected, tmp_path):
    import shutil

    for name in ("once", "twice"):
        shutil.copytree(collected / "rollouts", tmp_path / name / "rollouts")
        vae.train_vae(tmp_path / name, VAE_TINY)
        memory.encode(tmp_path / name, VAE_TINY)
    latents = memory.load_latents(tmp_path / "once")
    assert latents["means"].shape == (36, 4) and (latents["stddevs"] > 0).all()
    np.testing.assert_array_equal(latents["episodes"], np.repeat([0, 1, 2], 12))
    whole = memory.train_mdnrnn(tmp_path / "once", MDN_TINY, VAE_TINY)
    memory.train_mdnrnn(tmp_path / "twice", dataclasses.replace(MDN_TINY, steps=2), VAE_TINY)
    resumed = memory.train_mdnrnn(tmp_path / "twice", MDN_TINY, VAE_TINY)
    for a, b in zip(jax.tree.leaves(nnx.state(whole)), jax.tree.leaves(nnx.state(resumed)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    header = (tmp_path / "once" / "mdnrnn" / "losses.csv").read_text().splitlines()[0]
    assert header == "step,loss,done_bce,latent_nll,reward_mse"
    from PIL import Image

    with Image.open(tmp_path / "once" / "mdnrnn" / "predictions.gif") as gif:
        assert gif.size == (3 * 64, 64) and gif.n_frames == 12


def test_world_models_controller_squashes_as_the_original():
    raw = jnp.array([[0.0, 0.0, 0.0], [30.0, -30.0, -2.0], [np.arctanh(0.5), np.arctanh(0.5), np.arctanh(0.25)]])
    np.testing.assert_allclose(np.asarray(controller.squash(raw)),
                               [[0.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 0.75, 0.25]], atol=1e-6)
    # act: a linear map of [z, h] (weights (S + D, 3) row-major, then 3 biases).
    z, h = np.array([[1.0, 2.0]]), np.array([[3.0]])
    weights = np.arange(9, dtype=np.float32).reshape(3, 3) / 100
    params = np.concatenate([weights.reshape(-1), [0.1, -0.2, 0.3]]).astype(np.float32)
    assert len(params) == controller.parameter_count(2, 1)
    raw = np.concatenate([z, h], axis=1) @ weights + params[9:]
    np.testing.assert_allclose(np.asarray(controller.act(jnp.asarray(params), jnp.asarray(z, jnp.float32),
                                                         jnp.asarray(h, jnp.float32))),
                               np.asarray(controller.squash(jnp.asarray(raw))), rtol=1e-6)


@pytest.fixture(scope="module")
def trained(collected, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("wm_trained")
    shutil.copytree(collected / "rollouts", run / "rollouts")
    vae.train_vae(run, VAE_TINY)
    memory.encode(run, VAE_TINY)
    memory.train_mdnrnn(run, MDN_TINY, VAE_TINY)
    return run


CONTROLLER_TINY = dataclasses.replace(PRESETS["smoke"].controller, population=4, rollouts=2,
                                      generations=2, max_steps=8, dream_steps=6, workers=1,
                                      eval_episodes=2)
PRESET_TINY = dataclasses.replace(PRESETS["smoke"], collect=TINY, vae=VAE_TINY, mdnrnn=MDN_TINY,
                                  controller=CONTROLLER_TINY)


def test_world_models_dream_shapes_and_temperature_zero_is_deterministic(trained):
    population = np.random.default_rng(0).normal(0, 0.1, (5, controller.parameter_count(4, 8)))
    starts = controller.start_latents(trained, 3, np.random.default_rng(1))
    assert starts.shape == (3, 4)
    returns = {}
    for tau in (0.0, 1.15):
        model = memory.load_memory(trained, MDN_TINY, 4, temperature=tau)
        returns[tau] = [controller.dream_returns(model, population, starts, 6, jax.random.key(k))
                        for k in (0, 1)]
        assert returns[tau][0].shape == (5,)
    np.testing.assert_array_equal(returns[0.0][0], returns[0.0][1])  # no noise at 0
    assert not np.array_equal(returns[1.15][0], returns[1.15][1])
    # Each candidate's return is its own: a candidate scored alone gets the same.
    alone = controller.dream_returns(memory.load_memory(trained, MDN_TINY, 4, temperature=0.0),
                                     population[2:3], starts, 6, jax.random.key(0))
    np.testing.assert_allclose(alone, returns[0.0][0][2:3], rtol=1e-5)


def test_world_models_controller_resumes_cma_es_exactly(trained, tmp_path):
    import shutil

    for name in ("once", "twice"):
        shutil.copytree(trained, tmp_path / name)
    controller.train_controller(tmp_path / "once", PRESET_TINY, "dream")
    one = dataclasses.replace(PRESET_TINY, controller=dataclasses.replace(CONTROLLER_TINY, generations=1))
    controller.train_controller(tmp_path / "twice", one, "dream")
    np.random.seed(12345)  # whatever else draws from NumPy's global generator in between
    best = controller.train_controller(tmp_path / "twice", PRESET_TINY, "dream")
    np.testing.assert_array_equal(best, np.load(tmp_path / "once" / "controller-dream" / "best.npy"))
    history = (tmp_path / "twice" / "controller-dream" / "history.csv").read_text()
    assert history == (tmp_path / "once" / "controller-dream" / "history.csv").read_text()
    assert history.splitlines()[0] == "generation,best,mean,worst" and len(history.splitlines()) == 3
    with pytest.raises(ValueError, match="mode must be one of"):
        controller.train_controller(tmp_path / "once", PRESET_TINY, "imagined")


def test_world_models_real_controller_and_evaluation(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    best = controller.train_controller(run, PRESET_TINY, "real")
    assert best.shape == (controller.parameter_count(4, 8),)
    agent = controller.Agent.from_run(run, PRESET_TINY)
    first = agent.episode(best, 5)[0]
    assert agent.episode(best, 5)[0] == first  # seeded: the same episode
    results = controller.evaluate(run, PRESET_TINY)
    assert set(results) == {"random", "real"}
    for r in results.values():
        assert r["episodes"] == 2 and r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]
        assert r["mean"] == pytest.approx(np.mean(r["returns"]), abs=0.01)
    assert json.loads((run / "evaluation.json").read_text())["real"]["mean"] == results["real"]["mean"]
    assert (run / "episode-real.gif").read_bytes()[:3] == b"GIF"


def test_world_models_a_stalled_training_episode_ends_scored_as_if_run_to_the_end(trained):
    preset = dataclasses.replace(PRESET_TINY, controller=dataclasses.replace(CONTROLLER_TINY, max_steps=60))
    agent = controller.Agent.from_run(trained, preset)
    still = np.zeros(controller.parameter_count(4, 8), np.float32)
    still[-3:] = [0.0, -10.0, 10.0]  # no gas, full brake: no new tile after the start
    full, frames_full = agent.episode(still, 3, keep_frames=True)
    cut, frames_cut = agent.episode(still, 3, keep_frames=True, patience=10)
    assert len(frames_full) == 60 and 10 <= len(frames_cut) < 30
    assert cut == pytest.approx(full, abs=1e-6)  # each step left: -0.1, as it earned


def test_world_models_generations_flag_overrides_the_preset(tmp_path, monkeypatch, capsys):
    from world_models.__main__ import main

    seen = []
    monkeypatch.setattr(controller, "train_controller",
                        lambda run, preset, mode: seen.append((preset.controller.generations, mode)))
    main(["train-controller", "--run", str(tmp_path), "--preset", "smoke", "--mode", "dream",
          "--generations", "7"])
    assert seen == [(7, "dream")]
    with pytest.raises(SystemExit):
        main(["train-controller", "--run", str(tmp_path), "--generations", "0"])
    assert "--generations: must be a positive int, got '0'" in capsys.readouterr().err
