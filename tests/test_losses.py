import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clockwork.cells import GaussianState
from clockwork.config import LossConfig
from clockwork.losses import FREE_BITS, KL_BALANCE, elbo_loss, gaussian_entropy, gaussian_kl, kl_terms


def normal(key, shape, lo=0.3, hi=2.0):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, shape), jax.random.uniform(k2, shape, minval=lo, maxval=hi)


def state(mean, std):
    return GaussianState(sample=mean, det_state=mean[..., :1], det_out=mean[..., :1], mean=mean, stddev=std)


def test_kl_and_entropy_match_distrax():
    mq, sq = normal(jax.random.key(0), (4, 5, 6))
    mp, sp = normal(jax.random.key(1), (4, 5, 6))
    want = distrax.Normal(mq, sq).kl_divergence(distrax.Normal(mp, sp)).sum(-1)
    np.testing.assert_allclose(gaussian_kl(mq, sq, mp, sp), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gaussian_entropy(sq), distrax.Normal(mq, sq).entropy().sum(-1), rtol=1e-5)
    np.testing.assert_allclose(gaussian_kl(mq, sq, mq, sq), np.zeros((4, 5)), atol=1e-6)


def test_kl_matches_monte_carlo():
    mq, sq = jnp.array([0.3, -1.0]), jnp.array([0.5, 1.5])
    mp, sp = jnp.array([0.0, 0.5]), jnp.array([1.0, 0.8])
    x = mq[None] + sq[None] * jax.random.normal(jax.random.key(2), (400_000, 2))
    full = lambda v: jnp.broadcast_to(v, x.shape)  # noqa: E731
    log_q = distrax.Normal(full(mq), full(sq)).log_prob(x).sum(-1)
    log_p = distrax.Normal(full(mp), full(sp)).log_prob(x).sum(-1)
    mc = float(jnp.mean(log_q - log_p))
    assert abs(float(gaussian_kl(mq, sq, mp, sp)) - mc) < 0.01


def _levels(key, steps=(6, 3), size=4):
    out = []
    for i, n in enumerate(steps):
        kq, kp = jax.random.split(jax.random.fold_in(key, i))
        out.append((state(*normal(kq, (2, n, size))), state(*normal(kp, (2, n, size)))))
    return [q for q, _ in out], [p for _, p in out]


def test_elbo_normalises_every_term_by_frames():
    posts, priors = _levels(jax.random.key(0))
    frames = jax.random.uniform(jax.random.key(1), (2, 6, 3, 3, 1))
    recon = jax.random.uniform(jax.random.key(2), (2, 6, 3, 3, 1))
    loss, m = elbo_loss(frames, recon, posts, priors, dec_stddev=0.5)
    log_prob = -0.5 * ((frames - recon) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    nll = -float(jnp.mean(jnp.sum(log_prob, axis=(1, 2, 3, 4))))
    kls = [float(jnp.mean(jnp.sum(q.kl(p), axis=1))) for q, p in zip(posts, priors)]
    np.testing.assert_allclose(float(loss), (nll + sum(kls)) / 6, rtol=1e-5)
    np.testing.assert_allclose(float(m["nll"]), nll / 6, rtol=1e-5)
    # The upper level has 3 steps but its KL is still divided by the 6 frames.
    np.testing.assert_allclose(float(m["kl/1"]), kls[1] / 6, rtol=1e-5)
    ent = float(jnp.mean(jnp.sum(priors[1].entropy(), axis=1))) / 6
    np.testing.assert_allclose(float(m["prior_entropy/1"]), ent, rtol=1e-5)


def test_beta_and_free_nats():
    posts, priors = _levels(jax.random.key(3))
    frames = jnp.zeros((2, 6, 2, 2, 1))
    base, m = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0)
    nll = float(m["nll"])
    kl = [float(m["kl/0"]), float(m["kl/1"])]
    loss, _ = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0, beta=(0.5, 2.0))
    np.testing.assert_allclose(float(loss), nll + 0.5 * kl[0] + 2.0 * kl[1], rtol=1e-5)
    loss, _ = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0, beta=0.1)
    np.testing.assert_allclose(float(loss), nll + 0.1 * sum(kl), rtol=1e-5)
    # Free nats act on the per-sequence KL (before dividing by frames).
    big = kl[0] * 6 + 1.0
    loss, m2 = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0, free_nats=(big, 1.0))
    np.testing.assert_allclose(float(loss), nll + (kl[1] * 6 - 1.0) / 6, rtol=1e-5)
    assert float(m2["kl/0"]) == pytest.approx(kl[0])  # reported KL stays raw
    with pytest.raises(ValueError, match="beta needs one value per level"):
        elbo_loss(frames, frames, posts, priors, dec_stddev=1.0, beta=(1.0,))


def _grads(a, q_mean, p_mean):
    std = jnp.ones_like(q_mean)

    def term(qm, pm):
        return kl_terms([state(qm, std)], [state(pm, std)], kl_grad_post_perc=a).kl_loss[0]

    return term(q_mean, p_mean), jax.grad(term, argnums=(0, 1))(q_mean, p_mean)


def test_kl_balancing_values_and_gradients():
    q = jnp.full((1, 2, 3), 2.0)
    p = jnp.zeros((1, 2, 3))
    kl = 0.5 * 4.0 * 6  # 12 nats summed over 2 steps x 3 dims
    value, (gq, gp) = _grads(0.8, q, p)
    np.testing.assert_allclose(float(value), 0.2 * kl + 0.8 * kl, rtol=1e-6)
    # d KL / d mean_q = (q - p); the prior only gets the (1 - a) share, the posterior a.
    np.testing.assert_allclose(gp, -0.2 * (q - p), rtol=1e-6)
    np.testing.assert_allclose(gq, 0.8 * (q - p), rtol=1e-6)
    # When a * KL(q || sg(p)) is below 1 the max picks 1: no gradient to the posterior.
    small_q = jnp.full((1, 2, 3), 0.1)
    value, (gq, gp) = _grads(0.5, small_q, p)
    np.testing.assert_allclose(float(value), 0.5 * 0.5 * 0.01 * 6 + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(gq, np.zeros_like(gq))
    np.testing.assert_allclose(gp, -0.5 * (small_q - p), rtol=1e-6)
    # Without balancing both sides get the full gradient.
    _, (gq, gp) = _grads(None, q, p)
    np.testing.assert_allclose(gq, q - p, rtol=1e-6)
    np.testing.assert_allclose(gp, -(q - p), rtol=1e-6)


def test_elbo_rejects_mismatched_shapes():
    posts, priors = _levels(jax.random.key(0))
    with pytest.raises(ValueError, match=r"recon_mean must have the shape of frames \(2, 6, 2, 2, 1\)"):
        elbo_loss(jnp.zeros((2, 6, 2, 2, 1)), jnp.zeros((2, 5, 2, 2, 1)), posts, priors, dec_stddev=1.0)
    with pytest.raises(ValueError, match="posteriors"):
        kl_terms(posts[:1], priors)


def _steps(per_step_kl):
    """Gaussian states whose step n has KL(q || p) = per_step_kl[n] (one latent dim)."""
    kl = jnp.asarray(per_step_kl, jnp.float32)[None, :, None]  # (1, N, 1)
    q_mean = jnp.sqrt(2.0 * kl)
    one = jnp.ones_like(kl)
    return state(q_mean, one), state(jnp.zeros_like(kl), one)


def test_free_bits_clip_each_step_and_free_nats_the_sequence_sum():
    q, p = _steps([0.5, 2.0, 0.2])
    raw = kl_terms([q], [p]).kl_loss[0]
    np.testing.assert_allclose(float(raw), 2.7, rtol=1e-6)
    bits = kl_terms([q], [p], free_bits=1.0)
    np.testing.assert_allclose(float(bits.kl_loss[0]), 1.0 + 2.0 + 1.0, rtol=1e-6)  # DreamerV3
    np.testing.assert_allclose(float(bits.kl[0]), 2.7, rtol=1e-6)  # the reported KL stays raw
    nats = kl_terms([q], [p], free_nats=1.0)
    np.testing.assert_allclose(float(nats.kl_loss[0]), 2.7 - 1.0, rtol=1e-6)  # the TF code
    np.testing.assert_allclose(float(kl_terms([q], [p], free_nats=5.0).kl_loss[0]), 0.0)


def test_free_bits_gradient_vanishes_on_clipped_steps():
    kl = jnp.asarray([[[0.5], [2.0], [0.2]]], jnp.float32)
    one = jnp.ones_like(kl)

    def term(mean):
        return kl_terms([state(mean, one)], [state(jnp.zeros_like(mean), one)], free_bits=1.0).kl_loss[0]

    mean = jnp.sqrt(2.0 * kl)
    grad = np.asarray(jax.grad(term)(mean))[0, :, 0]
    # d KL / d mean = mean on the one unclipped step, zero on the others.
    np.testing.assert_allclose(grad, [0.0, float(mean[0, 1, 0]), 0.0], rtol=1e-6)


def _balance_grads(**options):
    q_mean = jnp.full((1, 2, 3), 2.0)
    p_mean = jnp.zeros((1, 2, 3))
    std = jnp.ones_like(q_mean)

    def term(qm, pm):
        return kl_terms([state(qm, std)], [state(pm, std)], **options).kl_loss[0]

    return term(q_mean, p_mean), jax.grad(term, argnums=(0, 1))(q_mean, p_mean), q_mean - p_mean


def test_kl_balance_values_and_gradients_against_numpy():
    """DreamerV3: dyn * KL(sg(q) || p) + rep * KL(q || sg(p)); the prior gets the
    dynamics weight's gradient, the posterior the representation weight's."""
    value, (gq, gp), diff = _balance_grads(kl_balance=(0.5, 0.1))
    kl = float(0.5 * np.sum(np.asarray(diff) ** 2))  # 12 nats: 2 steps x 3 dims x 2
    np.testing.assert_allclose(float(value), (0.5 + 0.1) * kl, rtol=1e-6)
    np.testing.assert_allclose(gq, 0.1 * np.asarray(diff), rtol=1e-6)
    np.testing.assert_allclose(gp, -0.5 * np.asarray(diff), rtol=1e-6)
    # With free bits above each step's KL (6 nats) both sides are clipped: no gradient.
    value, (gq, gp), _ = _balance_grads(kl_balance=(0.5, 0.1), free_bits=7.0)
    np.testing.assert_allclose(float(value), 0.6 * 2 * 7.0, rtol=1e-6)
    np.testing.assert_array_equal(gq, np.zeros_like(gq))
    np.testing.assert_array_equal(gp, np.zeros_like(gp))


def test_per_level_beta_weights_each_level():
    posts, priors = _levels(jax.random.key(5))
    frames = jnp.zeros((2, 6, 2, 2, 1))
    _, m = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0)
    for beta in ((0.0, 1.0), (3.0, 0.25)):
        loss, _ = elbo_loss(frames, frames, posts, priors, dec_stddev=1.0, beta=beta)
        want = float(m["nll"]) + beta[0] * float(m["kl/0"]) + beta[1] * float(m["kl/1"])
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("options,match", [
    ({"free_bits": -1.0}, "free_bits must be a number >= 0"),
    ({"free_nats": (1.0, -0.5)}, "free_nats must be a number >= 0"),
    ({"kl_balance": (0.5,)}, "kl_balance must be two weights"),
    ({"kl_balance": (0.5, -0.1)}, "kl_balance's representation weight must be a number >= 0"),
    ({"kl_grad_post_perc": 1.5}, "kl_grad_post_perc must be a number in \\[0, 1\\]"),
    ({"free_bits": 1.0, "free_nats": 1.0}, "free_nats .* or free_bits .*, not both"),
    ({"kl_balance": (0.5, 0.1), "kl_grad_post_perc": 0.8}, "kl_grad_post_perc or kl_balance"),
])
def test_free_bits_free_nats_and_balance_options_are_checked(options, match):
    q, p = _steps([1.0])
    with pytest.raises(ValueError, match=match):
        kl_terms([q], [p], **options)
    with pytest.raises(ValueError, match=match):
        LossConfig(**options)


def test_dreamerv3_loss_config_and_model_use_free_bits_and_balance():
    cfg = LossConfig.dreamerv3()
    assert (cfg.free_bits, cfg.kl_balance) == (FREE_BITS, KL_BALANCE) == (1.0, (0.5, 0.1))
    assert LossConfig(kl_balance=[1, 0]).kl_balance == (1.0, 0.0)
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        elbo_loss(jnp.zeros((1, 1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1, 1)), [], [], dec_stddev=1.0, beta=-1.0)
