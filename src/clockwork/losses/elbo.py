"""The CW-VAE objective: negative ELBO per frame with per-level KL terms (docs/model.md#loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clockwork.losses.kl import gaussian_log_prob

PerLevel = float | Sequence[float] | None


class ElboTerms(NamedTuple):
    """Per-level terms, each a scalar summed over steps and averaged over the batch.

    ``kl``: the raw ``KL(q || p)``; ``kl_loss``: what enters the loss after KL balancing and
    free nats, before ``beta``; ``prior_entropy`` / ``post_entropy``: entropies, ``None``
    for a level whose states have no ``entropy()``.
    """

    kl: tuple[jax.Array, ...]
    kl_loss: tuple[jax.Array, ...]
    prior_entropy: tuple[jax.Array, ...]
    post_entropy: tuple[jax.Array, ...]


def _per_level(name: str, value: PerLevel, levels: int, default: float | None) -> list:
    if value is None:
        return [default] * levels
    if isinstance(value, (int, float)):
        return [float(value)] * levels
    value = list(value)
    if len(value) != levels:
        raise ValueError(f"{name} needs one value per level ({levels}), got {len(value)}")
    return [None if v is None else float(v) for v in value]


def _sum_mean(x: jax.Array) -> jax.Array:
    """``(B, N) -> ()``: sum over steps, mean over the batch."""
    return jnp.mean(jnp.sum(x, axis=1))


def kl_terms(
    posteriors: Sequence[Any],
    priors: Sequence[Any],
    *,
    free_nats: PerLevel = None,
    kl_grad_post_perc: float | None = None,
) -> ElboTerms:
    """Per-level KL and entropy terms for stacked ``(B, N_l, ...)`` states.

    With ``kl_grad_post_perc = a`` (KL balancing) the loss term is
    ``(1 - a) * KL(sg(q) || p) + max(1, a * KL(q || sg(p)))``, each summed over time and
    averaged over the batch; with ``free_nats`` it becomes ``max(0, term - free_nats)``.
    """
    levels = len(priors)
    if len(posteriors) != levels:
        raise ValueError(f"got {len(posteriors)} posteriors for {levels} priors")
    nats = _per_level("free_nats", free_nats, levels, None)
    kl, kl_loss, prior_ent, post_ent = [], [], [], []
    sg = jax.lax.stop_gradient
    for post, prior, fn in zip(posteriors, priors, nats):
        raw = _sum_mean(post.kl(prior))
        if kl_grad_post_perc is None:
            term = raw
        else:
            a = kl_grad_post_perc
            to_prior = _sum_mean(sg(post).kl(prior))
            to_post = _sum_mean(post.kl(sg(prior)))
            term = (1.0 - a) * to_prior + jnp.maximum(1.0, a * to_post)
        if fn is not None:
            term = jnp.maximum(0.0, term - fn)
        kl.append(raw)
        kl_loss.append(term)
        # Entropies are reported where the states have them (an optional part of the
        # cell protocol).
        prior_ent.append(_sum_mean(prior.entropy()) if hasattr(prior, "entropy") else None)
        post_ent.append(_sum_mean(post.entropy()) if hasattr(post, "entropy") else None)
    return ElboTerms(tuple(kl), tuple(kl_loss), tuple(prior_ent), tuple(post_ent))


def reconstruction_nll(frames: jax.Array, mean: jax.Array, stddev: float) -> jax.Array:
    """``-sum log Normal(frames | mean, stddev)`` over all but the first axis: ``(B, ...) -> (B,)``.

    Computed in float32 whatever the inputs' dtype.
    """
    if frames.shape != mean.shape:
        raise ValueError(f"frames {frames.shape} and recon_mean {mean.shape} differ")
    log_prob = gaussian_log_prob(frames.astype(jnp.float32), mean.astype(jnp.float32), stddev)
    return -jnp.sum(log_prob, axis=tuple(range(1, frames.ndim)))


def elbo_loss(
    frames: jax.Array,
    recon_mean: jax.Array,
    posteriors: Sequence[Any],
    priors: Sequence[Any],
    *,
    dec_stddev: float,
    beta: PerLevel = None,
    free_nats: PerLevel = None,
    kl_grad_post_perc: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative ELBO per frame: ``(nll + sum_l beta_l * kl_l) / T``.

    Args:
      frames: ``(B, T, H, W, C)`` targets.
      recon_mean: ``(B, T, H, W, C)`` decoder means of ``Normal(mean, dec_stddev)``.
      posteriors, priors: one stacked state per level, ``(B, N_l, ...)`` leaves.
      dec_stddev: the decoder's fixed stddev.
      beta: scalar or one value per level multiplying each level's KL (default 1).
      free_nats, kl_grad_post_perc: see :func:`kl_terms`; off by default.
    Returns:
      The scalar loss and a dict of metrics, all divided by ``T``: ``nll``, ``kl``
      (sum over levels), and per level ``kl/l``, ``prior_entropy/l``, ``post_entropy/l``.
    """
    nll = jnp.mean(reconstruction_nll(frames, recon_mean, dec_stddev))
    return elbo_from_nll(
        nll, frames.shape[1], posteriors, priors, beta=beta, free_nats=free_nats,
        kl_grad_post_perc=kl_grad_post_perc,
    )


def elbo_from_nll(
    nll: jax.Array,
    frames: int,
    posteriors: Sequence[Any],
    priors: Sequence[Any],
    *,
    beta: PerLevel = None,
    free_nats: PerLevel = None,
    kl_grad_post_perc: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`elbo_loss` from a precomputed ``nll`` (summed over frames and pixels,
    averaged over the batch) for sequences of ``frames`` frames."""
    # Reduced-precision models: every sum of the objective runs in float32.
    posteriors, priors = jax.tree.map(
        lambda x: x.astype(jnp.float32), (tuple(posteriors), tuple(priors))
    )
    t = frames
    levels = len(priors)
    betas = _per_level("beta", beta, levels, 1.0)
    terms = kl_terms(posteriors, priors, free_nats=free_nats, kl_grad_post_perc=kl_grad_post_perc)
    weighted = sum(b * k for b, k in zip(betas, terms.kl_loss))
    loss = (nll + weighted) / t
    metrics = {"loss": loss, "nll": nll / t, "kl": sum(terms.kl) / t}
    for level in range(levels):
        metrics[f"kl/{level}"] = terms.kl[level] / t
        for name in ("prior_entropy", "post_entropy"):
            value = getattr(terms, name)[level]
            if value is not None:
                metrics[f"{name}/{level}"] = value / t
    return loss, metrics
