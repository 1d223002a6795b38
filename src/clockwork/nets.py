"""Convolutional encoder and decoder of CW-VAE (docs/model.md#encoder, #decoder).

Frames are ``(B, T, H, W, C)``, 64x64 in the paper; every conv acts per frame. The
stacks' shapes follow from the frame size (``conv_layout``, docs/model.md#frame-sizes).
Kernels are ``HWIO``; the
transposed convolutions follow ``jax.lax.conv_transpose`` (Flax's ``ConvTranspose``).
``conv_impl="fast"`` (default) computes the same arithmetic as matrix products
(``clockwork.convops``), far faster on the CPU; ``"lax"`` is the plain reference.
``conv_product_dtype="bfloat16"`` (with ``"fast"``) gives those products bfloat16
operands and float32 accumulation (docs/performance.md#bfloat16-conv-products).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork import _checks, convops
from clockwork._util import map_chunks
from clockwork.hierarchy.clock import Clock

Activation = Callable[[jax.Array], jax.Array]
leaky_relu = functools.partial(jax.nn.leaky_relu, negative_slope=0.2)
glorot = nnx.initializers.glorot_uniform()

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)
FRAME_SIZE = (64, 64)
"""The paper's frame size ``(H, W)``, the default of the conv stacks."""
MIN_SIDE = 32
ConvImpl = Literal["fast", "lax"]
CONV_IMPLS = ("fast", "lax")
CONV_PRODUCT_DTYPES = (None, "bfloat16")
"""The conv products' operand dtypes: None (the inputs' own) or ``"bfloat16"``."""


def check_conv_options(conv_impl: object, conv_product_dtype: object) -> None:
    """Raise unless ``conv_impl`` and ``conv_product_dtype`` are known and fit together."""
    _checks.choice("conv_impl", conv_impl, CONV_IMPLS)
    _checks.choice("conv_product_dtype", conv_product_dtype, CONV_PRODUCT_DTYPES)
    if conv_product_dtype is not None and conv_impl != "fast":
        raise ValueError(f'conv_product_dtype={conv_product_dtype!r} needs conv_impl="fast" '
                         f"(the matrix-product convolutions), got conv_impl={conv_impl!r}")


class _Conv(nnx.Module):
    """A stride-2 VALID convolution (or transposed convolution) with bias."""

    def __init__(
        self, cin: int, cout: int, kernel: int, transpose: bool, impl: ConvImpl,
        product_dtype: str | None, rngs: nnx.Rngs,
    ):
        self.kernel = nnx.Param(glorot(rngs.params(), (kernel, kernel, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self.transpose = transpose
        self.impl = impl
        self.product_dtype = product_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, Cin) -> (N, H', W', Cout)``."""
        w, b = self.kernel[...], self.bias[...]
        dtype = self.product_dtype
        if self.transpose:
            impl = "auto" if self.impl == "fast" else "lax"
            return convops.conv_transpose2d(x, w, b, impl=impl, product_dtype=dtype)
        impl = "matmul" if self.impl == "fast" else "lax"
        return convops.conv2d(x, w, b, impl=impl, product_dtype=dtype)


class ConvLayout(NamedTuple):
    """The conv stacks' shapes for one frame size (see ``conv_layout``)."""

    depth: int
    """Stride-2 layers in each stack: 4 (the paper's), or 3 when a side is below 64."""
    encoder_out: tuple[int, int]
    """``(h, w)`` of the encoder's last feature map."""
    decoder_in: tuple[int, int]
    """``(h, w)`` of the grid the decoder's dense layer is reshaped to."""


def conv_layout(frame_size: tuple[int, int]) -> ConvLayout:
    """The conv stacks' depth and feature-map sizes for frames of ``frame_size``.

    Both sides at least 64: the paper's four stride-2 layers, and each side a multiple
    of 16; otherwise three layers, and each side a multiple of 8 from 32. The encoder's
    VALID kernel-4 convs map a side ``s`` to ``(s - 4) // 2 + 1``; the decoder's
    transposed convs (the last ``depth`` of kernels 5, 5, 6, 6) grow ``s / 2**depth - 3``
    back to exactly ``s``.

    Raises:
      TypeError: ``frame_size`` is not a sequence of ints.
      ValueError: not two of them, or naming the size and the nearest sizes that work.

    Examples:
      >>> conv_layout((64, 64))
      ConvLayout(depth=4, encoder_out=(2, 2), decoder_in=(1, 1))
      >>> conv_layout((32, 48))
      ConvLayout(depth=3, encoder_out=(2, 4), decoder_in=(1, 3))
    """
    if (not isinstance(frame_size, (tuple, list))
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in frame_size)):
        raise TypeError(f"frame_size must be (height, width) ints, got {_checks.describe(frame_size)}")
    if len(frame_size) != 2:
        raise ValueError(f"frame_size must be (height, width) ints, got {frame_size!r}")
    sides = tuple(frame_size)
    for s in sides:
        if s < MIN_SIDE:
            raise ValueError(f"frame_size {sides}: a side of {s} is too small; the conv stacks "
                             f"need sides of at least {MIN_SIDE} (32, 40, 48, ... or 64, 80, 96, ...)")
    depth = 4 if min(sides) >= 64 else 3
    step = 2**depth
    for s in sides:
        if s % step:
            low, high = s - s % step, s - s % step + step
            rule = ("both sides >= 64 need multiples of 16" if depth == 4
                    else "with a side below 64, sides need multiples of 8 from 32")
            raise ValueError(f"frame_size {sides}: a side of {s} does not fit the conv stacks "
                             f"({rule}); the nearest sides that work are {low} and {high}")
    encoder_out = []
    for s in sides:
        for _ in range(depth):
            s = (s - ENCODER_KERNELS[0]) // 2 + 1
        encoder_out.append(s)
    return ConvLayout(depth, tuple(encoder_out), tuple(s // step - 3 for s in sides))


def embed_size(filters: int = 32, channel_mult: int = 1, frame_size: tuple[int, int] = FRAME_SIZE) -> int:
    """Size of the encoder's flattened conv features: ``2 * 2 * 8 * filters * channel_mult``
    at 64x64, ``h * w * 2**(depth - 1) * filters * channel_mult`` in general."""
    _checks.integer("filters", filters)
    _checks.integer("channel_mult", channel_mult)
    layout = conv_layout(frame_size)
    h, w = layout.encoder_out
    return h * w * 2 ** (layout.depth - 1) * filters * channel_mult


class ConvEncoder(nnx.Module):
    """Per-frame conv stack, chained per-level dense stacks, merged through the clock.

    ``h0 = flatten(conv4(...conv1(x)))`` with channels ``f*m, 2f*m, 4f*m, 8f*m`` (three
    layers for frames with a side below 64, see ``conv_layout``); level
    ``l >= 1`` maps ``h(l-1)`` per frame through ``dense_layers - 1`` hidden layers of
    ``dense_embed_size`` and a linear layer back to ``embed_size`` (no stack when
    ``dense_layers == 0``); level ``l`` then sums blocks of ``P_l`` frames.

    Raises:
      TypeError, ValueError: naming an argument that is not a positive int
        (``dense_layers`` may be 0), a ``conv_impl`` or ``conv_product_dtype`` (the
        latter needs ``"fast"``) or a ``frame_size`` (``conv_layout``).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        frame_size: tuple[int, int] = FRAME_SIZE,
        channels: int = 1,
        channel_mult: int = 1,
        filters: int = 32,
        dense_layers: int = 3,
        dense_embed_size: int = 1000,
        activation: Activation = leaky_relu,
        dense_activation: Activation = jax.nn.relu,
        conv_impl: ConvImpl = "fast",
        conv_product_dtype: str | None = None,
        rngs: nnx.Rngs,
    ):
        _checks.instance("clock", clock, Clock)
        for name, value in (("channels", channels), ("channel_mult", channel_mult),
                            ("filters", filters), ("dense_embed_size", dense_embed_size)):
            _checks.integer(name, value)
        _checks.integer("dense_layers", dense_layers, 0)
        check_conv_options(conv_impl, conv_product_dtype)
        _checks.instance("rngs", rngs, nnx.Rngs)
        layout = conv_layout(frame_size)
        self.clock = clock
        self.channels = channels
        self.frame_shape = (*frame_size, channels)
        self.activation = activation
        self.dense_activation = dense_activation
        widths = [channels] + [filters * channel_mult * 2**i for i in range(layout.depth)]
        kernels = ENCODER_KERNELS[-layout.depth:]
        self.convs = nnx.List(
            [_Conv(widths[i], widths[i + 1], k, False, conv_impl, conv_product_dtype, rngs)
             for i, k in enumerate(kernels)]
        )
        self.embed_size = embed_size(filters, channel_mult, frame_size)
        stacks = []
        for _ in range(1, clock.levels):
            sizes = [self.embed_size] + [dense_embed_size] * (dense_layers - 1) + [self.embed_size]
            layers = [nnx.Linear(a, b, kernel_init=glorot, rngs=rngs) for a, b in zip(sizes, sizes[1:])]
            stacks.append(nnx.List(layers if dense_layers else []))
        self.stacks = nnx.List(stacks)

    def frame_features(self, frames: jax.Array) -> jax.Array:
        """``(..., H, W, C) -> (..., embed_size)``: the conv stack, per frame."""
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:])
        for conv in self.convs:
            x = self.activation(conv(x))
        return x.reshape(*lead, math.prod(x.shape[1:]))

    def __call__(
        self, frames: jax.Array, *, chunk: int | None = None, remat: bool = False
    ) -> list[jax.Array]:
        """``(B, T, H, W, C)`` -> per level ``(B, ceil(T / P_l), embed_size)``.

        With ``chunk`` the conv stack runs over chunks of that many frames (the last
        zero-padded), the same numbers in bounded memory; with ``remat`` too, each chunk
        is recomputed in the backward pass, which then holds the activations of one chunk.
        """
        _checks.float_array("frames", frames, ("B", "T", *self.frame_shape))
        if chunk is not None:
            _checks.integer("chunk", chunk)
        _checks.flag("remat", remat)
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
    ``activation`` after each but the last, ``out_activation`` (tanh) after the last. The
    result is the mean of a per-pixel Normal. Other frame sizes (``conv_layout``):
    the dense layer gives ``h x w x 32 f m`` for the layout's ``decoder_in``, and with
    three layers the channels are ``2f*m, f*m, C`` and the kernels ``5, 6, 6``.

    Raises:
      TypeError, ValueError: naming an argument that is not a positive int, a
        ``conv_impl`` or ``conv_product_dtype`` (the latter needs ``"fast"``) or a
        ``frame_size`` (``conv_layout``).
    """

    def __init__(
        self,
        feature_size: int,
        *,
        frame_size: tuple[int, int] = FRAME_SIZE,
        channels: int = 1,
        channel_mult: int = 1,
        filters: int = 32,
        activation: Activation = leaky_relu,
        out_activation: Activation = jnp.tanh,
        conv_impl: ConvImpl = "fast",
        conv_product_dtype: str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("feature_size", feature_size), ("channels", channels),
                            ("channel_mult", channel_mult), ("filters", filters)):
            _checks.integer(name, value)
        check_conv_options(conv_impl, conv_product_dtype)
        _checks.instance("rngs", rngs, nnx.Rngs)
        layout = conv_layout(frame_size)
        self.channels = channels
        self.frame_shape = (*frame_size, channels)
        self.feature_size = feature_size
        self.activation = activation
        self.out_activation = out_activation
        self.grid = layout.decoder_in
        self.grid_channels = 32 * filters * channel_mult
        self.dense = nnx.Linear(
            feature_size, math.prod(self.grid) * self.grid_channels, kernel_init=glorot, rngs=rngs
        )
        inner = [filters * channel_mult * 2**i for i in reversed(range(layout.depth - 1))]
        widths = [self.grid_channels, *inner, channels]
        kernels = DECODER_KERNELS[-layout.depth:]
        self.convs = nnx.List(
            [_Conv(widths[i], widths[i + 1], k, True, conv_impl, conv_product_dtype, rngs)
             for i, k in enumerate(kernels)]
        )

    def __call__(self, features: jax.Array) -> jax.Array:
        """``(..., F) -> (..., H, W, C)``."""
        _checks.float_array("features", features, (..., self.feature_size))
        lead = features.shape[:-1]
        x = self.dense(features).reshape(-1, *self.grid, self.grid_channels)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = self.activation(x) if i + 1 < len(self.convs) else self.out_activation(x)
        return x.reshape(*lead, *x.shape[1:])
