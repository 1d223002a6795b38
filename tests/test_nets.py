import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork import CWVAE, preset
from clockwork.hierarchy import Clock
from clockwork.nets import ConvDecoder, ConvEncoder, leaky_relu


def count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def reference_decoder(dec: ConvDecoder, features: jax.Array) -> jax.Array:
    """The decoder (docs/model.md#decoder) with Flax's own ConvTranspose layers holding
    the same weights."""
    x = features.reshape(-1, features.shape[-1]) @ dec.dense.kernel[...] + dec.dense.bias[...][None]
    x = x.reshape(-1, *dec.grid, dec.grid_channels)
    for i, conv in enumerate(dec.convs):
        k = conv.kernel[...]
        layer = nnx.ConvTranspose(k.shape[2], k.shape[3], k.shape[:2], strides=2, padding="VALID",
                                  rngs=nnx.Rngs(0))
        layer.kernel[...] = k
        layer.bias[...] = conv.bias[...]
        x = layer(x)
        x = leaky_relu(x) if i + 1 < len(dec.convs) else jnp.tanh(x)
    return x


def reference_frame_features(enc: ConvEncoder, frames: jax.Array) -> jax.Array:
    x = frames.reshape(-1, *frames.shape[-3:])
    for conv in enc.convs:
        k = conv.kernel[...]
        layer = nnx.Conv(k.shape[2], k.shape[3], k.shape[:2], strides=2, padding="VALID",
                         rngs=nnx.Rngs(0))
        layer.kernel[...] = k
        layer.bias[...] = conv.bias[...]
        x = leaky_relu(layer(x))
    return x.reshape(*frames.shape[:-3], -1)


@pytest.mark.parametrize("channels,mult", [(1, 1), (3, 2)])
def test_encoder_decoder_shapes_and_reference(channels, mult):
    clock = Clock((2, 3))
    enc = ConvEncoder(clock, channels=channels, channel_mult=mult, filters=4, dense_layers=2,
                      dense_embed_size=10, rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(0), (2, 7, 64, 64, channels))
    out = enc(frames)
    size = 32 * 4 * mult
    assert [e.shape for e in out] == [(2, 7, size), (2, 4, size), (2, 2, size)]
    h0 = reference_frame_features(enc, frames)
    np.testing.assert_allclose(out[0], h0, rtol=1e-5, atol=1e-5)
    # Chained stacks: level 2 reads level 1's per-frame output, then merges by 6.
    h1 = enc.stacks[0][1](jax.nn.relu(enc.stacks[0][0](h0)))
    h2 = enc.stacks[1][1](jax.nn.relu(enc.stacks[1][0](h1)))
    np.testing.assert_allclose(out[1], clock.merge(h1, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[2], clock.merge(h2, 2), rtol=1e-4, atol=1e-4)

    dec = ConvDecoder(9, channels=channels, channel_mult=mult, filters=4, rngs=nnx.Rngs(1))
    feats = jax.random.normal(jax.random.key(1), (2, 3, 9))
    img = dec(feats)
    assert img.shape == (2, 3, 64, 64, channels)
    np.testing.assert_allclose(img.reshape(6, 64, 64, channels), reference_decoder(dec, feats),
                               rtol=1e-5, atol=1e-5)


def test_decoder_layer_sizes():
    dec = ConvDecoder(5, filters=2, rngs=nnx.Rngs(0))
    x = dec.dense(jnp.zeros((1, 5))).reshape(1, 1, 1, -1)
    sizes = []
    for conv in dec.convs:
        x = conv(x)
        sizes.append(x.shape[1:])
    assert sizes == [(5, 5, 8), (13, 13, 4), (30, 30, 2), (64, 64, 1)]


def test_no_dense_stack_when_zero_layers():
    clock = Clock((2,))
    enc = ConvEncoder(clock, filters=2, dense_layers=0, rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(0), (1, 4, 64, 64, 1))
    out = enc(frames)
    assert [e.shape for e in out] == [(1, 4, 64), (1, 2, 64)]
    np.testing.assert_allclose(out[0], reference_frame_features(enc, frames), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], clock.merge(out[0], 1), rtol=1e-6)


@pytest.mark.parametrize("name,params", [("mmnist", 12_465_617), ("minerl", 34_391_827)])
def test_paper_parameter_counts(name, params):
    model = nnx.eval_shape(lambda: CWVAE.from_config(preset(name).model, rngs=nnx.Rngs(0)))
    assert count(model) == params


@pytest.mark.parametrize("remat", [False, True])
def test_encoder_chunks_equal_all_frames_and_remat_only_when_asked(remat):
    enc = ConvEncoder(Clock((2,)), filters=2, dense_layers=1, dense_embed_size=6, rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(2), (1, 7, 64, 64, 1))

    def loss(frames, **kw):
        return sum(jnp.sum(e**2) for e in enc(frames, **kw))

    whole = jax.jit(jax.value_and_grad(loss))(frames)
    chunked = jax.jit(jax.value_and_grad(lambda f: loss(f, chunk=3, remat=remat)))(frames)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-4, atol=1e-7)
    # remat puts the chunk body under jax.checkpoint (recomputed in the backward pass).
    jaxpr = str(jax.make_jaxpr(lambda f: loss(f, chunk=3, remat=remat))(frames))
    assert ("remat" in jaxpr) == remat
