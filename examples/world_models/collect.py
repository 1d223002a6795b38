"""The ``collect`` stage: random-policy rollouts of CarRacing-v3 as compressed shards.

Shard ``k`` (``<run>/rollouts/shard_00000k.npz``) holds episodes ``k * E`` to
``(k + 1) * E - 1`` (``E = shard_episodes``), each seeded by its index, so a shard's
contents do not depend on the workers or on earlier interruptions: a rerun writes only
the shards that are missing. Its arrays, one row per step of the stored episodes:

- ``frames (N, 64, 64, 3)`` uint8: the observation the action was taken on, the
  environment's 96x96 frame (indicator bar included) averaged over areas down to 64x64;
- ``actions (N, 3)`` float32: steering in [-1, 1], gas and brake in [0, 1];
- ``rewards (N,)`` float32 and ``dones (N,)`` bool: what the step returned (``done`` is
  gymnasium's ``terminated``; the last step of an episode cut at ``max_steps`` is not
  done);
- ``episodes (N,)`` int32: the episode of each step;
- ``skipped (K,)`` int32: episodes not stored because a frame was blank or malformed
  (reported on stderr when collected).

The policy draws actions uniformly from the action space and holds each for a random
1 to ``hold`` steps, so that the car gets somewhere instead of jittering in place.
"""

from __future__ import annotations

import multiprocessing
import pathlib
import sys
from collections.abc import Iterator

import numpy as np

import fileio
from world_models.presets import CollectPreset

ENV_ID = "CarRacing-v3"
FRAME_SIZE = 64
ROLLOUT_DIR = "rollouts"


def shrink(frame: np.ndarray) -> np.ndarray:
    """A ``(96, 96, 3)`` uint8 frame averaged over areas down to ``(64, 64, 3)``: each
    output pixel is the mean of the 1.5x1.5 input pixels it covers, rounded (an
    anti-aliasing filter; computed as a 2x2 repeat and a 3x3 block mean)."""
    fine = frame.astype(np.uint16).repeat(2, axis=0).repeat(2, axis=1)
    blocks = fine.reshape(FRAME_SIZE, 3, FRAME_SIZE, 3, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((blocks + 4) // 9).astype(np.uint8)


def frame_problem(frame: np.ndarray) -> str | None:
    """Why ``frame`` is unfit to store (malformed or blank: one colour everywhere), or None."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (96, 96, 3):
        shape = getattr(frame, "shape", None)
        return f"is not a 96x96x3 uint8 frame (shape {shape}, dtype {getattr(frame, 'dtype', None)})"
    if (frame == frame[0, 0]).all():
        return f"is blank (every pixel {frame[0, 0].tolist()})"
    return None


def random_actions(rng: np.random.Generator, steps: int, hold: int) -> np.ndarray:
    """``(steps, 3)`` float32 actions: uniform draws over the action space, each held
    for 1 to ``hold`` steps."""
    out = np.empty((steps, 3), np.float32)
    t = 0
    while t < steps:
        length = int(rng.integers(1, hold + 1))
        action = rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
        out[t : t + length] = action
        t += length
    return out


def episode(seed: int, max_steps: int, hold: int, env=None) -> dict[str, np.ndarray] | str:
    """One random episode's arrays (see the module doc), or why it is not stored."""
    import gymnasium

    env = env or gymnasium.make(ENV_ID, max_episode_steps=max_steps)
    observation, _ = env.reset(seed=seed)
    actions = random_actions(np.random.default_rng([seed, 1]), max_steps, hold)
    frames, rewards, dones = [], [], []
    for t in range(max_steps):
        problem = frame_problem(observation)
        if problem is not None:
            return f"frame {t} {problem}"
        frames.append(shrink(observation))
        observation, reward, terminated, truncated, _ = env.step(actions[t])
        rewards.append(reward)
        dones.append(terminated)
        if terminated or truncated:
            break
    n = len(frames)
    return {"frames": np.stack(frames), "actions": actions[:n],
            "rewards": np.asarray(rewards, np.float32), "dones": np.asarray(dones, bool)}


def shard_path(run: pathlib.Path, index: int) -> pathlib.Path:
    return run / ROLLOUT_DIR / f"shard_{index:06d}.npz"


def missing_shards(run: pathlib.Path, preset: CollectPreset) -> list[int]:
    """The shards of ``preset`` not yet written in ``run``."""
    count = -(-preset.rollouts // preset.shard_episodes)
    return [k for k in range(count) if not shard_path(run, k).is_file()]


def write_shard(run: pathlib.Path, index: int, preset: CollectPreset) -> tuple[int, list[str]]:
    """Collects and writes shard ``index``; returns its steps and the reports of the
    episodes it did not store."""
    import gymnasium

    env = gymnasium.make(ENV_ID, max_episode_steps=preset.max_steps)
    first = index * preset.shard_episodes
    last = min(first + preset.shard_episodes, preset.rollouts)
    parts, skipped, reports = [], [], []
    for i in range(first, last):
        result = episode(preset.seed + i, preset.max_steps, preset.hold, env)
        if isinstance(result, str):
            skipped.append(i)
            reports.append(f"episode {i} (seed {preset.seed + i}): {result}; not stored")
            continue
        parts.append({**result, "episodes": np.full(len(result["frames"]), i, np.int32)})
    env.close()
    arrays = {name: np.concatenate([p[name] for p in parts]) if parts else empty
              for name, empty in (("frames", np.zeros((0, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)),
                                  ("actions", np.zeros((0, 3), np.float32)),
                                  ("rewards", np.zeros(0, np.float32)), ("dones", np.zeros(0, bool)),
                                  ("episodes", np.zeros(0, np.int32)))}
    path = shard_path(run, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.replacing(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays, skipped=np.asarray(skipped, np.int32))
    return len(arrays["frames"]), reports


def _work(args: tuple[pathlib.Path, int, CollectPreset]) -> tuple[int, int, list[str]]:
    run, index, preset = args
    steps, reports = write_shard(run, index, preset)
    return index, steps, reports


def collect(run: pathlib.Path, preset: CollectPreset) -> None:
    """Writes the missing shards of ``preset`` into ``run`` with ``preset.workers``
    processes, a progress bar on stderr."""
    from tqdm import tqdm

    todo = missing_shards(run, preset)
    if not todo:
        print(f"collect: all {preset.rollouts} episodes are in {run / ROLLOUT_DIR}", flush=True)
        return
    jobs = [(run, k, preset) for k in todo]
    bar = tqdm(total=len(todo), desc="collect (shards)", unit="shard", file=sys.stderr,
               disable=not sys.stderr.isatty())
    for index, steps, reports in _results(jobs, preset.workers):
        for line in reports:
            print(f"collect: {line}", file=sys.stderr, flush=True)
        bar.update(1)
        bar.set_postfix(steps=steps)
    bar.close()
    print(f"collect: wrote {len(todo)} shards into {run / ROLLOUT_DIR}", flush=True)


def _results(jobs: list, workers: int) -> Iterator[tuple[int, int, list[str]]]:
    if workers <= 1 or len(jobs) == 1:
        yield from map(_work, jobs)
        return
    # spawn: the parent may hold JAX's threads, which a forked child must not inherit.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_work, jobs)


def load(run: pathlib.Path) -> dict[str, np.ndarray]:
    """Every shard of ``run`` concatenated, in episode order."""
    paths = sorted((run / ROLLOUT_DIR).glob("shard_*.npz"))
    if not paths:
        raise FileNotFoundError(f"no rollouts in {run / ROLLOUT_DIR}: run the collect stage first")
    out: dict[str, list[np.ndarray]] = {}
    for path in paths:
        with np.load(path) as shard:
            for name in ("frames", "actions", "rewards", "dones", "episodes"):
                out.setdefault(name, []).append(shard[name])
    return {name: np.concatenate(parts) for name, parts in out.items()}
