"""Losses: the latent distributions' densities, KLs and entropies, the KL options
(free nats, free bits, balancing) and the CW-VAE negative ELBO per frame."""

from clockwork.losses.elbo import (
    FREE_BITS,
    KL_BALANCE,
    ElboTerms,
    check_kl_options,
    elbo_from_nll,
    elbo_loss,
    kl_terms,
    reconstruction_nll,
)
from clockwork.losses.kl import (
    categorical_entropy,
    categorical_kl,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    mixture_log_prob,
    unimix,
)

__all__ = [
    "FREE_BITS",
    "KL_BALANCE",
    "ElboTerms",
    "categorical_entropy",
    "categorical_kl",
    "check_kl_options",
    "elbo_from_nll",
    "elbo_loss",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "kl_terms",
    "mixture_log_prob",
    "reconstruction_nll",
    "unimix",
]
