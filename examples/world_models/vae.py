"""The ``train-vae`` stage: World Models' vision, built from ``clockwork.nets``.

The encoder is :class:`clockwork.nets.ConvEncoder`'s conv stack (4x4 kernels, stride 2,
ReLU, channels ``f, 2f, 4f, 8f``: 64x64x3 frames to ``2 x 2 x 8f``) followed by two linear
maps to the mean and log-variance of a diagonal Gaussian ``q(z | x)``; the decoder is
:class:`clockwork.nets.ConvDecoder` (a linear map to ``1 x 1 x 32f``, transposed convs
with kernels 5, 5, 6, 6, ReLU, a sigmoid at the end). The loss per frame is the
original's: the sum of squared errors over the pixels plus
``max(KL(q(z | x) || N(0, I)), kl_tolerance * latent_size)``, averaged over the batch.

Writes ``<run>/vae/state.npz`` and ``losses.csv`` (``loop.fit``: a rerun resumes) and
``<run>/vae/reconstructions.png`` (frames above, their reconstructions below).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import media
from clockwork.hierarchy import Clock
from clockwork.losses import gaussian_kl
from clockwork.nets import ConvDecoder, ConvEncoder
from world_models import collect, loop
from world_models.presets import VaePreset

VAE_DIR = "vae"
FRAME_SHAPE = (collect.FRAME_SIZE, collect.FRAME_SIZE, 3)


class VAE(nnx.Module):
    """``(..., 64, 64, 3)`` frames in ``[0, 1]`` to latents ``(..., latent_size)`` and back."""

    def __init__(self, latent_size: int = 32, filters: int = 32, *, rngs: nnx.Rngs):
        self.encoder = ConvEncoder(Clock(()), frame_size=FRAME_SHAPE[:2], channels=3,
                                   filters=filters, dense_layers=0, activation=jax.nn.relu,
                                   rngs=rngs)
        size = self.encoder.embed_size
        self.mean = nnx.Linear(size, latent_size, rngs=rngs)
        self.log_var = nnx.Linear(size, latent_size, rngs=rngs)
        self.decoder = ConvDecoder(latent_size, frame_size=FRAME_SHAPE[:2], channels=3,
                                   filters=filters, activation=jax.nn.relu,
                                   out_activation=jax.nn.sigmoid, rngs=rngs)
        self.latent_size = latent_size

    def encode(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The mean and standard deviation of ``q(z | x)``, each ``(..., latent_size)``."""
        h = self.encoder.frame_features(frames)
        return self.mean(h), jnp.exp(0.5 * self.log_var(h))

    def decode(self, z: jax.Array) -> jax.Array:
        """``(..., latent_size)`` to frames ``(..., 64, 64, 3)`` in ``(0, 1)``."""
        return self.decoder(z)


def vae_loss(model: VAE, frames: jax.Array, key: jax.Array, kl_tolerance: float
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of the module doc for ``(B, 64, 64, 3)`` frames, and its two terms."""
    mean, std = model.encode(frames)
    z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    squared = jnp.sum(jnp.square(model.decode(z) - frames), axis=(-3, -2, -1))
    kl = gaussian_kl(mean, std, jnp.zeros_like(mean), jnp.ones_like(std))
    floor = jnp.asarray(kl_tolerance * model.latent_size, kl.dtype)
    loss = jnp.mean(squared) + jnp.mean(jnp.maximum(kl, floor))
    return loss, {"reconstruction": jnp.mean(squared), "kl": jnp.mean(kl)}


def train_vae(run: pathlib.Path, preset: VaePreset) -> VAE:
    """Trains (or resumes) the VAE on the collected frames of ``run``; returns it."""
    folder = run / VAE_DIR
    graphdef, params = nnx.split(VAE(preset.latent_size, preset.filters, rngs=nnx.Rngs(preset.seed)))
    frames = collect.load(run)["frames"]

    def batch(t: int) -> jax.Array:
        index = np.random.default_rng([preset.seed, t]).integers(0, len(frames), preset.batch_size)
        return jnp.asarray(frames[index], jnp.float32) / 255.0

    def loss(p, x, key):
        return vae_loss(nnx.merge(graphdef, p), x, key, preset.kl_tolerance)

    params = loop.fit(folder, params, optax.adam(preset.lr), loss, batch, steps=preset.steps,
                      ckpt_every=preset.ckpt_every, seed=preset.seed)
    model = nnx.merge(graphdef, params)
    picture = np.concatenate([frames[:8], reconstruct(model, frames[:8])])
    media.save_png(folder / "reconstructions.png", media.tile(picture.reshape(2, 8, *FRAME_SHAPE)))
    print(f"train-vae: {loop.summary(folder)}; wrote {folder}", flush=True)
    return model


def reconstruct(model: VAE, frames: np.ndarray) -> np.ndarray:
    """uint8 reconstructions (from the mean latents) of uint8 frames."""
    mean, _ = model.encode(jnp.asarray(frames, jnp.float32) / 255.0)
    return media.to_uint8(np.asarray(model.decode(mean)))


def load_vae(run: pathlib.Path, preset: VaePreset) -> VAE:
    """The trained VAE of ``run``."""
    graphdef, params = nnx.split(VAE(preset.latent_size, preset.filters, rngs=nnx.Rngs(0)))
    return nnx.merge(graphdef, loop.load_params(run / VAE_DIR, params, optax.adam(preset.lr), "train-vae"))
