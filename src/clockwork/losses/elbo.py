"""The CW-VAE objective: negative ELBO per frame with per-level KL terms (docs/model.md#loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clockwork import _checks
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


FREE_BITS = 1.0
"""DreamerV3's free-bits threshold in nats (``free_bits=FREE_BITS``)."""

KL_BALANCE = (0.5, 0.1)
"""DreamerV3's KL-balancing weights ``(dynamics, representation)``."""


def _per_level(name: str, value: PerLevel, levels: int, default: float | None) -> list:
    if value is None:
        return [default] * levels
    if isinstance(value, (int, float)):
        return [float(value)] * levels
    _checks.sequence(name, value, "numbers, one per level")
    value = list(value)
    if len(value) != levels:
        raise ValueError(f"{name} needs one value per level ({levels}), got {len(value)}")
    return [None if v is None else float(v) for v in value]


def check_kl_options(
    *,
    beta: PerLevel = None,
    free_nats: PerLevel = None,
    free_bits: PerLevel = None,
    kl_grad_post_perc: float | None = None,
    kl_balance: tuple[float, float] | None = None,
) -> None:
    """Raise a ``TypeError`` (a value that is no number) or a ``ValueError`` naming the
    argument unless the KL options are valid (docs/model.md#loss): ``beta``,
    ``free_nats`` and ``free_bits`` finite and non-negative (one number or one per
    level), ``kl_grad_post_perc`` in ``[0, 1]``, ``kl_balance`` two finite non-negative
    weights; at most one of ``free_nats`` and ``free_bits``, and at most one of
    ``kl_grad_post_perc`` and ``kl_balance``. The per-level lengths are checked where
    the levels are known.
    """
    for name, value in (("beta", beta), ("free_nats", free_nats), ("free_bits", free_bits)):
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            _checks.number(name, v, low=0.0)
    if kl_grad_post_perc is not None:
        _checks.number("kl_grad_post_perc", kl_grad_post_perc, low=0.0, high=1.0)
    if kl_balance is not None:
        if not isinstance(kl_balance, (list, tuple)) or len(kl_balance) != 2:
            raise ValueError(f"kl_balance must be two weights (dynamics, representation), "
                             f"got {kl_balance!r}")
        for part, v in zip(("dynamics", "representation"), kl_balance):
            _checks.number(f"kl_balance's {part} weight", v, low=0.0)
    if free_nats is not None and free_bits is not None:
        raise ValueError("give free_nats (the per-sequence threshold) or free_bits (the "
                         "per-step one), not both")
    if kl_grad_post_perc is not None and kl_balance is not None:
        raise ValueError("give kl_grad_post_perc or kl_balance (two ways of balancing the "
                         "KL), not both")


def _sum_mean(x: jax.Array) -> jax.Array:
    """``(B, N) -> ()``: sum over steps, mean over the batch."""
    return jnp.mean(jnp.sum(x, axis=1))


def kl_terms(
    posteriors: Sequence[Any],
    priors: Sequence[Any],
    *,
    free_nats: PerLevel = None,
    free_bits: PerLevel = None,
    kl_grad_post_perc: float | None = None,
    kl_balance: tuple[float, float] | None = None,
) -> ElboTerms:
    """Per-level KL and entropy terms for stacked ``(B, N_l, ...)`` states
    (docs/model.md#loss; all options off by default).

    With ``sg`` the stop-gradient and ``KL_n`` step ``n``'s KL summed over the latent:

    * no balancing: ``term = sum_n KL_n(q || p)``;
    * ``kl_grad_post_perc = a`` (the JAX port's balancing): ``term = (1 - a) * sum_n
      KL_n(sg(q) || p) + max(1, a * sum_n KL_n(q || sg(p)))``;
    * ``kl_balance = (dyn, rep)`` (DreamerV2/V3, ``KL_BALANCE``): ``term = dyn *
      sum_n KL_n(sg(q) || p) + rep * sum_n KL_n(q || sg(p))``;
    * ``free_bits`` (DreamerV3's, ``FREE_BITS``): every ``KL_n`` above becomes
      ``max(free_bits, KL_n)`` before the sum over steps;
    * ``free_nats`` (the official TF code's): ``term = max(0, term - free_nats)`` after
      the sum over steps and the mean over the batch.

    Each term is averaged over the batch. ``free_nats`` and ``free_bits`` take one
    number or one per level.

    Examples:
      >>> from clockwork.cells import GaussianState
      >>> z = jnp.zeros((1, 3, 2))
      >>> q = GaussianState(z + 1.0, z, z, z + 1.0, z + 1.0)  # KL_n = 1 nat per step
      >>> p = GaussianState(z, z, z, z, z + 1.0)
      >>> [round(float(kl_terms([q], [p], **o).kl_loss[0]), 4) for o in
      ...  ({}, {"free_bits": 2.0}, {"free_nats": 2.0}, {"kl_balance": (0.5, 0.1)})]
      [3.0, 6.0, 1.0, 1.8]
    """
    levels = len(priors)
    if len(posteriors) != levels:
        raise ValueError(f"got {len(posteriors)} posteriors for {levels} priors")
    check_kl_options(free_nats=free_nats, free_bits=free_bits,
                     kl_grad_post_perc=kl_grad_post_perc, kl_balance=kl_balance)
    nats = _per_level("free_nats", free_nats, levels, None)
    bits = _per_level("free_bits", free_bits, levels, None)
    kl, kl_loss, prior_ent, post_ent = [], [], [], []
    sg = jax.lax.stop_gradient
    for post, prior, fn, fb in zip(posteriors, priors, nats, bits):
        def clipped(steps: jax.Array, fb: float | None = fb) -> jax.Array:
            return _sum_mean(steps if fb is None else jnp.maximum(fb, steps))

        raw = _sum_mean(post.kl(prior))
        if kl_balance is not None:
            dyn, rep = kl_balance
            term = dyn * clipped(sg(post).kl(prior)) + rep * clipped(post.kl(sg(prior)))
        elif kl_grad_post_perc is not None:
            a = kl_grad_post_perc
            to_prior = clipped(sg(post).kl(prior))
            to_post = clipped(post.kl(sg(prior)))
            term = (1.0 - a) * to_prior + jnp.maximum(1.0, a * to_post)
        else:
            term = raw if fb is None else clipped(post.kl(prior))
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

    Raises:
      TypeError: ``frames`` or ``mean`` is not a float array (convert ``uint8`` video
        first: ``clockwork.data.to_float``), or ``stddev`` is no number.
      ValueError: their shapes differ, or ``stddev`` is not finite and positive.
    """
    _checks.float_array("frames", frames, ("B", ...))
    _checks.float_array("mean", mean)
    _checks.same_shape("mean", mean, "frames", frames)
    _checks.number("stddev", stddev, low=0.0, low_open=True)
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
    free_bits: PerLevel = None,
    kl_grad_post_perc: float | None = None,
    kl_balance: tuple[float, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative ELBO per frame: ``(nll + sum_l beta_l * kl_l) / T``.

    Args:
      frames: ``(B, T, H, W, C)`` targets.
      recon_mean: ``(B, T, H, W, C)`` decoder means of ``Normal(mean, dec_stddev)``.
      posteriors: one stacked state per level, ``(B, N_l, ...)`` leaves.
      priors: the same for the priors.
      dec_stddev: the decoder's fixed stddev.
      beta: scalar or one value per level multiplying each level's KL (default 1).
      free_nats: see ``kl_terms``; off by default.
      free_bits: see ``kl_terms``; off by default.
      kl_grad_post_perc: see ``kl_terms``; off by default.
      kl_balance: see ``kl_terms``; off by default.
    Returns:
      The scalar loss and a dict of metrics, all divided by ``T``: ``nll``, ``kl``
      (sum over levels), and per level ``kl/l``, ``prior_entropy/l``, ``post_entropy/l``.
    Raises:
      TypeError, ValueError: naming the argument (``frames``, ``recon_mean``,
        ``dec_stddev`` or a KL option, see ``check_kl_options``).
    """
    _checks.float_array("frames", frames, ("B", "T", ...))
    _checks.float_array("recon_mean", recon_mean)
    _checks.same_shape("recon_mean", recon_mean, "frames", frames)
    _checks.number("dec_stddev", dec_stddev, low=0.0, low_open=True)
    nll = jnp.mean(reconstruction_nll(frames, recon_mean, dec_stddev))
    return elbo_from_nll(
        nll, frames.shape[1], posteriors, priors, beta=beta, free_nats=free_nats,
        free_bits=free_bits, kl_grad_post_perc=kl_grad_post_perc, kl_balance=kl_balance,
    )


def elbo_from_nll(
    nll: jax.Array,
    frames: int,
    posteriors: Sequence[Any],
    priors: Sequence[Any],
    *,
    beta: PerLevel = None,
    free_nats: PerLevel = None,
    free_bits: PerLevel = None,
    kl_grad_post_perc: float | None = None,
    kl_balance: tuple[float, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``elbo_loss`` from a precomputed ``nll`` (summed over frames and pixels,
    averaged over the batch) for sequences of ``frames`` frames."""
    t = _checks.integer("frames", frames)
    # Reduced-precision models: every sum of the objective runs in float32.
    posteriors, priors = jax.tree.map(
        lambda x: x.astype(jnp.float32), (tuple(posteriors), tuple(priors))
    )
    levels = len(priors)
    check_kl_options(beta=beta)
    betas = _per_level("beta", beta, levels, 1.0)
    terms = kl_terms(posteriors, priors, free_nats=free_nats, free_bits=free_bits,
                     kl_grad_post_perc=kl_grad_post_perc, kl_balance=kl_balance)
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
