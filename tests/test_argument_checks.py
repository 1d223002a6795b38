"""Every public entry point checks its arguments where they enter: a ``TypeError`` for a
value of the wrong type, a ``ValueError`` for one out of range, each naming the argument
("<argument> must be <expected>, got <what it got>"). One test per category; the models
are built once per module and nothing bad reaches a computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from clockwork import (CWVAE, Clock, Hierarchy, LossConfig, ModelConfig, OptimConfig,
                       SpeedConfig, _checks, data, losses, metrics, parallel)
from clockwork.cells import CategoricalRSSMCell, GRUCell, RSSMCell, draw_noise, unroll
from clockwork.hierarchy import parse_use_obs
from clockwork.nets import ConvDecoder, ConvEncoder, conv_layout
from clockwork.training import init_train_state, make_loss_fn, make_optimizer, make_train_step

TINY = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=1,
                   enc_dense_embed_size=4,
                   cell_options={"stoch_size": 2, "det_size": 3, "hidden_size": 3})
KEY = jax.random.key(0)
GOOD = jnp.full((1, 4, 64, 64, 1), 0.5)


@pytest.fixture(scope="module")
def model() -> CWVAE:
    return CWVAE.from_config(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def cell() -> RSSMCell:
    return RSSMCell(4, 3, stoch_size=2, det_size=5, hidden_size=6, rngs=nnx.Rngs(0))


def raises(error: type[Exception], match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn,match", [
    (lambda: ModelConfig(levels=2.5), r"^levels must be a positive int, got 2\.5 \(float\)$"),
    (lambda: ModelConfig(channels="1"), r"^channels must be a positive int, got '1' \(str\)$"),
    (lambda: ModelConfig(cell=3), r"^cell must be a name or an import path, got 3 \(int\)$"),
    (lambda: RSSMCell(4, 3, det_size=2.5, rngs=nnx.Rngs(0)), r"^det_size must be a positive int"),
    (lambda: GRUCell(4, True, rngs=nnx.Rngs(0)), r"^context_size must be a positive int, got True"),
    (lambda: RSSMCell(4, 3, rngs=0), r"^rngs must be a Rngs, got int$"),
    (lambda: CWVAE.from_config(TINY, loss={}, rngs=nnx.Rngs(0)), r"^loss must be a LossConfig, got dict$"),
    (lambda: ConvEncoder((2,), rngs=nnx.Rngs(0)), r"^clock must be a Clock, got tuple$"),
    (lambda: ConvEncoder(Clock((2,)), dense_layers=1.5, rngs=nnx.Rngs(0)),
     r"^dense_layers must be a non-negative int, got 1\.5 \(float\)$"),
    (lambda: conv_layout((64.0, 64)), r"^frame_size must be \(height, width\) ints"),
    (lambda: make_optimizer("1"), r"^lr must be a number > 0, got '1' \(str\)$"),
    (lambda: make_train_step(None, make_optimizer(), donate="no"),
     r"^donate must be a bool \(True or False\), got 'no' \(str\)$"),
    (lambda: metrics.psnr([[[0.0]]], [[[0.0]]]), r"^pred must be an array of shape \(\.\.\., H, W, C\)"),
    (lambda: data.VideoPipeline(np.zeros((2, 4, 8, 8, 1), np.uint8), seq_len=2, batch_size=True),
     r"^batch_size must be a positive int, got True \(bool\)$"),
    (lambda: data.generate_moving_mnist(1.5, 4), r"^num_videos must be a non-negative int, got 1\.5"),
    (lambda: parallel.make_sharded_train_step(None, make_optimizer(), (1, 1)),
     r"^mesh must be a Mesh, got tuple$"),
    (lambda: init_train_state(object(), make_optimizer(), KEY), r"^model must be a Module, got object$"),
])
def test_types(fn, match):
    raises(TypeError, match, fn)


def test_types_on_a_model(model, cell):
    raises(TypeError, r"^frames must be an array of shape \(B, T, 64, 64, 1\), got \[\[0\.0\]\] \(list\)$",
           model.loss, [[0.0]], KEY)
    raises(TypeError, r"^remat must be a bool \(True or False\), got 'yes' \(str\)$",
           CWVAE, model.encoder, model.hierarchy, model.decoder, remat="yes")
    raises(TypeError, r"^conv_chunk must be a positive int, got 2\.0 \(float\)$",
           CWVAE, model.encoder, model.hierarchy, model.decoder, conv_chunk=2.0)
    raises(TypeError, r"^horizon must be a non-negative int, got 2\.0 \(float\)$",
           model.open_loop, GOOD[:, :2], 2.0, KEY)
    raises(TypeError, r"^batch_size must be a positive int, got 1\.5 \(float\)$", model.noise, KEY, 1.5, 4)
    raises(TypeError, r"^frames must be a non-negative int, got 2\.0 \(float\)$",
           model.hierarchy.imagine, model.hierarchy.initial_state(1), 2.0, KEY)


def test_shapes(model, cell):
    raises(ValueError, r"^frames must have shape \(B, T, 64, 64, 1\), got \(4, 64, 64, 1\)$",
           model.loss, GOOD[0], KEY)
    raises(ValueError, r"^frames must have shape \(B, T, 64, 64, 1\), got \(1, 4, 32, 32, 1\)$",
           model.encoder, GOOD[:, :, :32, :32])
    raises(ValueError, r"^features must have shape \(\.\.\., 5\), got \(2, 7\)$", model.decode, jnp.zeros((2, 7)))
    raises(ValueError, r"^features must have shape \(\.\.\., 5\), got \(2, 7\)$",
           model.decoder, jnp.zeros((2, 7)))
    raises(ValueError, r"^frames must hold B >= 1 sequences of T >= 1 frames, got shape \(1, 0, 64, 64, 1\)$",
           model.loss, GOOD[:, :0], KEY)
    raises(ValueError, r"^frames must hold B >= 1 sequences of T >= 1 frames, got shape \(0, 4, 64, 64, 1\)$",
           model.loss, GOOD[:0], KEY)
    embeds = model.encoder(GOOD)
    raises(ValueError, r"^embeds\[1\] must have shape \(1, 2, 64\), got \(1, 4, 64\)$",
           model.hierarchy.observe, [embeds[0], embeds[0]], KEY)
    raises(ValueError, r"^contexts must have shape \(B, N, 3\), got \(2, 3, 7\)$",
           unroll, cell, cell.initial_state(2), None, jnp.zeros((2, 3, 7)), None, use_obs=False)
    x = jnp.zeros((2, 8, 8, 3))
    raises(ValueError, r"^target must have the shape of pred \(2, 8, 8, 3\), got \(1, 8, 8, 3\)$",
           metrics.psnr, x, x[:1])
    raises(ValueError, r"^values must have shape \(\.\.\., num_samples, horizon\), got \(3,\)$",
           metrics.best_of_samples, jnp.zeros(3))
    raises(ValueError, r"^curves must have shape \(num_examples, horizon\), got \(3,\)$",
           metrics.summarize_curves, jnp.zeros(3))
    raises(ValueError, r"^mean_p must have the shape of mean_q \(2,\), got \(3,\)$",
           losses.gaussian_kl, jnp.zeros(2), jnp.ones(2), jnp.zeros(3), jnp.ones(3))
    raises(ValueError, r"^log_q must have shape \(\.\.\., G, C\), got \(3,\)$",
           losses.categorical_kl, jnp.zeros(3), jnp.zeros(3))
    raises(ValueError, r"^x must have shape \(B, T, \.\.\.\), got \(4,\)$", Clock((2,)).merge, jnp.zeros(4), 1)


def test_dtypes(model):
    raises(TypeError, r"^frames must be floats in \[0, 1\], got dtype int32 \(convert uint8 video",
           model.loss, GOOD.astype(jnp.int32), KEY)
    raises(TypeError, r"^features must be a float array, got dtype int32$", model.decode,
           jnp.zeros((2, 5), jnp.int32))
    embeds = [e.astype(jnp.int32) for e in model.encoder(GOOD)]
    raises(TypeError, r"^embeds\[0\] must be a float array, got dtype int32$",
           model.hierarchy.observe, embeds, KEY)
    raises(TypeError, r"^frames must be a float array, got dtype uint8$", losses.reconstruction_nll,
           jnp.zeros((1, 2), jnp.uint8), jnp.zeros((1, 2)), 1.0)
    raises(TypeError, r"^pred must be a float array, got dtype uint8$", metrics.ssim,
           jnp.zeros((1, 8, 8, 1), jnp.uint8), jnp.zeros((1, 8, 8, 1), jnp.uint8))


@pytest.mark.parametrize("fn,match", [
    (lambda: RSSMCell(4, 3, stoch_size=0, rngs=nnx.Rngs(0)), r"^stoch_size must be a positive int, got 0$"),
    (lambda: RSSMCell(-1, 3, rngs=nnx.Rngs(0)), r"^embed_size must be a non-negative int, got -1$"),
    (lambda: RSSMCell(4, 3, min_stddev=-1.0, rngs=nnx.Rngs(0)), r"^min_stddev must be a number >= 0, got -1\.0$"),
    (lambda: CategoricalRSSMCell(4, 3, classes=1, rngs=nnx.Rngs(0)), r"^classes must be an int >= 2, got 1$"),
    (lambda: ConvEncoder(Clock((2,)), filters=0, rngs=nnx.Rngs(0)), r"^filters must be a positive int, got 0$"),
    (lambda: ConvDecoder(0, rngs=nnx.Rngs(0)), r"^feature_size must be a positive int, got 0$"),
    (lambda: make_optimizer(float("inf")), r"^lr must be a finite number > 0, got inf$"),
    (lambda: losses.unimix(jnp.zeros(3), 1.5), r"^mix must be a number in \[0, 1\], got 1\.5$"),
    (lambda: losses.elbo_from_nll(jnp.zeros(()), 0, [], []), r"^frames must be a positive int, got 0$"),
    (lambda: metrics.psnr(jnp.ones((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), 0.0),
     r"^data_range must be a number > 0, got 0\.0$"),
    (lambda: metrics.ssim(jnp.ones((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), k1=-1.0),
     r"^k1 must be a number >= 0, got -1\.0$"),
    (lambda: metrics.summarize_curves(jnp.zeros((2, 3)), (150,)),
     r"^percentiles\[0\] must be a number in \[0, 100\], got 150$"),
    (lambda: parallel.make_mesh(0), r"^data must be a positive int, got 0$"),
    (lambda: data.generate_moving_mnist(-1, 4), r"^num_videos must be a non-negative int, got -1$"),
    (lambda: next(data.iter_moving_mnist(1, 2, chunk_frames=0)),
     r"^chunk_frames must be a positive int, got 0$"),
    (lambda: data.split_of("a.mp4", 2.0), r"^test_fraction must be a number in \[0, 1\], got 2\.0$"),
])
def test_ranges(fn, match):
    raises(ValueError, match, fn)


def test_ranges_on_a_model(model):
    raises(ValueError, r"^horizon must be a non-negative int, got -1$", model.open_loop, GOOD[:, :2], -1, KEY)
    raises(ValueError, r"^horizon must be a non-negative int, got -1$", model.hierarchy.open_loop,
           model.encoder(GOOD[:, :2]), -1, KEY)
    raises(ValueError, r"^batch_size must be a positive int, got 0$", model.noise, KEY, 0, 4)
    raises(ValueError, r"^chunk must be a positive int, got 0$", model.open_loop, GOOD[:, :2], 2, KEY, chunk=0)
    raises(ValueError, r"^chunk must be a positive int, got 0$", model.encoder, GOOD, chunk=0)


def test_non_finite_frames(model):
    nan = GOOD.at[0, 1, 2, 3, 0].set(jnp.nan)
    raises(ValueError,
           r"^frames must be finite, got 1 NaN or infinite value\(s\), the first at index \(0, 1, 2, 3, 0\)$",
           model.loss, nan, KEY)
    raises(ValueError,
           r"^frames must be finite, got 2 NaN or infinite value\(s\), the first at index \(0, 0, 0, 0, 0\)$",
           model.observe, np.asarray(GOOD.at[0, :2, 0, 0, 0].set(jnp.inf)), KEY)
    raises(ValueError, r"^context must be finite, got 1 NaN", model.open_loop, nan[:, :2], 2, KEY)
    # A concrete array seen while tracing is still checked (and adds no operation) ...
    with pytest.raises(ValueError, match="^frames must be finite"):
        jax.make_jaxpr(lambda: model.loss(nan, KEY))()
    # ... but traced values are not read: inside jit the checks add nothing to the program.
    graphdef, state = init_train_state(model, make_optimizer(), KEY)
    jaxpr = str(jax.make_jaxpr(make_loss_fn(graphdef))(state.params, nan, KEY))
    assert "is_finite" not in jaxpr


def test_finite_adds_no_operation_under_jit():
    jaxpr = jax.make_jaxpr(lambda x: (_checks.finite("x", x), x + 1.0)[1])(jnp.array([jnp.nan]))
    assert [e.primitive.name for e in jaxpr.eqns] == ["add"]
    _checks.finite("x", np.arange(3))  # integer arrays are always finite


def test_keys(model, cell):
    raises(TypeError, r"^key must be a PRNG key \(jax\.random\.key\(seed\)\), got 0 \(int\)$",
           model.loss, GOOD, 0)
    raises(TypeError, r"^key must be a PRNG key .*, got an array of shape \(2,\) and dtype float32$",
           model.open_loop, GOOD[:, :2], 2, jnp.zeros(2))
    raises(TypeError, r"^key must be a PRNG key .*, got an array of shape \(3,\) and dtype uint32$",
           model.noise, jnp.zeros(3, jnp.uint32), 1, 4)
    raises(ValueError, r"^key must be a single PRNG key .*, got an array of shape \(2,\) and dtype key<fry>",
           model.loss, GOOD, jax.random.split(KEY))
    raises(TypeError, r"^key must be a PRNG key", init_train_state, model, make_optimizer(), 0)
    raises(TypeError, r"^key must be a PRNG key", draw_noise, cell, 0, 2, 3)
    raises(TypeError, r"^key must be a PRNG key", model.hierarchy.open_loop, model.encoder(GOOD[:, :2]), 2, 1.0)
    # Legacy raw keys (jax.random.PRNGKey) are PRNG keys too: the same numbers.
    typed = model.noise(jax.random.key(3), 1, 4)
    raw = model.noise(jax.random.PRNGKey(3), 1, 4)
    for a, b in zip(jax.tree.leaves(typed), jax.tree.leaves(raw), strict=True):
        np.testing.assert_array_equal(a, b)


def test_factors_and_context_lengths(model):
    raises(ValueError, r"^factors\[1\] must be a positive int, got 0$", Clock, (2, 0))
    raises(TypeError, r"^factors must be a sequence of positive ints, got 2 \(int\)$", Clock, 2)
    raises(ValueError, r"^temporal_factor must be a positive int, got 0$", ModelConfig, temporal_factor=0)
    raises(TypeError, r"^factors must be a sequence of positive ints, or None, got 4 \(int\)$",
           ModelConfig, factors=4)
    raises(ValueError, r"^context length=3 must be a non-negative multiple of the top period 2$",
           model.open_loop, GOOD[:, :3], 2, KEY)
    raises(ValueError, r"^chunk=3 must be a non-negative multiple of the top period 2$",
           model.open_loop, GOOD[:, :2], 4, KEY, chunk=3)
    raises(ValueError, r"^start=1 must be a non-negative multiple of the top period 2$",
           model.hierarchy.imagine, model.hierarchy.initial_state(1), 2, KEY, start=1)
    raises(ValueError, r"^ctx must be a non-negative int, got -2$", Clock((2,)).check_top_multiple, -2, "ctx")


def test_use_obs(model, cell):
    raises(ValueError, r"^use_obs must be 2 letters T or F \(one per level\), got 'TX'$",
           model.observe, GOOD, KEY, use_obs="TX")
    raises(ValueError, r"^use_obs must be 2 letters T or F \(one per level\), got 'TTF'$",
           model.open_loop, GOOD[:, :2], 2, KEY, use_obs="TTF")
    raises(TypeError, r"^use_obs must be a bool, a string of T and F or a sequence of bools, got 1 \(int\)$",
           parse_use_obs, 1, 2)
    raises(ValueError, r"^use_obs must hold 2 bools \(one per level\), got \[1, 0\]$", parse_use_obs, [1, 0], 2)
    raises(ValueError, r"^levels must be a positive int, got 0$", parse_use_obs, True, 0)
    state = cell.initial_state(2)
    # A string is no flag: "F" would have observed.
    raises(TypeError, r"^use_obs must be a bool \(True or False\), got 'F' \(str\)$",
           unroll, cell, state, jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 3)), None, use_obs="F")
    raises(TypeError, r"^use_obs must be a bool \(True or False\), got 'F' \(str\)$",
           cell, state, jnp.zeros((2, 4)), jnp.zeros((2, 3)), jnp.zeros((2, 2, 2)), use_obs="F")


@pytest.mark.parametrize("fn,error,match", [
    (lambda: LossConfig(dec_stddev=float("inf")), ValueError,
     r"^dec_stddev must be a finite number > 0, got inf$"),
    (lambda: LossConfig(beta=float("nan")), ValueError, r"^beta must be a finite number >= 0, got nan$"),
    (lambda: LossConfig(free_bits=-1.0), ValueError, r"^free_bits must be a number >= 0, got -1\.0$"),
    (lambda: LossConfig(dec_stddev="1"), TypeError, r"^dec_stddev must be a number > 0, got '1' \(str\)$"),
    (lambda: LossConfig(beta={"a": 1}), TypeError, r"^beta must be a number, one number per level, or None"),
    (lambda: OptimConfig(lr=-1), ValueError, r"^lr must be a number > 0, got -1$"),
    (lambda: OptimConfig(grad_clip_norm=float("inf")), ValueError,
     r"^grad_clip_norm must be a finite number > 0"),
    (lambda: SpeedConfig(remat=1), TypeError, r"^remat must be a bool \(True or False\), got 1 \(int\)$"),
    (lambda: SpeedConfig(conv_impl="cudnn"), ValueError,
     r"^conv_impl must be one of \('fast', 'lax'\), got 'cudnn'$"),
    (lambda: SpeedConfig(conv_chunk=0), ValueError, r"^conv_chunk must be a positive int, got 0$"),
    (lambda: ModelConfig(action_size=-1), ValueError, r"^action_size must be a non-negative int, got -1$"),
    (lambda: ModelConfig(cell_options=3), TypeError, r"^cell_options must be a mapping or one per level, got 3"),
    (lambda: CWVAE.from_config(TINY.replace(cell_options={"stoch_size": 0, "det_size": 3}), rngs=nnx.Rngs(0)),
     ValueError, r"^cells\[0\]: stoch_size must be a positive int, got 0$"),
])
def test_config_fields(fn, error, match):
    raises(error, match, fn)


def test_good_calls_are_unchanged(model):
    """The checks return the values they pass, and the checked entry points compute
    what their unchecked cores compute."""
    assert _checks.integer("n", np.int64(3)) == 3 and type(_checks.integer("n", np.int64(3))) is int
    assert _checks.number("x", np.float32(0.5), low=0.0, high=1.0) == 0.5
    assert _checks.prng_key("key", KEY) is KEY
    pred, target = jnp.full((2, 8, 8, 3), 0.25), jnp.full((2, 8, 8, 3), 0.5)
    np.testing.assert_array_equal(metrics.psnr(pred, target),
                                  metrics._psnr(pred, target, 1.0, None, per_channel=True))
    np.testing.assert_array_equal(
        metrics.ssim(pred, target), metrics._ssim(pred, target, 2.0, win_size=7, k1=0.01, k2=0.03,
                                                  use_sample_covariance=True))
    loss, _ = model.loss(GOOD, jax.random.PRNGKey(0))
    same, _ = model.loss(np.asarray(GOOD), jax.random.key(0))
    assert np.isfinite(float(loss)) and float(loss) == float(same)
    assert isinstance(make_optimizer(1), optax.GradientTransformation)
    assert Hierarchy(list(model.hierarchy.cells), model.hierarchy.clock).levels == 2
