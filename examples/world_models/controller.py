"""The ``train-controller`` and ``evaluate`` stages: World Models' controller.

The controller is linear on ``[z, h]`` (the VAE's latent of the current frame and the
memory's LSTM output before it reads that latent), ``3 (S + D) + 3`` parameters, with the
original's squashing: steering ``tanh``, gas ``(tanh + 1) / 2``, brake ``clip(tanh, 0,
1)``. CMA-ES (the ``cma`` package, pycma: Hansen's reference implementation, which the
original used too; its state pickles, so a run resumes after any generation) maximises
the mean return of ``rollouts`` episodes per candidate, every candidate of a generation
on the same episode seeds.

- ``real``: episodes in CarRacing-v3, run by ``workers`` processes. Per step the frame is
  shrunk to 64x64 and encoded (a sample of ``q(z | x)``, as the original), the action
  taken, and the memory advanced on ``[z, a]``.
- ``dream``: episodes imagined by the memory at ``temperature``, from the latents of
  collected first frames: the memory samples the next latent, its heads give the reward
  and the end (``sigmoid(done logit) > 0.5``). The whole population runs as one jitted,
  batched scan. The dream-trained controller is then scored in the real environment by
  ``evaluate``.

Folders ``<run>/controller-<mode>/``: ``es.pkl`` (CMA-ES and NumPy's random state),
``history.csv`` (per generation the best, mean and worst return), ``best.npy`` (the best
candidate so far). ``evaluate`` writes ``<run>/evaluation.json`` and
``<run>/episode-<mode>.gif`` for each trained controller and a random policy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import pathlib
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fileio
import media
from clockwork.cells.mdn import MDNCarry
from world_models import collect, memory, vae
from world_models.presets import Preset

MODES = ("real", "dream")
EVAL_SEED = 1_000_000  # evaluation episodes' seeds start here, apart from training's
STEP_COST = 0.1  # CarRacing's reward per step: -0.1, plus 1000 / tiles for each new tile


def squash(raw: jax.Array) -> jax.Array:
    """``(..., 3)`` raw outputs to actions: steering, gas, brake."""
    t = jnp.tanh(raw)
    return jnp.stack([t[..., 0], (t[..., 1] + 1.0) / 2.0, jnp.clip(t[..., 2], 0.0, 1.0)], axis=-1)


def parameter_count(latent_size: int, hidden_size: int) -> int:
    return 3 * (latent_size + hidden_size) + 3


def act(params: jax.Array, z: jax.Array, h: jax.Array) -> jax.Array:
    """Actions ``(B, 3)`` of controllers ``params (B, P)`` (or ``(P,)``, shared) on
    ``z (B, S)`` and ``h (B, D)``."""
    x = jnp.concatenate([z, h], axis=-1)
    n = x.shape[-1]
    params = jnp.broadcast_to(params, (x.shape[0], params.shape[-1]))
    weights = params[:, : 3 * n].reshape(-1, n, 3)
    return squash(jnp.einsum("bi,bio->bo", x, weights) + params[:, 3 * n :])


# -- the real environment ---------------------------------------------------------------


class Agent:
    """The VAE, the memory and a controller, acting in CarRacing-v3 one frame at a time."""

    def __init__(self, vision: vae.VAE, memory_model: memory.MemoryModel, max_steps: int,
                 hold: int):
        self.vision, self.memory = vision, memory_model
        self.max_steps, self.hold = max_steps, hold
        cell = memory_model.cell
        # The memory's own sample of the next latent is replaced by the next frame's, so
        # its noise is not read: zeros, made once.
        shapes = jax.eval_shape(lambda key: cell.noise(key, 1), jax.random.key(0))
        no_noise = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        @jax.jit
        def step(carry: MDNCarry, frame: jax.Array, params: jax.Array, key: jax.Array):
            mean, std = self.vision.encode(frame[None].astype(jnp.float32) / 255.0)
            z = mean + std * jax.random.normal(key, mean.shape)
            action = act(params, z, carry.hidden)
            carry, _ = cell(carry._replace(sample=z), None, action, no_noise, use_obs=False)
            return carry, action[0]

        self._step = step

    @classmethod
    def from_run(cls, run: pathlib.Path, preset: Preset) -> Agent:
        """The agent of ``run``'s trained VAE and memory."""
        return cls(vae.load_vae(run, preset.vae),
                   memory.load_memory(run, preset.mdnrnn, preset.vae.latent_size),
                   preset.controller.max_steps, preset.collect.hold)

    def episode(self, params: np.ndarray | None, seed: int, keep_frames: bool = False,
                patience: int | None = None) -> tuple[float, list[np.ndarray]]:
        """The return of one episode (``params`` None: the collect stage's random policy)
        and, with ``keep_frames``, its 96x96 frames. With ``patience`` the episode ends
        after that many steps in a row without a new tile (a step's reward > 0), and the
        steps left count ``-STEP_COST`` each, as they would without a new tile."""
        import gymnasium

        env = gymnasium.make(collect.ENV_ID, max_episode_steps=self.max_steps)
        observation, _ = env.reset(seed=seed)
        carry = self.memory.cell.initial_state(1)
        key = jax.random.key(seed)
        randoms = collect.random_actions(np.random.default_rng([seed, 1]), self.max_steps, self.hold)
        total, frames, stalled = 0.0, [], 0
        for t in range(self.max_steps):
            if keep_frames:
                frames.append(observation)
            if params is None:
                action = randoms[t]
            else:
                carry, action = self._step(carry, jnp.asarray(collect.shrink(observation)),
                                           jnp.asarray(params, jnp.float32), jax.random.fold_in(key, t))
                action = np.asarray(action)
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
            stalled = 0 if reward > 0 else stalled + 1
            if patience is not None and stalled >= patience:
                total -= STEP_COST * (self.max_steps - 1 - t)
                break
        env.close()
        return total, frames


_AGENT: Agent | None = None


def _init_worker(run: pathlib.Path, preset: Preset) -> None:
    global _AGENT
    _AGENT = Agent.from_run(run, preset)


def _episode_return(task: tuple[np.ndarray | None, int, int | None]) -> float:
    assert _AGENT is not None
    params, seed, patience = task
    return _AGENT.episode(params, seed, patience=patience)[0]


@contextlib.contextmanager
def episode_runner(run: pathlib.Path, preset: Preset
                   ) -> Iterator[Callable[[list[tuple[np.ndarray | None, int, int | None]]], list[float]]]:
    """A function from ``(params, seed, patience)`` episodes to their returns, run by
    ``preset.controller.workers`` processes that live as long as the block (each loads
    the models once), or in this process when ``workers`` is 1."""
    workers = preset.controller.workers
    if workers <= 1:
        _init_worker(run, preset)
        yield lambda tasks: [_episode_return(t) for t in tasks]
        return
    context = multiprocessing.get_context("spawn")  # the parent holds JAX's threads
    with context.Pool(workers, initializer=_init_worker, initargs=(run, preset)) as pool:
        yield lambda tasks: pool.map(_episode_return, tasks, chunksize=1)


# -- the dream --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 4))
def _dream(graphdef, state, population, starts, steps, key):
    model = nnx.merge(graphdef, state)
    cell = model.cell
    p, r = population.shape[0], starts.shape[0]
    params = jnp.repeat(population, r, axis=0)  # (P * R, n): candidate-major
    carry = cell.initial_state(p * r)._replace(sample=jnp.tile(starts, (p, 1)))

    def body(state, t):
        carry, total, alive = state
        action = act(params, carry.sample, carry.hidden)
        noise = cell.noise(jax.random.fold_in(key, t), p * r)
        carry, _ = cell(carry, None, action, noise, use_obs=False)
        reward, done_logit = model.heads(carry.hidden)
        total = total + alive * reward
        alive = alive * (jax.nn.sigmoid(done_logit) <= 0.5).astype(alive.dtype)
        return (carry, total, alive), None

    zeros = jnp.zeros(p * r)
    (_, total, _), _ = jax.lax.scan(body, (carry, zeros, zeros + 1.0), jnp.arange(steps))
    return total.reshape(p, r).mean(axis=1)


def dream_returns(model: memory.MemoryModel, population: np.ndarray, starts: np.ndarray,
                  steps: int, key: jax.Array) -> np.ndarray:
    """Mean dreamed return ``(P,)`` of each candidate over episodes from ``starts (R, S)``
    (every candidate from the same starts and noise)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_dream(graphdef, state, jnp.asarray(population, jnp.float32),
                             jnp.asarray(starts, jnp.float32), steps, key))


def start_latents(run: pathlib.Path, count: int, rng: np.random.Generator) -> np.ndarray:
    """Latents sampled from ``q(z | x)`` of ``count`` collected first frames."""
    data = memory.load_latents(run)
    firsts = memory.episode_bounds(data["episodes"])[:, 0]
    rows = firsts[rng.integers(0, len(firsts), count)]
    return data["means"][rows] + data["stddevs"][rows] * rng.standard_normal(data["means"][rows].shape)


# -- CMA-ES ---------------------------------------------------------------------------


def episode_seeds(seed: int, generation: int, count: int) -> list[int]:
    """The seeds every candidate of ``generation`` is scored on."""
    return np.random.default_rng([seed, generation]).integers(0, 2**31 - 1, count).tolist()


def train_controller(run: pathlib.Path, preset: Preset, mode: str) -> np.ndarray:
    """Runs (or resumes) CMA-ES in ``mode`` (``real`` or ``dream``); returns the best
    candidate."""
    import cma

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    c = preset.controller
    folder = run / f"controller-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    n = parameter_count(preset.vae.latent_size, preset.mdnrnn.hidden_size)
    state_path, history_path = folder / "es.pkl", folder / "history.csv"
    if state_path.is_file():
        with state_path.open("rb") as f:
            es, random_state, generation = pickle.load(f)
        np.random.set_state(random_state)  # pycma draws from NumPy's global generator
    else:
        es = cma.CMAEvolutionStrategy(np.zeros(n), c.sigma,
                                      {"popsize": c.population, "seed": c.seed + 1, "verbose": -9})
        generation = 0
    history = history_path.read_text().splitlines()[: generation + 1] if generation else [
        "generation,best,mean,worst"]
    with contextlib.ExitStack() as stack:
        if mode == "real":
            returns_of = stack.enter_context(episode_runner(run, preset))

            def score(population: np.ndarray, seeds: list[int]) -> np.ndarray:
                tasks = [(x, s, c.patience) for x in population for s in seeds]
                return np.asarray(returns_of(tasks)).reshape(len(population), -1).mean(axis=1)
        else:
            model = memory.load_memory(run, preset.mdnrnn, preset.vae.latent_size, c.temperature)

            def score(population: np.ndarray, seeds: list[int]) -> np.ndarray:
                starts = start_latents(run, c.rollouts, np.random.default_rng(seeds))
                return dream_returns(model, population, starts, c.dream_steps,
                                     jax.random.key(seeds[0]))

        while generation < c.generations:
            population = np.asarray(es.ask())
            returns = score(population, episode_seeds(c.seed, generation, c.rollouts))
            es.tell(list(population), (-returns).tolist())
            generation += 1
            history.append(f"{generation},{returns.max():.2f},{returns.mean():.2f},{returns.min():.2f}")
            with fileio.replacing(folder / "best.npy") as tmp, tmp.open("wb") as f:
                np.save(f, np.asarray(es.result.xbest, np.float32))
            with fileio.replacing(history_path) as tmp:
                tmp.write_text("\n".join(history) + "\n")
            with fileio.replacing(state_path) as tmp, tmp.open("wb") as f:
                pickle.dump((es, np.random.get_state(), generation), f)
            print(f"train-controller {mode}: generation {generation}/{c.generations}: best "
                  f"{returns.max():.1f}, mean {returns.mean():.1f}", flush=True)
    return np.load(folder / "best.npy")


# -- evaluation -------------------------------------------------------------------------


def score_summary(returns: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and quartiles of episode returns."""
    x = np.asarray(returns, np.float64)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"episodes": len(x), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "min": float(x.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(x.max()), "returns": x.round(2).tolist()}


def evaluate(run: pathlib.Path, preset: Preset) -> dict[str, Any]:
    """Scores the random policy and every trained controller of ``run`` over the same
    ``eval_episodes`` seeded real episodes; writes ``evaluation.json`` and a GIF each."""
    c = preset.controller
    seeds = list(range(EVAL_SEED, EVAL_SEED + c.eval_episodes))
    policies: dict[str, np.ndarray | None] = {"random": None}
    for mode in MODES:
        best = run / f"controller-{mode}" / "best.npy"
        if best.is_file():
            policies[mode] = np.load(best)
    results = {}
    agent = Agent.from_run(run, preset)
    with episode_runner(run, preset) as returns_of:
        returns = {name: returns_of([(params, s, None) for s in seeds])
                   for name, params in policies.items()}
    for name, params in policies.items():
        results[name] = score_summary(returns[name])
        _, frames = agent.episode(params, seeds[0], keep_frames=True)
        media.save_gif(run / f"episode-{name}.gif", np.stack(frames[::2]), fps=25)
        print(f"evaluate {name}: mean {results[name]['mean']:.1f} ± {results[name]['std']:.1f} "
              f"over {len(seeds)} episodes", flush=True)
    with fileio.replacing(run / "evaluation.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    return results
