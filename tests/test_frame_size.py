"""Frame sizes other than 64x64: the conv stacks' layout, their arithmetic against Flax's
own layers, and a whole model's loss, gradients and open loop at 32x32, 96x96, 64x96."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork import CWVAE, ModelConfig
from clockwork.hierarchy import Clock
from clockwork.nets import ConvDecoder, ConvEncoder, conv_layout, embed_size
from test_nets import reference_decoder, reference_frame_features


@pytest.mark.parametrize("size,depth,enc_out,dec_in", [
    ((64, 64), 4, (2, 2), (1, 1)),     # the paper's
    ((32, 32), 3, (2, 2), (1, 1)),
    ((96, 96), 4, (4, 4), (3, 3)),
    ((64, 96), 4, (2, 4), (1, 3)),
    ((40, 64), 3, (3, 6), (2, 5)),
    ((128, 80), 4, (6, 3), (5, 2)),
])
def test_frame_size_layout_by_hand(size, depth, enc_out, dec_in):
    # Encoder side s -> (s - 4) // 2 + 1 per layer; decoder grows g -> 2 g + k - 2.
    assert conv_layout(size) == (depth, enc_out, dec_in)
    kernels = (5, 5, 6, 6)[-depth:]
    for side, g in zip(size, dec_in):
        for k in kernels:
            g = 2 * g + k - 2
        assert g == side
    assert embed_size(4, 1, size) == enc_out[0] * enc_out[1] * 4 * 2 ** (depth - 1)


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (64, 96), (40, 56)])
def test_frame_size_and_non_square_stacks_match_flax_layers(size):
    clock = Clock((2,))
    enc = ConvEncoder(clock, frame_size=size, channels=3, filters=2, dense_layers=1,
                      rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(0), (2, 3, *size, 3))
    out = enc(frames)
    assert enc.frame_shape == (*size, 3)
    assert [e.shape for e in out] == [(2, 3, enc.embed_size), (2, 2, enc.embed_size)]
    np.testing.assert_allclose(out[0], reference_frame_features(enc, frames), rtol=1e-5, atol=1e-5)
    dec = ConvDecoder(7, frame_size=size, channels=3, filters=2, rngs=nnx.Rngs(1))
    feats = jax.random.normal(jax.random.key(1), (2, 3, 7))
    img = dec(feats)
    assert img.shape == (2, 3, *size, 3)
    np.testing.assert_allclose(img.reshape(6, *size, 3), reference_decoder(dec, feats),
                               rtol=1e-5, atol=1e-5)


def test_frame_size_gradients_of_the_fast_convs_match_lax():
    # The matrix-product convolutions' custom backward passes on a non-square grid.
    size = (40, 64)
    fast = ConvDecoder(5, frame_size=size, filters=2, rngs=nnx.Rngs(0))
    lax = ConvDecoder(5, frame_size=size, filters=2, conv_impl="lax", rngs=nnx.Rngs(0))
    enc_fast = ConvEncoder(Clock(()), frame_size=size, filters=2, rngs=nnx.Rngs(2))
    enc_lax = ConvEncoder(Clock(()), frame_size=size, filters=2, conv_impl="lax", rngs=nnx.Rngs(2))
    feats = jax.random.normal(jax.random.key(3), (3, 5))
    frames = jax.random.uniform(jax.random.key(4), (1, 3, *size, 1))

    def grads(dec, enc):
        def loss(dec, enc):
            return jnp.sum(dec(feats) ** 2) + jnp.sum(enc(frames)[0] ** 2)
        return jax.tree.leaves(nnx.jit(nnx.grad(loss, argnums=(0, 1)))(dec, enc))

    for a, b in zip(grads(fast, enc_fast), grads(lax, enc_lax), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,error,message", [
    ((70, 70), ValueError, r"a side of 70 does not fit .* nearest sides that work are 64 and 80"),
    ((36, 64), ValueError, r"a side of 36 does not fit .* multiples of 8 .* 32 and 40"),
    ((64, 100), ValueError, r"a side of 100 .* 96 and 112"),
    ((16, 64), ValueError, r"a side of 16 is too small; .* at least 32"),
    ((64,), ValueError, r"frame_size must be \(height, width\) ints, got \(64,\)"),
    ((64.0, 64), TypeError, r"frame_size must be \(height, width\) ints, got \(64\.0, 64\)"),
])
def test_frame_size_errors_name_the_size_and_the_nearest_that_work(size, error, message):
    with pytest.raises(error, match=message):
        conv_layout(size)
    with pytest.raises(error, match=message):
        ModelConfig(frame_size=size)
    with pytest.raises(error, match=message):
        ConvDecoder(4, frame_size=size, rngs=nnx.Rngs(0))


TINY = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=1,
                   cell_options={"stoch_size": 3, "det_size": 4, "hidden_size": 5})


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (64, 96)])
def test_frame_size_model_loss_gradients_and_open_loop(size):
    model = CWVAE.from_config(TINY.replace(frame_size=size), rngs=nnx.Rngs(0))
    assert model.frame_shape == (*size, 1)
    video = jax.random.uniform(jax.random.key(0), (2, 8, *size, 1))
    (loss, metrics), grads = nnx.jit(nnx.value_and_grad(
        lambda m: m.loss(video, jax.random.key(1)), has_aux=True))(model)
    assert np.isfinite(float(loss)) and float(metrics["kl/1"]) > 0
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    dense = grads.decoder.dense.kernel[...]
    assert dense.shape == (model.decoder.feature_size, model.decoder.dense.out_features)
    assert float(jnp.abs(dense).max()) > 0 and float(jnp.abs(grads.encoder.convs[0].kernel[...]).max()) > 0
    pred = model.open_loop(video[:, :4], 4, jax.random.key(2))
    assert pred.shape == (2, 4, *size, 1) and np.isfinite(np.asarray(pred)).all()
    with pytest.raises(ValueError, match="frames"):
        model.loss(jnp.zeros((1, 4, 64, 64, 1)), jax.random.key(0))
