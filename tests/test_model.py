import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from clockwork import CWVAE, PRESETS, LossConfig, ModelConfig, SpeedConfig, preset
from clockwork.training import init_train_state, make_loss_fn, make_optimizer, make_train_step

TINY = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=2,
                   enc_dense_embed_size=6,
                   cell_options={"stoch_size": 3, "det_size": 4, "hidden_size": 5})


def build(config=TINY, seed=0, **speed):
    return CWVAE.from_config(config, speed=SpeedConfig(**speed), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model():
    return build()


def frames(shape=(2, 8, 64, 64, 1), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_presets_follow_the_paper():
    mm, mz, mr = (PRESETS[n] for n in ("mmnist", "mazes", "minerl"))
    for p in (mm, mz, mr):
        m = p.model
        assert m.clock.periods == (1, 6, 36) and m.cells()[0][0] == "rssm"
        assert (m.enc_dense_layers, m.enc_dense_embed_size, m.channel_mult, m.filters) == (3, 1000, 1, 32)
        assert (p.optim.adam_eps, p.optim.grad_clip_norm) == (1e-4, 1e4)
        assert p.speed == SpeedConfig() and p.loss.beta is None and p.loss.free_nats is None
    assert (mm.model.channels, mm.model.cell_options, mm.loss.dec_stddev, mm.optim.lr) == (
        1, {"stoch_size": 20, "det_size": 200, "hidden_size": 200}, 1.0, 3e-4)
    assert (mz.model.channels, mz.loss.dec_stddev, mz.optim.lr) == (3, 0.1, 3e-4)
    assert (mr.model.channels, mr.model.cell_options, mr.loss.dec_stddev, mr.optim.lr) == (
        3, {"stoch_size": 100, "det_size": 800, "hidden_size": 800}, 0.4, 1e-4)


def test_per_level_overrides():
    cfg = ModelConfig(levels=3, factors=(2, 4), cell=("rssm", "gru", "rssm"), filters=2,
                      enc_dense_embed_size=8,
                      cell_options=({"stoch_size": 3, "det_size": 6, "hidden_size": 7},
                                    {"det_size": 6, "hidden_size": 7},
                                    {"stoch_size": 5, "det_size": 6, "hidden_size": 7}))
    model = CWVAE.from_config(cfg, rngs=nnx.Rngs(0))
    cells = model.hierarchy.cells
    assert [type(c).__name__ for c in cells] == ["RSSMCell", "GRUCell", "RSSMCell"]
    assert [c.feature_size for c in cells] == [9, 6, 11]
    # Context sizes come from the cells above; the top reads its own feature size.
    assert [c.context_size for c in cells] == [6, 11, 11]
    assert model.hierarchy.clock.periods == (1, 2, 8)
    loss, metrics = model.loss(frames((1, 9, 64, 64, 1)), jax.random.key(0))
    assert float(metrics["kl/1"]) == 0.0 and np.isfinite(float(loss))


@pytest.mark.parametrize("make,match", [
    (lambda: ModelConfig(factors=(0, 2)), r"factors\[0\]"),
    (lambda: ModelConfig(factors=(2.5, 2)), r"factors\[0\]"),
    (lambda: ModelConfig(factors=(2,)), "give levels - 1 factors"),
    (lambda: ModelConfig(temporal_factor=0), "temporal_factor must be a positive int, got 0"),
    (lambda: ModelConfig(cell="lsmt"), "unknown cell 'lsmt'; registered cells: categorical, gru, lstm, mdn, rssm"),
    (lambda: ModelConfig(cell=("rssm", "gru")), "cell needs one name per level"),
    (lambda: ModelConfig(cell_options=({},)), "cell_options needs one mapping per level"),
    (lambda: ModelConfig(cell_options=3), "cell_options must be a mapping"),
    (lambda: ModelConfig(channels=0), "channels must be a positive int, got 0"),
    (lambda: ModelConfig(action_size=-1), "action_size must be a non-negative int, got -1"),
    (lambda: LossConfig(kl_grad_post_perc=1.5), "kl_grad_post_perc"),
    (lambda: LossConfig(dec_stddev=0), "dec_stddev must be a number > 0, got 0"),
    (lambda: LossConfig(beta="x"), "beta must be a number"),
    (lambda: SpeedConfig(conv_impl="cudnn"), "conv_impl must be one of"),
    (lambda: SpeedConfig(conv_chunk=0), "conv_chunk must be a positive int, got 0"),
    (lambda: SpeedConfig(compute_dtype="float16"), "compute_dtype must be one of"),
    (lambda: SpeedConfig(remat="yes"), r"remat must be a bool \(True or False\), got 'yes'"),
    (lambda: SpeedConfig(conv_product_dtype="float16"),
     r"conv_product_dtype must be one of \(None, 'bfloat16'\), got 'float16'"),
    (lambda: SpeedConfig(conv_impl="lax", conv_product_dtype="bfloat16"),
     r"conv_product_dtype='bfloat16' needs conv_impl=\"fast\""),
    (lambda: CWVAE.from_config(TINY, loss=LossConfig(beta=(1.0, 2.0, 3.0)), rngs=nnx.Rngs(0)),
     "beta needs one value per level"),
    (lambda: CWVAE.from_config(TINY.replace(cell_options={"stoch_size": 3, "depth": 2}),
                               rngs=nnx.Rngs(0)), r"cells\[0\].*depth"),
])
def test_config_rejects_bad_values(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_config_replace_and_unknown_fields():
    cfg = preset("minerl").model.replace(factors=(4, 4))
    assert cfg.clock.periods == (1, 4, 16) and cfg.channels == 3
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        TINY.replace(layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("kth")


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
    assert model.open_loop(x[:, :4], 6, jax.random.key(0)).shape == (1, 6, 64, 64, 1)
    assert model.open_loop(x[:, :0], 10, jax.random.key(0)).shape == (1, 10, 64, 64, 1)
    assert model.open_loop(x[:, :4], 0, jax.random.key(0)).shape == (1, 0, 64, 64, 1)
    with pytest.raises(ValueError, match="context length=3 must be a non-negative multiple of the top period 2"):
        model.open_loop(x[:, :3], 4, jax.random.key(0))
    with pytest.raises(ValueError, match="horizon must be a non-negative int"):
        model.open_loop(x[:, :4], -1, jax.random.key(0))
    with pytest.raises(ValueError, match="use_obs"):
        model.open_loop(x[:, :4], 4, jax.random.key(0), use_obs="TTF")
    with pytest.raises(ValueError, match="chunk=3 must be a non-negative multiple"):
        model.open_loop(x[:, :4], 4, jax.random.key(0), chunk=3)
    # TINY takes no actions (action_size 0): 4 + 4 frames of size 0 were expected.
    with pytest.raises(ValueError, match=r"actions must have shape \(1, 8, 0\), got \(1, 8, 2\)"):
        model.open_loop(x[:, :4], 4, jax.random.key(0), actions=jnp.zeros((1, 8, 2)))


def test_open_loop_reads_the_context(model):
    x = frames((2, 4, 64, 64, 1))
    a = model.open_loop(x, 6, jax.random.key(3), use_obs="TF")
    b = model.open_loop(x, 6, jax.random.key(3), use_obs="TF")
    np.testing.assert_array_equal(a, b)
    c = model.open_loop(x.at[:, 3].set(0.0), 6, jax.random.key(3), use_obs="TF")
    assert not np.allclose(a, c)


def test_train_step_compiles_once_and_learns():
    opt = make_optimizer(1e-2)
    graphdef, state = init_train_state(build(), opt, jax.random.key(0))
    step = make_train_step(graphdef, opt)
    batch = (np.asarray(frames((2, 4, 64, 64, 1))) * 255).astype(np.uint8)
    losses, norms = [], []
    for _ in range(6):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    assert step._cache_size() == 1  # one compilation for all six steps
    assert int(state.step) == 6
    assert losses[-1] < losses[0]
    assert all(np.isfinite(n) and n > 0 for n in norms)


def test_train_step_equals_manual_gradient_step():
    model = build(seed=1)
    opt = make_optimizer()
    graphdef, state = init_train_state(model, opt, jax.random.key(7))
    x = frames((1, 4, 64, 64, 1))
    _, sub = jax.random.split(jax.random.key(7))
    # Jitted (eager, it compiles each of hundreds of ops alone); still its own path:
    # nnx.grad of the model's loss, not the step's split-and-merge loss function.
    grads = nnx.jit(nnx.grad(lambda m: m.loss(x, sub)[0]))(model)
    new, _ = make_train_step(graphdef, opt, donate=False)(state, x)

    @jax.jit  # Adam's first update by hand (jitted: eager, each of its ops compiles alone)
    def first_update(grads, params):
        updates, _ = opt.update(grads, opt.init(params), params)
        return jax.tree.map(jnp.add, params, updates)

    with jax.numpy_dtype_promotion("standard"):
        want = first_update(nnx.state(grads, nnx.Param), state.params)
    chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-7)


def test_open_loop_in_chunks_equals_open_loop(model):
    x = frames((1, 4, 64, 64, 1))
    key = jax.random.key(6)
    whole = model.open_loop(x, 10, key, use_obs="TF")
    chunks = list(model.open_loop(x, 10, key, use_obs="TF", chunk=4))
    assert [c.shape[1] for c in chunks] == [4, 4, 2]
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-5)


def test_open_loop_decodes_in_conv_chunks():
    # 7 predicted frames at conv_chunk=3: two full chunks and a padded one, the same
    # frames as decoding all at once.
    x = frames((1, 4, 64, 64, 1))
    key = jax.random.key(4)
    out = [build(conv_chunk=c).open_loop(x, 7, key) for c in (3, None)]
    assert out[0].shape == (1, 7, 64, 64, 1)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


PLAIN = dict(conv_impl="lax", conv_chunk=None, remat=False)


@functools.cache
def loss_and_grads(speed: tuple, compute_dtype: str):
    """The loss, metrics and gradients of the tiny model built with ``dict(speed)``."""
    x = frames((2, 5, 64, 64, 1), seed=3)
    graphdef, params = nnx.split(build(**dict(speed)), nnx.Param)
    loss_fn = make_loss_fn(graphdef, compute_dtype=compute_dtype)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, x, jax.random.key(2))


@pytest.mark.parametrize("changes,dtype,rtol", [(dict(), "float32", 1e-5),
                                                (dict(conv_chunk=3), "float32", 1e-5),
                                                (dict(remat=True, conv_chunk=3), "float32", 1e-5),
                                                (dict(conv_impl="lax", conv_chunk=4), "float32", 1e-5),
                                                (dict(), "bfloat16", 2e-2)])
def test_speed_options_keep_the_loss_and_gradients(changes, dtype, rtol):
    """The defaults (matmul convs, chunked conv nets), remat and bfloat16 compute against
    the plain computation: float32, lax convolutions, all frames at once."""
    (l0, m0), g0 = loss_and_grads(tuple(PLAIN.items()), "float32")
    (l1, m1), g1 = loss_and_grads(tuple(changes.items()), dtype)
    np.testing.assert_allclose(float(l1), float(l0), rtol=rtol)
    np.testing.assert_allclose(float(m1["kl/1"]), float(m0["kl/1"]), rtol=max(rtol, 1e-4))
    assert jax.tree.leaves(g1)[0].dtype == jnp.float32
    if rtol < 1e-4:
        chex.assert_trees_all_close(g1, g0, rtol=1e-4, atol=1e-5)
    else:
        assert float(l1) != float(l0)  # bfloat16 does change the numbers


def test_bfloat16_conv_products_change_the_numbers_by_rounding_only():
    """conv_product_dtype="bfloat16" against the float32 defaults: the loss within 1e-5
    relative, the gradients within 0.2 % in global norm (2.2e-4 measured; the products'
    operands are rounded to 8 significant bits)."""
    (l0, m0), g0 = loss_and_grads((), "float32")
    (l1, m1), g1 = loss_and_grads((("conv_product_dtype", "bfloat16"),), "float32")
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    assert float(m1["nll"]) != float(m0["nll"])  # the rounding shows (this loss sum hides it)
    np.testing.assert_allclose(float(m1["kl/1"]), float(m0["kl/1"]), rtol=1e-4)
    assert {leaf.dtype for leaf in jax.tree.leaves(g1)} == {jnp.dtype(jnp.float32)}
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, g1, g0))
    assert 0 < float(diff) < 2e-3 * float(optax.tree.norm(g0))


def test_loss_with_drawn_noise_equals_loss_with_its_key(model):
    x = frames((2, 6, 64, 64, 1))
    key = jax.random.key(5)
    a, ma = model.loss(x, key)
    b, mb = model.loss(x, noise=model.noise(key, 2, 6))
    assert float(a) == float(b) and float(ma["kl/0"]) == float(mb["kl/0"])
