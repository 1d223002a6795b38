"""Losses: Gaussian KL and entropy, and the CW-VAE negative ELBO per frame."""

from clockwork.losses.elbo import (
    ElboTerms,
    elbo_from_nll,
    elbo_loss,
    kl_terms,
    reconstruction_nll,
)
from clockwork.losses.kl import gaussian_entropy, gaussian_kl, gaussian_log_prob

__all__ = [
    "ElboTerms",
    "elbo_from_nll",
    "elbo_loss",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "kl_terms",
    "reconstruction_nll",
]
