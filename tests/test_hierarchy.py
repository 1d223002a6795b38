import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork.cells import GRUCell, RSSMCell, draw_noise, unroll
from clockwork.hierarchy import Clock, Hierarchy, parse_use_obs

EMB, B = 8, 2


def rssm(context, s=3, d=5, seed=0):
    return RSSMCell(EMB, context, stoch_size=s, det_size=d, hidden_size=6, rngs=nnx.Rngs(seed))


def three_levels(factors=(2, 3)):
    # Level sizes differ per level and the middle level is deterministic.
    top = rssm(4 + 6, s=4, d=6, seed=2)
    mid = GRUCell(EMB, top.feature_size, det_size=7, hidden_size=5, rngs=nnx.Rngs(1))
    low = rssm(mid.feature_size, seed=0)
    return Hierarchy([low, mid, top], Clock(factors))


def embeddings(clock, frames, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(B, n, EMB)).astype(np.float32))
            for n in clock.num_steps(frames)]


def test_one_level_equals_plain_scan_of_its_cell():
    cell = rssm(3)
    hier = Hierarchy([cell], Clock(()))
    e = embeddings(hier.clock, 9)
    key = jax.random.key(3)
    out = hier.observe(e, key)
    # The plain unroll: zero context, the level's key, a Python loop over steps.
    k0 = jax.random.split(key, 1)[0]
    state = cell.initial_state(B)
    for t in range(9):
        noise = cell.noise(jax.random.fold_in(k0, t), B)
        state, step = cell(state, e[0][:, t], jnp.zeros((B, 3)), noise, use_obs=True)
        np.testing.assert_allclose(out.posteriors[0].sample[:, t], step.posterior.sample, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.priors[0].mean[:, t], step.prior.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.last[0].det_state, state.det_state, rtol=1e-5, atol=1e-6)


def test_shapes_with_mixed_cells_and_factors():
    hier = three_levels()
    out = hier.observe(embeddings(hier.clock, 13), jax.random.key(0))
    assert [p.feature.shape for p in out.posteriors] == [(B, 13, 8), (B, 7, 7), (B, 3, 10)]
    assert out.last[2].sample.shape == (B, 4)
    # Each level's last state is its posterior after its own last step, whatever its cell.
    for level in range(3):
        for last, steps in zip(jax.tree.leaves(out.last[level]),
                               jax.tree.leaves(out.posteriors[level]), strict=True):
            np.testing.assert_allclose(last, steps[:, -1], rtol=1e-6, atol=1e-7)
    # The deterministic (GRU) level's prior is its posterior.
    np.testing.assert_allclose(out.priors[1].feature, out.posteriors[1].feature, rtol=1e-6,
                               atol=1e-7)


def test_top_down_only():
    hier = three_levels()
    key = jax.random.key(1)
    e = embeddings(hier.clock, 13)
    a = hier.observe(e, key)
    e2 = [e[0] + 1.0] + e[1:]
    b = hier.observe(e2, key)
    for level in (1, 2):
        for x, y in zip(jax.tree.leaves((a.priors[level], a.posteriors[level])),
                        jax.tree.leaves((b.priors[level], b.posteriors[level]))):
            np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.posteriors[0].mean, b.posteriors[0].mean)


def test_context_of_level_below_is_tiled_output_of_level_above():
    hier = three_levels(factors=(3, 2))
    key = jax.random.key(5)
    e = embeddings(hier.clock, 11)
    out = hier.observe(e, key)
    keys = jax.random.split(key, 3)
    # Level 0 re-run by hand with context[t] = level 1's posterior feature at t // 3.
    feat1 = np.asarray(out.posteriors[1].feature)
    ctx = jnp.asarray(np.stack([feat1[:, t // 3] for t in range(11)], axis=1))
    cell = hier.cells[0]
    noise = draw_noise(cell, keys[0], B, 11)
    _, manual = unroll(cell, cell.initial_state(B), e[0], ctx, noise, use_obs=True)
    np.testing.assert_allclose(manual.posterior.mean, out.posteriors[0].mean, rtol=1e-6)
    np.testing.assert_allclose(manual.prior.stddev, out.priors[0].stddev, rtol=1e-6)


def test_use_obs_per_level_and_imagine():
    hier = three_levels()
    e = embeddings(hier.clock, 12)
    out = hier.observe(e, jax.random.key(0), use_obs="TTF")
    top = out.posteriors[2]
    np.testing.assert_array_equal(top.mean, out.priors[2].mean)
    assert not np.allclose(out.posteriors[0].mean, out.priors[0].mean)
    img = hier.imagine(out.last, 7, jax.random.key(1))
    assert [p.feature.shape[1] for p in img.priors] == [7, 4, 2]
    for p, q in zip(img.priors, img.posteriors):
        assert p is q
    # Imagination starts from the given states: its first det state follows from them.
    state0, _ = hier.cells[2](out.last[2], None, jnp.zeros((B, 10)), jnp.zeros((B, 2, 4)),
                              use_obs=False)
    np.testing.assert_allclose(img.priors[2].det_state[:, 0], state0.det_state, rtol=1e-5, atol=1e-6)


def test_open_loop_ignores_nothing_but_its_context():
    hier = three_levels()
    ctx = 6
    e = embeddings(hier.clock, ctx)
    key = jax.random.key(2)
    seen, img = hier.open_loop(e, 10, key, use_obs="TTT")
    assert img.priors[0].feature.shape == (B, 10, 8)
    # An observation of the context under the first half of the key, then an imagination
    # from its last states under the second.
    k_obs, k_img = jax.random.split(key)
    want_seen = hier.observe(e, k_obs, use_obs="TTT")
    want_img = hier.imagine(want_seen.last, 10, k_img)
    for got, want in zip(jax.tree.leaves((seen, img)), jax.tree.leaves((want_seen, want_img)),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="context=7 must be a non-negative multiple of the top period 6"):
        hier.open_loop(embeddings(hier.clock, 7), 5, jax.random.key(0))


def test_actions_are_concatenated_to_level_zero_context():
    top = rssm(8, seed=1)
    low = rssm(top.feature_size + 2, seed=0)
    hier = Hierarchy([low, top], Clock((2,)), action_size=2)
    e = embeddings(hier.clock, 6)
    actions = jax.random.normal(jax.random.key(0), (B, 6, 2))
    a = hier.observe(e, jax.random.key(1), actions=actions)
    b = hier.observe(e, jax.random.key(1), actions=actions + 1.0)
    np.testing.assert_array_equal(a.posteriors[1].mean, b.posteriors[1].mean)
    assert not np.allclose(a.posteriors[0].mean, b.posteriors[0].mean)
    with pytest.raises(ValueError, match="actions must be given"):
        hier.observe(e, jax.random.key(1))
    with pytest.raises(ValueError, match="actions have shape"):
        hier.observe(e, jax.random.key(1), actions=actions[:, :5])


def test_bad_construction_and_inputs():
    top, low = rssm(8), rssm(9)
    with pytest.raises(ValueError, match="2 cells for a clock of 3 levels"):
        Hierarchy([low, top], Clock((2, 2)))
    with pytest.raises(ValueError, match="context_size is 9"):
        Hierarchy([low, top], Clock((2,)))
    with pytest.raises(TypeError, match="Clock"):
        Hierarchy([low], (1,))
    with pytest.raises(TypeError, match=r"cells\[0\] \(object\) does not follow the Cell protocol"):
        Hierarchy([object()], Clock(()))
    hier = three_levels()
    e = embeddings(hier.clock, 12)
    with pytest.raises(ValueError, match=r"embeds\[1\] must have shape"):
        hier.observe([e[0], e[1][:, :3], e[2]], jax.random.key(0))
    with pytest.raises(ValueError, match="expected 3 embeddings"):
        hier.observe(e[:2], jax.random.key(0))


@pytest.mark.parametrize("bad", ["TT", "TTX", "ttt", (True, False), (1, 0, 1)])
def test_bad_use_obs(bad):
    with pytest.raises(ValueError, match="use_obs"):
        parse_use_obs(bad, 3)


def test_parse_use_obs():
    assert parse_use_obs("TTF", 3) == (True, True, False)
    assert parse_use_obs(False, 2) == (False, False)
    assert parse_use_obs([True, False], 2) == (True, False)


def test_imagine_in_chunks_equals_one_imagination():
    hier = three_levels()
    out = hier.observe(embeddings(hier.clock, 6), jax.random.key(0))
    key = jax.random.key(4)
    whole = hier.imagine(out.last, 18, key)
    a = hier.imagine(out.last, 6, key)
    b = hier.imagine(a.last, 12, key, start=6)
    for level in range(3):
        joined = jnp.concatenate([a.priors[level].feature, b.priors[level].feature], axis=1)
        np.testing.assert_allclose(joined, whole.priors[level].feature, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="start=4 must be a non-negative multiple of the top period 6"):
        hier.imagine(out.last, 6, key, start=4)


def test_observe_with_drawn_noise_equals_observe_with_its_key():
    hier = three_levels()
    e = embeddings(hier.clock, 12)
    key = jax.random.key(3)
    noise = hier.noise(key, 12, B)
    assert [None if n is None else n.shape for n in noise] == [(B, 12, 2, 3), None, (B, 2, 2, 4)]
    a = hier.observe(e, key, use_obs="TFT")
    b = hier.observe(e, noise=noise, use_obs="TFT")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="exactly one of key"):
        hier.observe(e)
    with pytest.raises(ValueError, match="exactly one of key"):
        hier.observe(e, key, noise=noise)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        hier.observe(e, 3)
