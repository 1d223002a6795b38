"""Fingerprint of the paper presets' numbers: run it before and after a refactor.

    python benchmarks/fingerprint.py            # mmnist and minerl
    python benchmarks/fingerprint.py mmnist

For each preset: a model from ``nnx.Rngs(0)``, two sequences of 72 random frames
(``numpy`` seed 0), the loss and its per-level KL under ``jax.random.key(1)``, the
gradient of the loss, one training step, and 36 open-loop frames from a 36-frame
context under ``jax.random.key(2)``. Prints each scalar exactly (``float.hex``) and a
SHA-256 of the gradient, the stepped parameters and the predicted frames, so that two
runs agree line by line exactly when their numbers are bit-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import jax
import numpy as np
from flax import nnx

from clockwork import CWVAE, config
from clockwork.training import init_train_state, make_loss_fn, make_optimizer, make_train_step


def digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def fingerprint(name: str) -> list[str]:
    preset = config.preset(name)
    model = CWVAE.from_config(preset.model, loss=preset.loss, speed=preset.speed, rngs=nnx.Rngs(0))
    channels = preset.model.channels
    frames = np.random.default_rng(0).integers(0, 256, (2, 72, 64, 64, channels), np.uint8)
    optimizer = make_optimizer(**dataclasses.asdict(preset.optim))
    graphdef, state = init_train_state(model, optimizer, jax.random.key(1))
    loss_fn = make_loss_fn(graphdef)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        state.params, frames, jax.random.key(1)
    )
    new, step_metrics = make_train_step(graphdef, optimizer, donate=False)(state, frames)
    pred = jax.jit(lambda p, x: nnx.merge(graphdef, p).open_loop(x[:, :36], 36, jax.random.key(2)))(
        state.params, frames.astype(np.float32) / 255
    )
    lines = [f"{name} loss {float(loss).hex()}"]
    lines += [f"{name} {k} {float(v).hex()}" for k, v in sorted(metrics.items()) if k.startswith("kl")]
    lines += [
        f"{name} grads {digest(grads)}",
        f"{name} step_loss {float(step_metrics['loss']).hex()}",
        f"{name} stepped_params {digest(new.params)}",
        f"{name} open_loop {digest(pred)} shape {tuple(pred.shape)}",
    ]
    return lines


if __name__ == "__main__":
    for name in sys.argv[1:] or ["mmnist", "minerl"]:
        print("\n".join(fingerprint(name)), flush=True)
