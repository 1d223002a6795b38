"""The ``encode`` and ``train-mdnrnn`` stages: World Models' memory on the VAE's latents.

``encode`` writes ``<run>/latents.npz``: per collected step the mean and standard
deviation ``(N, 32)`` of ``q(z | frame)``, with the actions, rewards, done flags and
episodes of the rollouts.

``train-mdnrnn`` trains :class:`MemoryModel`: :class:`clockwork.cells.MDNRNNCell` (an
LSTM whose output is a Gaussian mixture per latent dimension over the next latent,
trained by teacher forcing with ``cell.predict``) and two heads on the LSTM's output
that predict the reward and the end of the step just taken, for the dream. Step ``t`` of
a window reads ``[z_{t-1}, a_{t-1}]``; its output ``h_t`` gives the mixture over ``z_t``
and the reward and done flag of step ``t - 1``. Latents are sampled from ``q`` afresh for
every batch, as the original did. The loss is the mixture's negative log-likelihood per
latent dimension, plus the reward's squared error, plus the done flag's cross-entropy.
``<run>/mdnrnn/``: ``state.npz``, ``losses.csv`` (``loop.fit``) and ``predictions.gif``
(the true frame, the VAE's reconstruction, and the decoded one-step prediction).
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fileio
import media
from clockwork.cells import MDNRNNCell
from world_models import collect, loop, vae
from world_models.presets import MdnRnnPreset, VaePreset

LATENTS_FILE = "latents.npz"
MDNRNN_DIR = "mdnrnn"
ACTION_SIZE = 3


def encode(run: pathlib.Path, preset: VaePreset, chunk: int = 1000) -> None:
    """Writes ``<run>/latents.npz`` (skipped when it exists)."""
    path = run / LATENTS_FILE
    if path.is_file():
        print(f"encode: {path} exists", flush=True)
        return
    model = vae.load_vae(run, preset)
    rollouts = collect.load(run)
    encode_chunk = jax.jit(lambda x: model.encode(x.astype(jnp.float32) / 255.0))
    means, stddevs = [], []
    for begin in range(0, len(rollouts["frames"]), chunk):
        mean, std = encode_chunk(jnp.asarray(rollouts["frames"][begin : begin + chunk]))
        means.append(np.asarray(mean))
        stddevs.append(np.asarray(std))
    arrays = {k: v for k, v in rollouts.items() if k != "frames"}
    with fileio.replacing(path) as tmp, tmp.open("wb") as f:
        np.savez(f, means=np.concatenate(means), stddevs=np.concatenate(stddevs), **arrays)
    print(f"encode: {len(rollouts['frames'])} frames -> {path}", flush=True)


def load_latents(run: pathlib.Path) -> dict[str, np.ndarray]:
    path = run / LATENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no latents in {run}: run the encode stage first")
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


class MemoryModel(nnx.Module):
    """The MDN-RNN cell and its reward and done heads on ``h``."""

    def __init__(self, latent_size: int, hidden_size: int = 256, mixtures: int = 5, *,
                 temperature: float = 1.0, rngs: nnx.Rngs):
        # The cell's posterior (embed_size, hidden_size) is not used: World Models trains
        # the memory on given latents, so it is kept at the smallest size.
        self.cell = MDNRNNCell(1, ACTION_SIZE, stoch_size=latent_size, det_size=hidden_size,
                               hidden_size=1, mixtures=mixtures, temperature=temperature, rngs=rngs)
        self.reward = nnx.Linear(hidden_size, 1, rngs=rngs)
        self.done = nnx.Linear(hidden_size, 1, rngs=rngs)

    def heads(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The predicted reward and the done logit of ``hidden (..., D)``: each ``(...)``."""
        return self.reward(hidden)[..., 0], self.done(hidden)[..., 0]


class Windows(NamedTuple):
    """A batch of windows ``(B, L, ...)``: latents, actions, rewards, dones, and the mask
    of real (not padded) steps."""

    latents: jax.Array
    actions: jax.Array
    rewards: jax.Array
    dones: jax.Array
    mask: jax.Array


def memory_loss(model: MemoryModel, w: Windows) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of the module doc on a batch of windows, and its three terms."""
    b, n, s = w.latents.shape
    latents = jnp.concatenate([w.latents, jnp.zeros((b, 1, s), w.latents.dtype)], axis=1)
    contexts = jnp.concatenate([jnp.zeros((b, 1, ACTION_SIZE), w.actions.dtype), w.actions], axis=1)
    prior = model.cell.predict(latents, contexts)  # step t: p(z_t | z_<t, a_<t)
    mask = w.mask.astype(latents.dtype)
    nll = -prior.log_prob(latents)[:, 1:n]  # z_1 .. z_{n-1}
    z_nll = jnp.sum(nll * mask[:, 1:]) / (jnp.maximum(jnp.sum(mask[:, 1:]), 1.0) * s)
    reward, done_logit = model.heads(prior.hidden[:, 1:])  # steps 0 .. n-1
    count = jnp.maximum(jnp.sum(mask), 1.0)
    reward_loss = jnp.sum(jnp.square(reward - w.rewards) * mask) / count
    dones = w.dones.astype(latents.dtype)
    done_loss = jnp.sum(optax.sigmoid_binary_cross_entropy(done_logit, dones) * mask) / count
    return z_nll + reward_loss + done_loss, {"latent_nll": z_nll, "reward_mse": reward_loss,
                                             "done_bce": done_loss}


def episode_bounds(episodes: np.ndarray) -> np.ndarray:
    """``(E, 2)`` first and one-past-last row of each episode of a sorted ``episodes``."""
    starts = np.flatnonzero(np.diff(episodes, prepend=episodes[:1] - 1))
    return np.stack([starts, np.append(starts[1:], len(episodes))], axis=1)


def sample_windows(data: dict[str, np.ndarray], bounds: np.ndarray, preset: MdnRnnPreset,
                   t: int) -> Windows:
    """Batch ``t``: windows of ``seq_len`` steps at random places of random episodes
    (episodes shorter than that padded and masked), latents sampled from ``q``."""
    rng = np.random.default_rng([preset.seed, t])
    n, b = preset.seq_len, preset.batch_size
    size = data["means"].shape[-1]
    out = {"latents": np.zeros((b, n, size), np.float32), "actions": np.zeros((b, n, ACTION_SIZE), np.float32),
           "rewards": np.zeros((b, n), np.float32), "dones": np.zeros((b, n), bool),
           "mask": np.zeros((b, n), bool)}
    for i, e in enumerate(rng.integers(0, len(bounds), b)):
        first, end = bounds[e]
        start = first + int(rng.integers(0, max(end - first - n, 0) + 1))
        rows = slice(start, min(start + n, end))
        m = rows.stop - rows.start
        noise = rng.standard_normal((m, size)).astype(np.float32)
        out["latents"][i, :m] = data["means"][rows] + data["stddevs"][rows] * noise
        out["actions"][i, :m] = data["actions"][rows]
        out["rewards"][i, :m] = data["rewards"][rows]
        out["dones"][i, :m] = data["dones"][rows]
        out["mask"][i, :m] = True
    return Windows(**{k: jnp.asarray(v) for k, v in out.items()})


def build(latent_size: int, preset: MdnRnnPreset, temperature: float = 1.0, seed: int = 0) -> MemoryModel:
    return MemoryModel(latent_size, preset.hidden_size, preset.mixtures, temperature=temperature,
                       rngs=nnx.Rngs(seed))


def train_mdnrnn(run: pathlib.Path, preset: MdnRnnPreset, vae_preset: VaePreset) -> MemoryModel:
    """Trains (or resumes) the memory on ``<run>/latents.npz``; returns it."""
    data = load_latents(run)
    bounds = episode_bounds(data["episodes"])
    graphdef, params = nnx.split(build(data["means"].shape[-1], preset, seed=preset.seed))
    optimizer = optax.chain(optax.clip_by_global_norm(preset.grad_clip), optax.adam(preset.lr))

    def loss(p, windows, key):
        del key  # the latents' noise is drawn with the batch
        return memory_loss(nnx.merge(graphdef, p), windows)

    folder = run / MDNRNN_DIR
    params = loop.fit(folder, params, optimizer, loss, lambda t: sample_windows(data, bounds, preset, t),
                      steps=preset.steps, ckpt_every=preset.ckpt_every, seed=preset.seed)
    model = nnx.merge(graphdef, params)
    write_predictions(folder / "predictions.gif", run, model, vae.load_vae(run, vae_preset), data, bounds)
    print(f"train-mdnrnn: {loop.summary(folder)}; wrote {folder}", flush=True)
    return model


def load_memory(run: pathlib.Path, preset: MdnRnnPreset, latent_size: int,
                temperature: float = 1.0) -> MemoryModel:
    """The trained memory of ``run`` (sampling at ``temperature``)."""
    graphdef, params = nnx.split(build(latent_size, preset, temperature))
    optimizer = optax.chain(optax.clip_by_global_norm(preset.grad_clip), optax.adam(preset.lr))
    return nnx.merge(graphdef, loop.load_params(run / MDNRNN_DIR, params, optimizer, "train-mdnrnn"))


def write_predictions(path: pathlib.Path, run: pathlib.Path, model: MemoryModel, vision: vae.VAE,
                      data: dict[str, np.ndarray], bounds: np.ndarray, frames: int = 64) -> None:
    """The first episode's first ``frames`` steps: the true frame | the VAE's
    reconstruction | the decoded one-step prediction of the memory."""
    first, end = bounds[0]
    rows = slice(first, min(first + frames, end))
    truth = collect.load(run)["frames"][rows]
    means = jnp.asarray(data["means"][rows])[None]
    actions = jnp.asarray(data["actions"][rows])[None]
    contexts = jnp.concatenate([jnp.zeros((1, 1, ACTION_SIZE)), actions[:, :-1]], axis=1)
    prior = model.cell.predict(means, contexts)
    predicted = prior.mode()[0]
    decoded = media.to_uint8(np.asarray(vision.decode(jnp.concatenate([means[0], predicted]))))
    recon, pred = decoded[: len(truth)], decoded[len(truth):]
    media.save_gif(path, np.concatenate([truth, recon, pred], axis=2))
