import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork import CWVAE, PRESETS, CWVAEConfig
from clockwork.training import init_train_state, make_optimizer, make_train_step

TINY = dict(levels=2, temporal_factor=2, filters=2, stoch_size=3, det_size=4, hidden_size=5,
            enc_dense_layers=2, enc_dense_embed_size=6, open_loop_ctx=4)


@pytest.fixture(scope="module")
def model():
    return CWVAE(CWVAEConfig.preset("mmnist", **TINY), rngs=nnx.Rngs(0))


def frames(shape=(2, 8, 64, 64, 1), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_presets_follow_the_paper():
    mm, mz, mr = PRESETS["mmnist"], PRESETS["mazes"], PRESETS["minerl"]
    for cfg in (mm, mz, mr):
        assert cfg.clock.periods == (1, 6, 36)
        assert (cfg.enc_dense_layers, cfg.enc_dense_embed_size, cfg.channel_mult) == (3, 1000, 1)
        assert (cfg.adam_eps, cfg.grad_clip_norm, cfg.batch_size, cfg.seq_len) == (1e-4, 1e4, 50, 100)
        assert cfg.min_stddev == 1e-4 and cfg.open_loop_ctx == 36
    assert (mm.channels, mm.stoch_size, mm.det_size, mm.hidden_size, mm.dec_stddev, mm.lr,
            mm.eval_seq_len) == (1, 20, 200, 200, 1.0, 3e-4, 1000)
    assert (mz.channels, mz.dec_stddev, mz.lr, mz.eval_seq_len) == (3, 0.1, 3e-4, 300)
    assert (mr.channels, mr.stoch_size, mr.det_size, mr.hidden_size, mr.dec_stddev, mr.lr,
            mr.eval_seq_len) == (3, 100, 800, 800, 0.4, 1e-4, 500)


def test_per_level_overrides():
    cfg = CWVAEConfig(levels=3, factors=(2, 4), cell=("rssm", "gru", "rssm"), stoch_size=(3, 4, 5),
                      det_size=6, hidden_size=7, filters=2, enc_dense_embed_size=8, open_loop_ctx=8)
    model = CWVAE(cfg, rngs=nnx.Rngs(0))
    cells = model.hierarchy.cells
    assert [type(c).__name__ for c in cells] == ["RSSMCell", "GRUCell", "RSSMCell"]
    assert [c.feature_size for c in cells] == [9, 6, 11]
    assert model.hierarchy.clock.periods == (1, 2, 8)
    loss, metrics = model.loss(frames((1, 9, 64, 64, 1)), jax.random.key(0))
    assert float(metrics["kl/1"]) == 0.0 and np.isfinite(float(loss))


@pytest.mark.parametrize("changes,match", [
    (dict(factors=(0, 2)), r"factors\[0\]"),
    (dict(factors=(2.5, 2)), r"factors\[0\]"),
    (dict(factors=(2,)), "give levels - 1 factors"),
    (dict(temporal_factor=0), "k must be"),
    (dict(cell="lstm"), "cell must be one of"),
    (dict(stoch_size=(1, 2)), "one value per level"),
    (dict(channels=0), "channels"),
    (dict(open_loop_ctx=-1), "open_loop_ctx"),
    (dict(kl_grad_post_perc=1.5), "kl_grad_post_perc"),
    (dict(beta=(1.0, 2.0)), "beta needs one value per level"),
    (dict(conv_impl="cudnn"), "conv_impl must be one of"),
    (dict(conv_chunk=0), "conv_chunk must be a positive integer or None"),
    (dict(compute_dtype="float16"), "compute_dtype must be"),
])
def test_config_rejects_bad_values(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CWVAEConfig.preset("mmnist", **changes)


def test_config_round_trip_and_unknown_fields():
    cfg = CWVAEConfig.preset("minerl", factors=(4, 4), stoch_size=(10, 20, 30))
    assert CWVAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        CWVAEConfig.preset("mmnist", layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        CWVAEConfig.preset("kth")


def test_loss_is_deterministic_under_a_key(model):
    x = frames()
    a, ma = model.loss(x, jax.random.key(0))
    b, mb = model.loss(x, jax.random.key(0))
    c, _ = model.loss(x, jax.random.key(1))
    assert float(a) == float(b) and float(ma["kl/1"]) == float(mb["kl/1"])
    assert float(a) != float(c)
    assert set(ma) >= {"loss", "nll", "kl", "kl/0", "kl/1", "prior_entropy/0", "post_entropy/1"}


@pytest.mark.parametrize("bad,err,match", [
    (jnp.zeros((2, 8, 64, 64)), ValueError, r"\(B, T, 64, 64, 1\)"),
    (jnp.zeros((2, 8, 32, 32, 1)), ValueError, r"\(B, T, 64, 64, 1\)"),
    (jnp.zeros((2, 8, 64, 64, 3)), ValueError, r"\(B, T, 64, 64, 1\)"),
    (jnp.zeros((2, 8, 64, 64, 1), jnp.uint8), TypeError, "floats"),
])
def test_bad_frames(model, bad, err, match):
    with pytest.raises(err, match=match):
        model.loss(bad, jax.random.key(0))
    with pytest.raises(err, match=match):
        model.open_loop(bad, 4, jax.random.key(0))


def test_open_loop_shapes_and_bad_context(model):
    x = frames((1, 10, 64, 64, 1))
    assert model.open_loop(x, 4, jax.random.key(0)).shape == (1, 6, 64, 64, 1)
    assert model.open_loop(x, 0, jax.random.key(0)).shape == (1, 10, 64, 64, 1)
    with pytest.raises(ValueError, match="multiple of the top period 2"):
        model.open_loop(x, 3, jax.random.key(0))
    with pytest.raises(ValueError, match="longer than the sequence"):
        model.open_loop(x, 12, jax.random.key(0))
    with pytest.raises(ValueError, match="use_obs"):
        model.open_loop(x, 4, jax.random.key(0), use_obs="TTF")
    with pytest.raises(TypeError, match="context must be an int"):
        model.open_loop(x, 4.0, jax.random.key(0))


def test_open_loop_does_not_read_frames_after_the_context(model):
    x = frames((2, 10, 64, 64, 1))
    y = x.at[:, 4:].set(frames((2, 6, 64, 64, 1), seed=5))
    a = model.open_loop(x, 4, jax.random.key(3), use_obs="TF")
    b = model.open_loop(y, 4, jax.random.key(3), use_obs="TF")
    np.testing.assert_array_equal(a, b)
    c = model.open_loop(x.at[:, 3].set(0.0), 4, jax.random.key(3), use_obs="TF")
    assert not np.allclose(a, c)


def test_train_step_compiles_once_and_learns():
    cfg = CWVAEConfig.preset("mmnist", **TINY, lr=1e-2)
    opt = make_optimizer(cfg)
    graphdef, state = init_train_state(CWVAE(cfg, rngs=nnx.Rngs(0)), opt, jax.random.key(0))
    traces = []

    @chex.assert_max_traces(n=1)
    def counted(state, x):
        traces.append(1)
        return state, x

    step = make_train_step(graphdef, opt)
    batch = (np.asarray(frames((2, 4, 64, 64, 1))) * 255).astype(np.uint8)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch)
        counted(state, batch)
        losses.append(float(metrics["loss"]))
    assert step._cache_size() == 1
    assert int(state.step) == 6
    assert losses[-1] < losses[0]
    assert np.isfinite(float(metrics["grad_norm"]))


def test_train_step_equals_manual_gradient_step():
    cfg = CWVAEConfig.preset("mmnist", **TINY)
    model = CWVAE(cfg, rngs=nnx.Rngs(1))
    opt = make_optimizer(cfg)
    graphdef, state = init_train_state(model, opt, jax.random.key(7))
    x = frames((1, 4, 64, 64, 1))
    _, sub = jax.random.split(jax.random.key(7))
    grads = nnx.grad(lambda m: m.loss(x, sub)[0])(model)
    new, _ = make_train_step(graphdef, opt, donate=False)(state, x)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(nnx.state(grads, nnx.Param), opt.init(state.params), state.params)
    want = jax.tree.map(lambda p, u: p + u, state.params, updates)
    chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-7)


def test_open_loop_in_chunks_equals_open_loop(model):
    x = frames((1, 14, 64, 64, 1))
    key = jax.random.key(6)
    whole = model.open_loop(x, 4, key, use_obs="TF")
    chunks = list(model.open_loop_chunks(x[:, :4], 10, key, use_obs="TF", chunk=4))
    assert [c.shape[1] for c in chunks] == [4, 4, 2]
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk=3"):
        next(model.open_loop_chunks(x[:, :4], 10, key, chunk=3))
    with pytest.raises(ValueError, match="not a multiple of the top period"):
        next(model.open_loop_chunks(x[:, :3], 10, key))


def test_open_loop_decodes_in_conv_chunks():
    # 7 predicted frames at conv_chunk=3: two full chunks and a padded one, the same
    # frames as decoding all at once.
    x = frames((1, 11, 64, 64, 1))
    key = jax.random.key(4)
    out = [CWVAE(CWVAEConfig.preset("mmnist", **TINY, conv_chunk=c), rngs=nnx.Rngs(0))
           .open_loop(x, 4, key) for c in (3, None)]
    assert out[0].shape == (1, 7, 64, 64, 1)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


PLAIN = dict(conv_impl="lax", conv_chunk=None, remat=False, compute_dtype="float32")


@pytest.mark.parametrize("changes,rtol", [(dict(), 1e-5),
                                          (dict(conv_chunk=3), 1e-5),
                                          (dict(remat=True, conv_chunk=3), 1e-5),
                                          (dict(conv_impl="lax", conv_chunk=4), 1e-5),
                                          (dict(compute_dtype="bfloat16"), 2e-2)])
def test_speed_options_keep_the_loss_and_gradients(changes, rtol):
    """The defaults (matmul convs, chunked conv nets), remat and bfloat16 compute against
    the plain computation: float32, lax convolutions, all frames at once."""
    from clockwork.training import make_loss_fn

    x = frames((2, 5, 64, 64, 1), seed=3)
    results = []
    for cfg in (CWVAEConfig.preset("mmnist", **TINY, **PLAIN),
                CWVAEConfig.preset("mmnist", **TINY, **changes)):
        graphdef, params = nnx.split(CWVAE(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        loss_fn = make_loss_fn(graphdef)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, jax.random.key(2))
        results.append((loss, metrics, grads))
    (l0, m0, g0), (l1, m1, g1) = results
    np.testing.assert_allclose(float(l1), float(l0), rtol=rtol)
    np.testing.assert_allclose(float(m1["kl/1"]), float(m0["kl/1"]), rtol=max(rtol, 1e-4))
    assert jax.tree.leaves(g1)[0].dtype == jnp.float32
    if rtol < 1e-4:
        chex.assert_trees_all_close(g1, g0, rtol=1e-4, atol=1e-5)
