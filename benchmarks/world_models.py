"""Time each stage of the World Models example at a preset's sizes; run by hand, never as a test.

    .venv/bin/python benchmarks/world_models.py                  # the small preset
    .venv/bin/python benchmarks/world_models.py --preset paper

Per stage, in steady state (after a warm-up that compiles): ``collect`` frames per second
of one process stepping CarRacing-v3 under the random policy and shrinking its frames
(the stage runs ``workers`` such processes); ``train-vae`` and ``train-mdnrnn`` steps per
second of the stage's jitted step at the preset's batch; ``real`` candidate rollouts per
second of one process (an untrained controller driving the car for ``max_steps``, each
step encoded and fed to the memory, as in the real-mode controller training) and
``dream`` rollouts per second of the whole population's jitted scan. The models are
freshly initialised (speed does not depend on training). Needs the ``worldmodels``
extra. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import benchlib
import cpuinfo
from world_models import collect, controller, loop, memory, vae
from world_models.presets import PRESETS


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall seconds of ``repeats`` calls of ``fn`` (after one that is not counted)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--collect-steps", type=int, default=300, help="environment steps timed")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each step")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"preset": args.preset, "cpu": cpuinfo.cpu_model(),
                              "jax": jax.__version__}

    collect.episode(0, 5, p.collect.hold)  # the environment's first start (imports, fonts)
    started = time.perf_counter()
    steps = len(collect.episode(1, args.collect_steps, p.collect.hold)["frames"])
    out["collect_frames_per_s_per_process"] = round(steps / (time.perf_counter() - started), 1)
    print(f"collect: {out['collect_frames_per_s_per_process']} frames/s per process "
          f"({p.collect.workers} processes in the stage)", flush=True)

    v = p.vae
    graphdef, params = nnx.split(vae.VAE(v.latent_size, v.filters, rngs=nnx.Rngs(0)))
    optimizer = optax.adam(v.lr)
    step = loop.make_step(optimizer, lambda q, x, key: vae.vae_loss(nnx.merge(graphdef, q), x, key,
                                                                    v.kl_tolerance))
    state = loop.initial_state(params, optimizer)
    frames = jnp.asarray(rng.random((v.batch_size, *vae.FRAME_SHAPE), np.float32))
    seconds = median_seconds(lambda: step(state, frames, jax.random.key(0)), args.repeats)
    out["vae_steps_per_s"] = round(1 / seconds, 2)
    print(f"train-vae: {out['vae_steps_per_s']} steps/s at batch {v.batch_size}", flush=True)

    m = p.mdnrnn
    model = memory.build(v.latent_size, m)
    graphdef, params = nnx.split(model)
    optimizer = optax.chain(optax.clip_by_global_norm(m.grad_clip), optax.adam(m.lr))
    step = loop.make_step(optimizer, lambda q, w, key: memory.memory_loss(nnx.merge(graphdef, q), w))
    state = loop.initial_state(params, optimizer)
    shape = (m.batch_size, m.seq_len)
    windows = memory.Windows(
        latents=jnp.asarray(rng.standard_normal((*shape, v.latent_size)), jnp.float32),
        actions=jnp.asarray(rng.random((*shape, memory.ACTION_SIZE)), jnp.float32),
        rewards=jnp.asarray(rng.standard_normal(shape), jnp.float32),
        dones=jnp.zeros(shape, bool), mask=jnp.ones(shape, bool))
    seconds = median_seconds(lambda: step(state, windows, jax.random.key(0)), args.repeats)
    out["mdnrnn_steps_per_s"] = round(1 / seconds, 2)
    print(f"train-mdnrnn: {out['mdnrnn_steps_per_s']} steps/s at batch {m.batch_size} x "
          f"{m.seq_len} steps", flush=True)

    c = p.controller
    n = controller.parameter_count(v.latent_size, m.hidden_size)
    agent = controller.Agent(vae.VAE(v.latent_size, v.filters, rngs=nnx.Rngs(0)), model,
                             c.max_steps, p.collect.hold)
    candidate = (0.1 * rng.standard_normal(n)).astype(np.float32)
    agent.episode(candidate, 0)  # compiles the per-frame step
    started = time.perf_counter()
    steps = len(agent.episode(candidate, 1, keep_frames=True)[1])
    seconds = time.perf_counter() - started
    out["real_steps_per_s_per_process"] = round(steps / seconds, 1)
    out["real_rollouts_per_s_per_process"] = round(steps / seconds / c.max_steps, 3)
    print(f"train-controller real: {out['real_rollouts_per_s_per_process']} rollouts of "
          f"{c.max_steps} steps/s per process ({steps} steps in {seconds:.1f} s)", flush=True)

    population = (0.1 * rng.standard_normal((c.population, n))).astype(np.float32)
    starts = rng.standard_normal((c.rollouts, v.latent_size)).astype(np.float32)
    dreamer = memory.build(v.latent_size, m, temperature=c.temperature)
    seconds = median_seconds(lambda: controller.dream_returns(
        dreamer, population, starts, c.dream_steps, jax.random.key(0)), args.repeats)
    out["dream_rollouts_per_s"] = round(c.population * c.rollouts / seconds, 1)
    print(f"train-controller dream: {out['dream_rollouts_per_s']} rollouts/s ({c.population} "
          f"candidates x {c.rollouts} episodes x {c.dream_steps} steps in {seconds:.2f} s)",
          flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
