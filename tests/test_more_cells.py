"""The categorical RSSM, LSTM and MDN-RNN cells against NumPy and SciPy on small inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from flax import nnx
from test_cells import np_dense, np_gru

from clockwork import Clock, Hierarchy
from clockwork.cells import (
    LSTM,
    CategoricalRSSMCell,
    LSTMCell,
    MDNRNNCell,
    check_cell,
    draw_noise,
    unroll,
)
from clockwork.losses import categorical_entropy, categorical_kl, kl_terms, mixture_log_prob, unimix

EMB, CTX, B = 5, 3, 2
relu = lambda v: np.maximum(v, 0)  # noqa: E731
sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731


def np_log_unimix(logits, mix):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return np.log((1 - mix) * p + mix / logits.shape[-1])


def categorical(**kw):
    return CategoricalRSSMCell(EMB, CTX, groups=3, classes=4, det_size=6, hidden_size=7,
                               rngs=nnx.Rngs(1), **kw)


def mdn(**kw):
    return MDNRNNCell(EMB, CTX, stoch_size=3, det_size=6, hidden_size=7, mixtures=4,
                      rngs=nnx.Rngs(2), **kw)


CELLS = {
    "categorical": categorical,
    "lstm": lambda: LSTMCell(EMB, CTX, det_size=6, hidden_size=7, rngs=nnx.Rngs(3)),
    "mdn": mdn,
    "mdn_shared": lambda: mdn(shared_weights=True),
}


def test_unimix_probabilities_match_numpy():
    logits = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32) * 3
    for mix in (0.0, 0.01, 0.5):
        got = np.asarray(unimix(jnp.asarray(logits), mix))
        np.testing.assert_allclose(got, np_log_unimix(logits, mix), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-6)
    # Every class keeps at least mix / C of the mass.
    assert np.exp(np.asarray(unimix(jnp.array([0.0, 50.0, -50.0, 0.0]), 0.01))).min() >= 0.0025 - 1e-7


def test_categorical_kl_and_entropy_match_numpy():
    rng = np.random.default_rng(1)
    log_q = np_log_unimix(rng.normal(size=(2, 3, 4)), 0.01).astype(np.float32)
    log_p = np_log_unimix(rng.normal(size=(2, 3, 4)), 0.01).astype(np.float32)
    want = (np.exp(log_q) * (log_q - log_p)).sum((-2, -1))
    np.testing.assert_allclose(categorical_kl(jnp.asarray(log_q), jnp.asarray(log_p)), want, rtol=1e-5)
    np.testing.assert_allclose(categorical_kl(jnp.asarray(log_q), jnp.asarray(log_q)), 0.0, atol=1e-6)
    ent = -(np.exp(log_q) * log_q).sum((-2, -1))
    np.testing.assert_allclose(categorical_entropy(jnp.asarray(log_q)), ent, rtol=1e-5)
    # scipy's entropy per group, summed.
    np.testing.assert_allclose(ent, scipy.stats.entropy(np.exp(log_q), axis=-1).sum(-1), rtol=1e-5)


def test_categorical_rssm_step_matches_numpy():
    cell = categorical()
    rng = np.random.default_rng(2)
    prev = cell.initial_state(B)
    prev = prev.replace(sample=jnp.asarray(np.eye(4, dtype=np.float32)[rng.integers(0, 4, (B, 3))]),
                        det_state=jnp.asarray(rng.normal(size=(B, 6)).astype(np.float32)))
    embed = rng.normal(size=(B, EMB)).astype(np.float32)
    context = rng.normal(size=(B, CTX)).astype(np.float32)
    noise = cell.noise(jax.random.key(0), B)
    new, out = cell(prev, jnp.asarray(embed), jnp.asarray(context), noise, use_obs=True)

    g = np.asarray(noise)
    x = relu(np_dense(cell.prior_in, np.concatenate([np.asarray(prev.sample).reshape(B, 12), context], -1)))
    det = np_gru(cell.gru, np.asarray(prev.det_state), x)
    prior_lp = np_log_unimix(np_dense(cell.prior_logits, relu(np_dense(cell.prior_hidden, det))).reshape(B, 3, 4), 0.01)
    x = relu(np_dense(cell.post_hidden, relu(np_dense(cell.post_in, np.concatenate([det, embed], -1)))))
    post_lp = np_log_unimix(np_dense(cell.post_logits, x).reshape(B, 3, 4), 0.01)
    np.testing.assert_allclose(out.prior.log_probs, prior_lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.posterior.log_probs, post_lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.det_state, det, rtol=1e-4, atol=1e-5)
    for state, lp, slot in ((out.prior, prior_lp, 0), (out.posterior, post_lp, 1)):
        want = np.eye(4)[np.argmax(lp + g[:, slot], -1)]  # Gumbel-max
        np.testing.assert_allclose(state.sample, want, atol=1e-6)
    assert out.posterior.feature.shape == (B, 3 * 4 + 6)
    np.testing.assert_allclose(out.posterior.kl(out.prior),
                               (np.exp(post_lp) * (post_lp - prior_lp)).sum((-2, -1)), rtol=1e-4, atol=1e-5)


def test_categorical_straight_through_gradient_is_the_probabilities_gradient():
    cell = categorical()
    state = cell.initial_state(B)
    noise = cell.noise(jax.random.key(1), B)
    w = jax.random.normal(jax.random.key(2), (B, 3, 4))

    def through(fn):
        def f(embed):
            _, out = cell(state, embed, jnp.ones((B, CTX)), noise, use_obs=True)
            return jnp.sum(w * fn(out.posterior))
        return jax.grad(f)(jnp.ones((B, EMB)))

    hard = through(lambda s: s.sample)
    soft = through(lambda s: jnp.exp(s.log_probs))
    np.testing.assert_allclose(hard, soft, rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(hard))) > 0


def test_categorical_samples_follow_the_unimix_probabilities():
    """Gumbel-max draws from the mixed probabilities: frequencies over 20000 rows."""
    cell = CategoricalRSSMCell(EMB, CTX, groups=1, classes=4, det_size=6, hidden_size=7,
                               unimix=0.3, rngs=nnx.Rngs(1))
    n = 20000
    _, out = cell(cell.initial_state(n), jnp.ones((n, EMB)), jnp.ones((n, CTX)),
                  cell.noise(jax.random.key(3), n), use_obs=True)
    probs = np.exp(np.asarray(out.posterior.log_probs[0, 0]))
    assert probs.min() >= 0.3 / 4 - 1e-6
    freq = np.asarray(out.posterior.sample[:, 0]).mean(0)
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))


def np_lstm(layer, c, h, x, forget_bias=1.0):
    gates = x @ np.asarray(layer.input_kernel[...]) + np.asarray(layer.bias[...]) \
        + h @ np.asarray(layer.hidden_kernel[...])
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = sigmoid(f + forget_bias) * c + sigmoid(i) * np.tanh(g)
    return c, sigmoid(o) * np.tanh(c)


def test_lstm_step_matches_a_numpy_lstm():
    layer = LSTM(3, 5, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(4)
    c, h, x = (rng.normal(size=s).astype(np.float32) for s in ((B, 5), (B, 5), (B, 3)))
    got = layer(jnp.asarray(c), jnp.asarray(h), jnp.asarray(x))
    for a, b in zip(got, np_lstm(layer, c, h, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The cell: relu(Dense(context)) into the LSTM; zero KL, prior == posterior.
    cell = CELLS["lstm"]()
    state = cell.initial_state(B)
    ctx = rng.normal(size=(B, CTX)).astype(np.float32)
    new, out = cell(state, None, jnp.asarray(ctx), None, use_obs=True)
    want = np_lstm(cell.lstm, np.zeros((B, 6)), np.zeros((B, 6)), relu(np_dense(cell.inp, ctx)))
    np.testing.assert_allclose(new.cell, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.posterior.feature, want[1], rtol=1e-5, atol=1e-6)
    assert out.prior is out.posterior
    np.testing.assert_array_equal(out.posterior.kl(out.prior), np.zeros(B))


@pytest.mark.parametrize("shared", [False, True])
def test_mdn_mixture_log_density_matches_scipy(shared):
    rng = np.random.default_rng(5)
    s, k = 3, 4
    x = rng.normal(size=(B, s))
    means = rng.normal(size=(B, s, k))
    stds = rng.uniform(0.3, 2.0, size=(B, s, k))
    logits = rng.normal(size=(B, k) if shared else (B, s, k))
    logw = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    comp = scipy.stats.norm.logpdf(x[..., None], means, stds)  # (B, S, K)
    if shared:
        want = scipy.special.logsumexp(logw + comp.sum(1), axis=-1)
    else:
        want = scipy.special.logsumexp(logw + comp, axis=-1).sum(-1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = mixture_log_prob(f32(x), f32(logw), f32(means), f32(stds), shared=shared)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mdn_kl_is_a_single_sample_monte_carlo_estimate():
    cell = mdn()
    n = 2
    _, out = cell(cell.initial_state(n), jnp.ones((n, EMB)), jnp.ones((n, CTX)),
                  cell.noise(jax.random.key(4), n), use_obs=True)
    post, prior = out.posterior, out.prior
    z = np.asarray(post.sample, np.float64)
    log_q = scipy.stats.norm.logpdf(z, np.asarray(post.mean), np.asarray(post.stddev)).sum(-1)
    comp = scipy.stats.norm.logpdf(z[..., None], np.asarray(prior.means), np.asarray(prior.stddevs))
    log_p = scipy.special.logsumexp(np.asarray(prior.log_weights) + comp, axis=-1).sum(-1)
    np.testing.assert_allclose(post.kl(prior), log_q - log_p, rtol=1e-4, atol=1e-4)
    # With one component its mean over many samples is the closed-form Gaussian KL.
    one = MDNRNNCell(EMB, CTX, stoch_size=3, det_size=6, mixtures=1, rngs=nnx.Rngs(5))
    n = 40000
    _, out = one(one.initial_state(n), jnp.ones((n, EMB)), jnp.ones((n, CTX)),
                 one.noise(jax.random.key(5), n), use_obs=True)
    q, p = out.posterior, out.prior
    a, s, b, t = (np.asarray(v[0], np.float64) for v in (q.mean, q.stddev, p.means[..., 0], p.stddevs[..., 0]))
    exact = np.sum(  # KL(N(a, s) || N(b, t)), summed over dimensions
        np.log(t / s) + (s**2 + (a - b) ** 2) / (2 * t**2) - 0.5)
    mc = np.asarray(q.kl(p), np.float64)
    assert abs(mc.mean() - exact) < 4 * mc.std() / np.sqrt(n)


def test_mdn_predict_is_teacher_forced_against_numpy():
    cell = mdn()
    rng = np.random.default_rng(6)
    n = 4
    z = rng.normal(size=(B, n, 3)).astype(np.float32)
    ctx = rng.normal(size=(B, n, CTX)).astype(np.float32)
    prior = cell.predict(jnp.asarray(z), jnp.asarray(ctx))
    c = h = np.zeros((B, 6), np.float32)
    prev = np.zeros((B, 3), np.float32)
    for t in range(n):
        c, h = np_lstm(cell.lstm, c, h, np.concatenate([prev, ctx[:, t]], -1))
        out = np_dense(cell.mixture, h)
        logits = out[:, :12].reshape(B, 3, 4)
        np.testing.assert_allclose(prior.log_weights[:, t], logits - scipy.special.logsumexp(
            logits, axis=-1, keepdims=True), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(prior.means[:, t], out[:, 12:24].reshape(B, 3, 4), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(prior.stddevs[:, t], np.exp(out[:, 24:]).reshape(B, 3, 4), rtol=1e-4)
        prev = z[:, t]
    # The World Models objective: -log p(z_t | z_<t), finite and with gradients.
    nll = lambda m: -jnp.mean(m.predict(jnp.asarray(z), jnp.asarray(ctx)).log_prob(jnp.asarray(z)))  # noqa: E731
    grads = nnx.grad(nll)(cell)
    assert float(jnp.max(jnp.abs(grads.lstm.hidden_kernel[...]))) > 0


def test_mdn_temperature_scales_the_logits_and_the_noise():
    hot = mdn(temperature=2.5)
    state = hot.initial_state(B)
    noise = hot.noise(jax.random.key(6), B)
    _, out = hot(state, None, jnp.ones((B, CTX)), noise, use_obs=False)
    mix = out.prior
    pick = np.argmax(np.asarray(mix.log_weights) / 2.5 + np.asarray(noise.gumbel), -1)  # (B, S)
    onehot = np.eye(4)[pick]
    mean = (onehot * np.asarray(mix.means)).sum(-1)
    std = (onehot * np.asarray(mix.stddevs)).sum(-1)
    want = mean + std * np.sqrt(2.5) * np.asarray(noise.normal[:, 0])
    np.testing.assert_allclose(mix.sample, want, rtol=1e-5, atol=1e-6)
    # The density ignores the temperature: the same parameters as at temperature 1.
    _, cold = mdn()(state, None, jnp.ones((B, CTX)), noise, use_obs=False)
    np.testing.assert_array_equal(cold.prior.means, mix.means)
    assert out.posterior is out.prior and float(jnp.max(jnp.abs(mix.kl(mix)))) == 0.0


def test_mdn_temperature_zero_takes_the_most_likely_components_mean():
    for shared in (False, True):
        cold = mdn(temperature=0.0, shared_weights=shared)
        state = cold.initial_state(B)
        outs = [cold(state, None, jnp.ones((B, CTX)), cold.noise(jax.random.key(k), B),
                     use_obs=False)[1].prior for k in (1, 2)]
        np.testing.assert_array_equal(outs[0].sample, outs[1].sample)  # the noise is not read
        mix = outs[0]
        pick = np.argmax(np.asarray(mix.log_weights), -1)
        onehot = np.eye(4)[pick] if not shared else np.eye(4)[pick][:, None, :]
        np.testing.assert_allclose(mix.sample, (onehot * np.asarray(mix.means)).sum(-1), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_categorical_lstm_and_mdn_cells_follow_the_protocol(name):
    """check_cell passes; the fast path's unroll equals a loop of steps; a key decides
    the numbers."""
    cell = CELLS[name]()
    check_cell(cell, name)
    n = 5
    embeds = jax.random.normal(jax.random.key(7), (B, n, EMB))
    contexts = jax.random.normal(jax.random.key(8), (B, n, CTX))
    noise = draw_noise(cell, jax.random.key(9), B, n)
    last, outs = unroll(cell, cell.initial_state(B), embeds, contexts, noise, use_obs=True)
    state = cell.initial_state(B)
    for t in range(n):
        step_noise = jax.tree.map(lambda x: x[:, t], noise)
        state, out = cell(state, embeds[:, t], contexts[:, t], step_noise, use_obs=True)
        np.testing.assert_allclose(outs.posterior.feature[:, t], out.posterior.feature, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert outs.posterior.feature.shape == (B, n, cell.feature_size)
    again = unroll(cell, cell.initial_state(B), embeds, contexts,
                   draw_noise(cell, jax.random.key(9), B, n), use_obs=True)[1]
    np.testing.assert_array_equal(again.posterior.feature, outs.posterior.feature)
    if name != "lstm":
        other = unroll(cell, cell.initial_state(B), embeds, contexts,
                       draw_noise(cell, jax.random.key(10), B, n), use_obs=True)[1]
        assert not np.array_equal(other.posterior.feature, outs.posterior.feature)


@pytest.mark.parametrize("make,options,match", [
    (categorical, {"unimix": 1.0}, "unimix must be a number in \\[0, 1\\)"),
    (categorical, {"unimix": -0.1}, "unimix"),
    (lambda **kw: CategoricalRSSMCell(EMB, CTX, rngs=nnx.Rngs(0), **kw), {"groups": 0}, "groups must be a positive int, got 0"),
    (lambda **kw: CategoricalRSSMCell(EMB, CTX, rngs=nnx.Rngs(0), **kw), {"classes": 1}, "classes must be an int >= 2"),
    (mdn, {"temperature": -0.5}, "temperature must be a number >= 0"),
    (lambda **kw: MDNRNNCell(EMB, CTX, rngs=nnx.Rngs(0), **kw), {"mixtures": 0}, "mixtures must be a positive int"),
])
def test_categorical_and_mdn_options_are_checked(make, options, match):
    with pytest.raises(ValueError, match=match):
        make(**options)


def test_mdn_flag_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"shared_weights must be a bool \(True or False\), got 'yes'"):
        mdn(shared_weights="yes")


def test_categorical_mdn_and_lstm_levels_in_one_hierarchy_train():
    """A three-level hierarchy of the new cells: finite KL terms on every level and a
    gradient reaching every cell."""
    rngs = nnx.Rngs(0)
    top = LSTMCell(EMB, 4, det_size=4, hidden_size=4, rngs=rngs)
    mid = MDNRNNCell(EMB, top.feature_size, stoch_size=2, det_size=4, mixtures=3, rngs=rngs)
    low = CategoricalRSSMCell(EMB, mid.feature_size, groups=2, classes=3, det_size=4,
                              hidden_size=4, rngs=rngs)
    hierarchy = Hierarchy([low, mid, top], Clock((2, 2)))
    embeds = [jax.random.normal(jax.random.key(i), (B, n, EMB)) for i, n in enumerate((8, 4, 2))]

    def loss(h):
        rollout = h.observe(embeds, jax.random.key(3))
        terms = kl_terms(rollout.posteriors, rollout.priors)
        return sum(terms.kl_loss) + jnp.mean(rollout.posteriors[0].feature ** 2), terms

    (value, terms), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(hierarchy)
    assert np.isfinite(float(value)) and float(terms.kl[0]) > 0 and float(terms.kl[2]) == 0
    for level in range(3):
        g = jax.tree.leaves(nnx.state(grads.cells[level]))
        assert max(float(jnp.max(jnp.abs(x))) for x in g) > 0, level
