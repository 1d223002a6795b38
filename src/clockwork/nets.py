"""Convolutional encoder and decoder of CW-VAE (docs/model.md#encoder, #decoder).

Frames are ``(B, T, 64, 64, C)``; every conv acts per frame. Kernels are ``HWIO``; the
transposed convolutions follow ``jax.lax.conv_transpose`` (Flax's ``ConvTranspose``).
``conv_impl="fast"`` (default) computes the same arithmetic as matrix products
(:mod:`clockwork.convops`), far faster on the CPU; ``"lax"`` is the plain reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork import convops
from clockwork._util import map_chunks
from clockwork.hierarchy.clock import Clock

Activation = Callable[[jax.Array], jax.Array]
leaky_relu = functools.partial(jax.nn.leaky_relu, negative_slope=0.2)
glorot = nnx.initializers.glorot_uniform()

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)
FRAME_SIZE = 64
ConvImpl = Literal["fast", "lax"]
CONV_IMPLS = ("fast", "lax")


class _Conv(nnx.Module):
    """A stride-2 VALID convolution (or transposed convolution) with bias."""

    def __init__(
        self, cin: int, cout: int, kernel: int, transpose: bool, impl: ConvImpl, rngs: nnx.Rngs
    ):
        if impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
        self.kernel = nnx.Param(glorot(rngs.params(), (kernel, kernel, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self.transpose = transpose
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, Cin) -> (N, H', W', Cout)``."""
        w, b = self.kernel[...], self.bias[...]
        if self.transpose:
            return convops.conv_transpose2d(x, w, b, impl="auto" if self.impl == "fast" else "lax")
        return convops.conv2d(x, w, b, impl="matmul" if self.impl == "fast" else "lax")


def embed_size(filters: int = 32, channel_mult: int = 1) -> int:
    """Size of the flattened conv features: ``2 * 2 * 8 * filters * channel_mult``."""
    return 32 * filters * channel_mult


class ConvEncoder(nnx.Module):
    """Per-frame conv stack, chained per-level dense stacks, merged through the clock.

    ``h0 = flatten(conv4(...conv1(x)))`` with channels ``f*m, 2f*m, 4f*m, 8f*m``; level
    ``l >= 1`` maps ``h(l-1)`` per frame through ``dense_layers - 1`` hidden layers of
    ``dense_embed_size`` and a linear layer back to ``32 f m`` (no stack when
    ``dense_layers == 0``); level ``l`` then sums blocks of ``P_l`` frames.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        channels: int = 1,
        channel_mult: int = 1,
        filters: int = 32,
        dense_layers: int = 3,
        dense_embed_size: int = 1000,
        activation: Activation = leaky_relu,
        dense_activation: Activation = jax.nn.relu,
        conv_impl: ConvImpl = "fast",
        rngs: nnx.Rngs,
    ):
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {type(clock).__name__}")
        if dense_layers < 0:
            raise ValueError(f"dense_layers must be >= 0, got {dense_layers}")
        self.clock = clock
        self.channels = channels
        self.frame_shape = (FRAME_SIZE, FRAME_SIZE, channels)
        self.activation = activation
        self.dense_activation = dense_activation
        widths = [channels] + [filters * channel_mult * 2**i for i in range(4)]
        self.convs = nnx.List(
            [_Conv(widths[i], widths[i + 1], k, False, conv_impl, rngs) for i, k in enumerate(ENCODER_KERNELS)]
        )
        self.embed_size = embed_size(filters, channel_mult)
        stacks = []
        for _ in range(1, clock.levels):
            sizes = [self.embed_size] + [dense_embed_size] * (dense_layers - 1) + [self.embed_size]
            layers = [nnx.Linear(a, b, kernel_init=glorot, rngs=rngs) for a, b in zip(sizes, sizes[1:])]
            stacks.append(nnx.List(layers if dense_layers else []))
        self.stacks = nnx.List(stacks)

    def frame_features(self, frames: jax.Array) -> jax.Array:
        """``(..., 64, 64, C) -> (..., 32 f m)``: the conv stack, per frame."""
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:])
        for conv in self.convs:
            x = self.activation(conv(x))
        return x.reshape(*lead, math.prod(x.shape[1:]))

    def __call__(
        self, frames: jax.Array, *, chunk: int | None = None, remat: bool = False
    ) -> list[jax.Array]:
        """``(B, T, 64, 64, C)`` -> per level ``(B, ceil(T / P_l), 32 f m)``.

        With ``chunk`` the conv stack runs over chunks of that many frames (the last
        zero-padded), the same numbers in bounded memory; with ``remat`` too, each chunk
        is recomputed in the backward pass, which then holds the activations of one chunk.
        """
        if chunk is None:
            h = self.frame_features(frames)
        else:
            flat = frames.reshape(-1, *frames.shape[2:])
            h = map_chunks(lambda enc, x: enc.frame_features(x), self, flat, chunk, remat=remat)
            h = h.reshape(*frames.shape[:2], h.shape[-1])
        out = [h]
        for level, stack in enumerate(self.stacks, start=1):
            for i, layer in enumerate(stack):
                h = layer(h)
                if i + 1 < len(stack):
                    h = self.dense_activation(h)
            out.append(self.clock.merge(h, level))
        return out


class ConvDecoder(nnx.Module):
    """``Dense(32 f m)``, reshape to ``1x1``, four stride-2 transposed convs to 64x64.

    Channels ``4f*m, 2f*m, f*m, C`` with kernels ``5, 5, 6, 6`` (sizes 5, 13, 30, 64);
    ``activation`` after the first three, ``out_activation`` (tanh) after the last. The
    result is the mean of a per-pixel Normal.
    """

    def __init__(
        self,
        feature_size: int,
        *,
        channels: int = 1,
        channel_mult: int = 1,
        filters: int = 32,
        activation: Activation = leaky_relu,
        out_activation: Activation = jnp.tanh,
        conv_impl: ConvImpl = "fast",
        rngs: nnx.Rngs,
    ):
        self.channels = channels
        self.frame_shape = (FRAME_SIZE, FRAME_SIZE, channels)
        self.feature_size = feature_size
        self.activation = activation
        self.out_activation = out_activation
        size = embed_size(filters, channel_mult)
        self.dense = nnx.Linear(feature_size, size, kernel_init=glorot, rngs=rngs)
        widths = [size] + [filters * channel_mult * 2**i for i in (2, 1, 0)] + [channels]
        self.convs = nnx.List(
            [_Conv(widths[i], widths[i + 1], k, True, conv_impl, rngs) for i, k in enumerate(DECODER_KERNELS)]
        )

    def __call__(self, features: jax.Array) -> jax.Array:
        """``(..., F) -> (..., 64, 64, C)``."""
        lead = features.shape[:-1]
        x = self.dense(features).reshape(-1, 1, 1, self.dense.out_features)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = self.activation(x) if i + 1 < len(self.convs) else self.out_activation(x)
        return x.reshape(*lead, *x.shape[1:])
