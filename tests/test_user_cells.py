"""A user's own cells (tests/user_cells.py: written against the protocol only) on every
path of the library: a bare hierarchy, a model from parts, the registry, import paths,
checkpoints, and errors when a cell does not fit. The sharded paths are in
tests/parallel, the example trainer and evaluator in tests/examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import user_cells
from clockwork import CWVAE, Clock, ConvDecoder, ConvEncoder, Hierarchy, ModelConfig, cells
from clockwork.cells import RSSMCell
from clockwork.training import init_train_state, make_optimizer, make_train_step

B, E = 2, 6



def bare(fast: bool, seed: int = 0) -> Hierarchy:
    cls = user_cells.FastLeakyCell if fast else user_cells.LeakyCell
    rngs = nnx.Rngs(seed)
    top = RSSMCell(E, 9, stoch_size=4, det_size=5, hidden_size=6, rngs=rngs)
    mid = cls(E, top.feature_size, rngs=rngs)
    low = RSSMCell(E, mid.feature_size, stoch_size=2, det_size=3, hidden_size=4, rngs=rngs)
    return Hierarchy([low, mid, top], Clock((2, 2)))


def embeddings(hier, frames):
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.normal(size=(B, n, E)).astype(np.float32)) for n in hier.clock.num_steps(frames)]


def test_user_cell_mixed_with_builtins_in_a_bare_hierarchy():
    slow, fast = bare(False), bare(True)
    e = embeddings(slow, 12)
    key = jax.random.key(1)
    a, b = slow.observe(e, key), fast.observe(e, key)
    assert [p.feature.shape for p in a.posteriors] == [(B, 12, 5), (B, 6, 8), (B, 3, 9)]
    # The fast path gives the slow path's numbers (same parameters, same noise).
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # The user level's posterior reads its embeddings, and its KL is positive.
    assert float(jnp.min(a.posteriors[1].kl(a.priors[1]))) > 0
    # Level 1 by hand: a loop of the user's step with the noise of fold_in(level key, t).
    level_key = jax.random.split(key, 3)[1]
    context = jnp.repeat(a.posteriors[2].feature, 2, axis=1)
    state = slow.cells[1].initial_state(B)
    for t in range(6):
        noise = slow.cells[1].noise(jax.random.fold_in(level_key, t), B)
        state, out = slow.cells[1](state, e[1][:, t], context[:, t], noise, use_obs=True)
        np.testing.assert_allclose(a.posteriors[1].sample[:, t], out.posterior.sample, rtol=1e-5, atol=1e-6)
    # Imagination continues from the observed states, whole or in two parts.
    whole = slow.imagine(a.last, 8, jax.random.key(2))
    first = slow.imagine(a.last, 4, jax.random.key(2))
    second = slow.imagine(first.last, 4, jax.random.key(2), start=4)
    joined = jnp.concatenate([first.priors[1].feature, second.priors[1].feature], axis=1)
    np.testing.assert_allclose(joined, whole.priors[1].feature, rtol=1e-5, atol=1e-6)


def model_from_parts(seed=0):
    rngs = nnx.Rngs(seed)
    clock = Clock((2,))
    encoder = ConvEncoder(clock, filters=2, dense_layers=2, dense_embed_size=8, rngs=rngs)
    top = user_cells.FastLeakyCell(encoder.embed_size, 8, rngs=rngs)
    low = user_cells.LeakyCell(encoder.embed_size, top.feature_size, rngs=rngs)
    decoder = ConvDecoder(low.feature_size, filters=2, rngs=rngs)
    return CWVAE(encoder, Hierarchy([low, top], clock), decoder, conv_chunk=4)


def test_custom_cell_in_a_model_from_parts_trains_and_predicts():
    video = jax.random.uniform(jax.random.key(0), (2, 6, 64, 64, 1))
    optimizer = make_optimizer(3e-3)
    graphdef, state = init_train_state(model_from_parts(), optimizer, jax.random.key(1))
    step = make_train_step(graphdef, optimizer)
    losses = []
    for _ in range(5):
        state, metrics = step(state, video)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] and float(metrics["kl/1"]) > 0
    assert "prior_entropy/0" not in metrics  # the user's states have no entropy()
    model = nnx.merge(graphdef, state.params)
    key = jax.random.key(3)
    whole = model.open_loop(video[:, :2], 7, key, use_obs="TF")
    chunks = list(model.open_loop(video[:, :2], 7, key, use_obs="TF", chunk=2))
    assert whole.shape == (2, 7, 64, 64, 1) and [c.shape[1] for c in chunks] == [2, 2, 2, 1]
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-5)


def test_register_user_cell_and_build_from_config(clean_registry):
    cells.register("leaky", user_cells.LeakyCell)
    assert "leaky" in cells.registered()
    config = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=2,
                         enc_dense_embed_size=8, cell=("rssm", "leaky"),
                         cell_options=({"stoch_size": 2, "det_size": 3}, {"stoch": 4, "det": 7}))
    model = CWVAE.from_config(config, rngs=nnx.Rngs(0))
    low, top = model.hierarchy.cells
    assert isinstance(top, user_cells.LeakyCell) and top.feature_size == 11
    assert low.context_size == 11 and top.context_size == 11  # sizes from the cells
    loss, _ = model.loss(jnp.zeros((1, 4, 64, 64, 1)), jax.random.key(0))
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="cell 'leaky' is registered already"):
        cells.register("leaky", user_cells.FastLeakyCell)
    with pytest.raises(ValueError, match="unknown cell 'laeky'; registered cells: categorical, gru, leaky, lstm, mdn, rssm"):
        ModelConfig(cell="laeky")


def test_user_cell_import_path_builds_from_config():
    config = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=2,
                         enc_dense_embed_size=8, cell=("user_cells:FastLeakyCell", "rssm"),
                         cell_options=({"det": 4}, {"stoch_size": 2, "det_size": 3}))
    model = CWVAE.from_config(config, rngs=nnx.Rngs(0))
    assert type(model.hierarchy.cells[0]) is user_cells.FastLeakyCell
    assert model.hierarchy.cells[0].feature_size == 7
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        ModelConfig(cell="no_such_module:Cell")
    with pytest.raises(ValueError, match="module 'user_cells' has no 'Missing'"):
        ModelConfig(cell="user_cells:Missing")


def test_user_cell_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model = model_from_parts(seed=4)
    params = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", params)
    abstract = nnx.eval_shape(lambda: model_from_parts(seed=9))
    graphdef, target = nnx.split(abstract, nnx.Param)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "ckpt", target)
    back = nnx.merge(graphdef, restored)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(back, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    video = jnp.full((1, 2, 64, 64, 1), 0.5)
    np.testing.assert_array_equal(model.open_loop(video, 2, jax.random.key(0)),
                                  back.open_loop(video, 2, jax.random.key(0)))


def test_custom_cell_that_does_not_fit_fails_at_build_naming_the_level():
    rngs = nnx.Rngs(0)
    top = user_cells.LeakyCell(E, 8, rngs=rngs)
    low = user_cells.LeakyCell(E, 5, rngs=rngs)  # the level above emits 8
    with pytest.raises(ValueError, match=r"cells\[0\].context_size is 5, but the level above emits features of size 8"):
        Hierarchy([low, top], Clock((2,)))
    # An encoder whose embeddings the cells cannot read, a decoder of the wrong frames.
    clock = Clock((2,))
    encoder = ConvEncoder(clock, filters=2, dense_layers=0, rngs=rngs)
    hier = Hierarchy([user_cells.LeakyCell(E, 8, rngs=rngs), top], clock)
    decoder = ConvDecoder(8, filters=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"embedding of level 0 has shape \(1, 2, 64\) .* cells\[0\] reads \(1, 2, 6\)"):
        CWVAE(encoder, hier, decoder)
    good = Hierarchy([user_cells.LeakyCell(64, 8, rngs=rngs), user_cells.LeakyCell(64, 8, rngs=rngs)], clock)
    with pytest.raises(ValueError, match=r"decoder maps features \(1, 8\) to \(1, 64, 64, 3\), expected frames \(1, 64, 64, 1\)"):
        CWVAE(encoder, good, ConvDecoder(8, channels=3, filters=2, rngs=rngs))
    with pytest.raises(TypeError, match="needs a frame_shape"):
        CWVAE(object(), good, decoder)
