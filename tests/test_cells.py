import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork.cells import (
    GRU,
    Cell,
    DeterministicState,
    GaussianState,
    GRUCell,
    RSSMCell,
    StepOutput,
    check_cell,
    draw_noise,
    unroll,
)

S, D, E, CTX, EMB, B = 3, 5, 6, 4, 7, 2


def np_dense(layer, x):
    return x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])


def np_gru(gru, h, x):
    n = gru.hidden_features
    xi = x @ np.asarray(gru.input_kernel[...]) + np.asarray(gru.input_bias[...])
    hh = h @ np.asarray(gru.hidden_kernel[...])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sig(xi[:, :n] + hh[:, :n])
    z = sig(xi[:, n : 2 * n] + hh[:, n : 2 * n])
    c = np.tanh(xi[:, 2 * n :] + r * (hh[:, 2 * n :] + np.asarray(gru.hidden_bias[...])))
    return (1 - z) * c + z * h


def np_head(head, y, min_std):
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    return np_dense(head.mean, y), softplus(np_dense(head.std, y + 0.54)) + min_std


def np_rssm_step(cell, prev, embed, context, noise):
    """docs/model.md#rssm-cell, written out in NumPy."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = relu(np_dense(cell.prior_in, np.concatenate([prev["sample"], context], -1)))
    det = np_gru(cell.gru, prev["det_state"], x)
    y = relu(np_dense(cell.prior_hidden, det))
    pm, ps = np_head(cell.prior_head, y, 1e-4)
    prior = dict(sample=pm + ps * noise[:, 0], det=det, mean=pm, stddev=ps)
    x = relu(np_dense(cell.post_in, np.concatenate([det, embed], -1)))
    x = relu(np_dense(cell.post_hidden, x))
    qm, qs = np_head(cell.post_head, x, 1e-4)
    post = dict(sample=qm + qs * noise[:, 1], det=det, mean=qm, stddev=qs)
    return prior, post


@pytest.fixture
def cell():
    return RSSMCell(EMB, CTX, stoch_size=S, det_size=D, hidden_size=E, rngs=nnx.Rngs(3))


def random_state(rng):
    d = rng.normal(size=(B, D)).astype(np.float32)
    return GaussianState(
        sample=jnp.asarray(rng.normal(size=(B, S)).astype(np.float32)),
        det_state=jnp.asarray(d), det_out=jnp.asarray(d),
        mean=jnp.zeros((B, S)), stddev=jnp.ones((B, S)),
    )


def test_rssm_step_matches_numpy_spec(cell):
    rng = np.random.default_rng(0)
    state = random_state(rng)
    embed = rng.normal(size=(B, EMB)).astype(np.float32)
    context = rng.normal(size=(B, CTX)).astype(np.float32)
    key = jax.random.key(7)
    noise = cell.noise(key, B)
    np.testing.assert_array_equal(noise, jax.random.normal(key, (B, 2, S)))
    new, out = cell(state, jnp.asarray(embed), jnp.asarray(context), noise, use_obs=True)
    noise = np.asarray(noise)
    prev = dict(sample=np.asarray(state.sample), det_state=np.asarray(state.det_state))
    prior, post = np_rssm_step(cell, prev, embed, context, noise)
    for got, want in ((out.prior, prior), (out.posterior, post)):
        np.testing.assert_allclose(got.mean, want["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.stddev, want["stddev"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.sample, want["sample"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.det_state, want["det"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.det_out, want["det"], rtol=1e-5, atol=1e-5)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new, out.posterior))
    assert out.prior.feature.shape == (B, S + D)
    np.testing.assert_array_equal(out.prior.feature[:, :S], out.prior.sample)


def test_rssm_without_obs_posterior_is_prior(cell):
    rng = np.random.default_rng(1)
    state = random_state(rng)
    context = jnp.asarray(rng.normal(size=(B, CTX)).astype(np.float32))
    noise = cell.noise(jax.random.key(2), B)
    new, out = cell(state, None, context, noise, use_obs=False)
    assert out.posterior is out.prior and new is out.prior
    _, seen = cell(state, jnp.ones((B, EMB)), context, noise, use_obs=True)
    # The prior does not depend on whether the posterior is computed.
    np.testing.assert_array_equal(seen.prior.sample, out.prior.sample)


def test_stddev_shift_options_and_min_stddev():
    a = RSSMCell(EMB, CTX, stoch_size=S, det_size=D, hidden_size=E, rngs=nnx.Rngs(0))
    b = RSSMCell(EMB, CTX, stoch_size=S, det_size=D, hidden_size=E, min_stddev=0.5,
                 stddev_shift="preactivation", rngs=nnx.Rngs(0))
    y = jax.random.normal(jax.random.key(0), (B, E))
    k, bias = a.prior_head.std.kernel[...], a.prior_head.std.bias[...][None]
    _, std_a = a.prior_head(y)
    _, std_b = b.prior_head(y)
    np.testing.assert_allclose(std_a, jax.nn.softplus((y + 0.54) @ k + bias) + 1e-4, rtol=1e-5)
    np.testing.assert_allclose(std_b, jax.nn.softplus(y @ k + bias + 0.54) + 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="stddev_shift"):
        RSSMCell(EMB, CTX, stddev_shift="output", rngs=nnx.Rngs(0))


def test_fused_gru_equals_flax_linen_gru_cell():
    """The JAX port's GRU is linen's GRUCell (hidden bias on the candidate)."""
    import flax.linen as nn

    gru = GRU(4, 6, rngs=nnx.Rngs(0))
    gru.input_bias[...] = jax.random.normal(jax.random.key(5), (18,))
    gru.hidden_bias[...] = jax.random.normal(jax.random.key(6), (6,))
    k, hk, b = gru.input_kernel[...], gru.hidden_kernel[...], gru.input_bias[...]
    part = lambda a, i: a[..., 6 * i : 6 * (i + 1)]  # noqa: E731
    params = {"hn": {"kernel": part(hk, 2), "bias": gru.hidden_bias[...]}}
    for i, g in enumerate("rzn"):
        params["i" + g] = {"kernel": part(k, i), "bias": part(b, i)}
        if g != "n":
            params["h" + g] = {"kernel": part(hk, i)}
    x = jax.random.normal(jax.random.key(0), (3, 4))
    h = jax.random.normal(jax.random.key(1), (3, 6))
    want, _ = nn.GRUCell(6).apply({"params": params}, h, x)
    np.testing.assert_allclose(gru(h, x), want, rtol=1e-5, atol=1e-6)
    assert sum(p.size for p in jax.tree.leaves(nnx.state(gru, nnx.Param))) == sum(
        p.size for p in jax.tree.leaves(params)
    )


def test_unroll_equals_a_loop_of_single_steps(cell):
    rng = np.random.default_rng(2)
    n = 5
    embeds = jnp.asarray(rng.normal(size=(B, n, EMB)).astype(np.float32))
    contexts = jnp.asarray(rng.normal(size=(B, n, CTX)).astype(np.float32))
    key = jax.random.key(4)
    noise = draw_noise(cell, key, B, n)
    last, out = unroll(cell, cell.initial_state(B), embeds, contexts, noise, use_obs=True)
    state = cell.initial_state(B)
    for t in range(n):
        # Step t's noise comes from fold_in(key, t).
        step_noise = cell.noise(jax.random.fold_in(key, t), B)
        np.testing.assert_array_equal(noise[:, t], step_noise)
        state, step = cell(state, embeds[:, t], contexts[:, t], step_noise, use_obs=True)
        np.testing.assert_allclose(out.posterior.mean[:, t], step.posterior.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.prior.stddev[:, t], step.prior.stddev, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.det_state, state.det_state, rtol=1e-5, atol=1e-6)
    assert out.posterior.sample.shape == (B, n, S)


def test_gru_cell_is_deterministic_with_zero_kl():
    cell = GRUCell(EMB, CTX, det_size=D, hidden_size=E, rngs=nnx.Rngs(0))
    assert isinstance(cell, Cell) and cell.feature_size == D
    contexts = jax.random.normal(jax.random.key(0), (B, 4, CTX))
    assert draw_noise(cell, jax.random.key(1), B, 4) is None  # a deterministic cell
    _, a = unroll(cell, cell.initial_state(B), None, contexts, None, use_obs=False)
    _, b = unroll(cell, cell.initial_state(B), jnp.ones((B, 4, EMB)), contexts, None,
                  use_obs=True)
    np.testing.assert_array_equal(a.posterior.feature, b.posterior.feature)
    assert isinstance(a.posterior, DeterministicState)
    np.testing.assert_array_equal(a.posterior.kl(a.prior), np.zeros((B, 4)))
    np.testing.assert_array_equal(a.posterior.entropy(), np.zeros((B, 4)))
    # One step by hand: h = GRU(0, relu(Dense(context))).
    h = cell.gru(jnp.zeros((B, D)), jax.nn.relu(cell.inp(contexts[:, 0])))
    np.testing.assert_allclose(a.posterior.det_out[:, 0], h, rtol=1e-5, atol=1e-6)


def test_unroll_checks_inputs(cell):
    contexts = jnp.zeros((B, 3, CTX))
    noise = draw_noise(cell, jax.random.key(0), B, 3)
    with pytest.raises(ValueError, match="needs embeddings"):
        unroll(cell, cell.initial_state(B), None, contexts, noise, use_obs=True)
    with pytest.raises(ValueError, match=rf"embeds must have shape \({B}, 3, {EMB}\), got \({B}, 4, {EMB}\)"):
        unroll(cell, cell.initial_state(B), jnp.zeros((B, 4, EMB)), contexts, noise,
               use_obs=True)
    with pytest.raises(ValueError, match=r"noise has leading shape \(2, 2\), expected \(2, 3\)"):
        unroll(cell, cell.initial_state(B), None, contexts, noise[:, :2], use_obs=False)


def test_chunked_unroll_equals_whole_unroll(cell):
    rng = np.random.default_rng(3)
    contexts = jnp.asarray(rng.normal(size=(B, 7, CTX)).astype(np.float32))
    key = jax.random.key(8)
    noise = lambda n, start=0: draw_noise(cell, key, B, n, start=start)  # noqa: E731
    last, whole = unroll(cell, cell.initial_state(B), None, contexts, noise(7), use_obs=False)
    mid, first = unroll(cell, cell.initial_state(B), None, contexts[:, :3], noise(3),
                        use_obs=False)
    end, second = unroll(cell, mid, None, contexts[:, 3:], noise(4, 3), use_obs=False)
    joined = jnp.concatenate([first.prior.sample, second.prior.sample], axis=1)
    np.testing.assert_allclose(joined, whole.prior.sample, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end.det_state, last.det_state, rtol=1e-5, atol=1e-6)


class ProtocolOnlyCell:
    """A cell with only the protocol (no prepare/step): a random walk of the context."""

    feature_size = context_size = embed_size = 2

    def initial_state(self, batch_size, dtype=jnp.float32):
        return DeterministicState(jnp.zeros((batch_size, 2), dtype), jnp.zeros((batch_size, 2), dtype))

    def noise(self, key, batch_size, dtype=jnp.float32):
        return jax.random.normal(key, (batch_size, 2), dtype)

    def __call__(self, state, embed, context, noise, *, use_obs):
        x = state.det_out + context + noise
        if use_obs:
            x = x + embed
        new = DeterministicState(x, x)
        return new, StepOutput(new, new)


def test_unroll_of_a_protocol_only_cell_equals_its_loop():
    cell = ProtocolOnlyCell()
    assert isinstance(cell, Cell)
    check_cell(cell)
    contexts = jnp.ones((B, 4, 2))
    embeds = jnp.full((B, 4, 2), 0.5)
    key = jax.random.key(1)
    _, out = unroll(cell, cell.initial_state(B), embeds, contexts, draw_noise(cell, key, B, 4),
                    use_obs=True)
    state = cell.initial_state(B)
    for t in range(4):
        noise = jax.random.normal(jax.random.fold_in(key, t), (B, 2))
        state, step = cell(state, embeds[:, t], contexts[:, t], noise, use_obs=True)
        np.testing.assert_allclose(out.posterior.det_out[:, t], step.posterior.det_out, rtol=1e-6)


class _Bad(ProtocolOnlyCell):
    pass


def _bad_cells():
    no_call = type("NoCall", (), {"feature_size": 2, "context_size": 2, "embed_size": 2,
                                  "initial_state": ProtocolOnlyCell.initial_state})()
    half_fast = _Bad()
    half_fast.prepare = lambda *a, **k: None
    wide = _Bad()
    wide.feature_size = 3
    grows = _Bad()
    grows.__class__ = type("Grows", (ProtocolOnlyCell,), {
        "__call__": lambda self, s, e, c, n, *, use_obs: (
            DeterministicState(jnp.zeros((2, 5)), jnp.zeros((2, 5))), StepOutput(s, s))})
    plain = _Bad()
    plain.__class__ = type("Plain", (ProtocolOnlyCell,), {
        "__call__": lambda self, s, e, c, n, *, use_obs: (s, StepOutput(c, c))})
    tuple_out = _Bad()
    tuple_out.__class__ = type("TupleOut", (ProtocolOnlyCell,), {
        "__call__": lambda self, s, e, c, n, *, use_obs: (s, [s])})
    broken = _Bad()
    broken.__class__ = type("Broken", (ProtocolOnlyCell,), {
        "__call__": lambda self, s, e, c, n, *, use_obs: (s, StepOutput(s, s * 2))})
    return [
        (no_call, TypeError, r"cells\[1\] \(NoCall\) does not follow the Cell protocol: it has no __call__"),
        (half_fast, TypeError, r"cells\[1\] has prepare but no step"),
        (wide, ValueError, r"cells\[1\]: the prior's feature has shape \(2, 2\), expected .* \(2, 3\)"),
        (grows, ValueError, r"cells\[1\]: a step with use_obs=True returned a state .* must keep the carry"),
        (plain, TypeError, r"cells\[1\]: the prior \(ShapeDtypeStruct\) has no 'feature'"),
        (tuple_out, TypeError, r"cells\[1\]: a step with use_obs=True must return \(state, StepOutput"),
        (broken, TypeError, r"cells\[1\] \(Broken\): a step with use_obs=True failed"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_check_cell_names_the_level_and_the_fault(index):
    cell, error, match = _bad_cells()[index]
    with pytest.raises(error, match=match):
        check_cell(cell, "cells[1]")
