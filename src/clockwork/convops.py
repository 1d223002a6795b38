"""Strided convolutions for the CW-VAE encoder and decoder, as matrix products.

XLA:CPU runs strided and transposed convolutions, and above all their weight
gradients, far below its matrix-product speed (the decoder's 13x13 -> 30x30 layer
takes 15-30 s forward + backward for 800 frames, against about 1.5 s here). The
functions below compute the same arithmetic as

    conv2d:           lax.conv_general_dilated(x, w, (s, s), "VALID", ("NHWC", "HWIO", "NHWC")) + b
    conv_transpose2d: lax.conv_transpose(x, w, (s, s), "VALID", ("NHWC", "HWIO", "NHWC")) + b

(the latter is Flax ``ConvTranspose`` with ``transpose_kernel=False``) from slices,
pads, reshapes and one ``dot_general`` per layer, so that every gradient is a matrix
product too; a transposed convolution's forward pass is one stride-1 convolution that
gives all its output phases at once (sub-pixel), which XLA runs fast. ``impl="lax"`` is
the reference computation. The patch matrices are
recomputed in the backward pass rather than stored (``jax.checkpoint`` keeping only
the products), but each still exists while its layer runs: up to K*K/4 times the
layer's input (about 0.5 MB per frame for the 13x13 -> 30x30 layer at 64 channels),
so apply these to bounded chunks of frames when memory matters.

Shapes: ``x`` is ``(*batch, H, W, Cin)`` with at least one batch dimension, ``w`` is
``(K, K, Cin, Cout)``, ``b`` is ``(Cout,)``. Any float dtype; the product runs in the
inputs' dtype, like the lax reference.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["lax", "matmul"]
TransposeImpl = Literal["lax", "subpixel", "subpixel_lax", "dense", "auto"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Keep the products' outputs for the backward pass, recompute the patch matrices;
# the third argument (the stride) is static.
_remat = functools.partial(
    jax.checkpoint,
    policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    static_argnums=(2,),
)


def _matmul(p: jax.Array, w: jax.Array) -> jax.Array:
    """(..., D) x (D, Cout) -> (..., Cout)."""
    return lax.dot_general(p, w, (((p.ndim - 1,), (0,)), ((), ())))


def _space_to_depth(x: jax.Array, s: int) -> jax.Array:
    """(N, s*H, s*W, C) -> (N, H, W, s*s*C), channel index (py, px, c)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // s, s, w // s, s, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // s, w // s, s * s * c)


def _depth_to_space(x: jax.Array, s: int) -> jax.Array:
    """(N, H, W, s*s*C) with channel index (py, px, c) -> (N, s*H, s*W, C)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, s, s, c // (s * s))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c // (s * s))


def _patches(x: jax.Array, k: int) -> jax.Array:
    """Stride-1 VALID patches: (N, H, W, C) -> (N, H-k+1, W-k+1, k*k*C), index (ky, kx, c)."""
    _, h, w, _ = x.shape
    ho, wo = h - k + 1, w - k + 1
    return jnp.concatenate(
        [x[:, i : i + ho, j : j + wo, :] for i in range(k) for j in range(k)], axis=-1
    )


@_remat
def _conv2d_matmul(x: jax.Array, w: jax.Array, s: int) -> jax.Array:
    # Stride-s conv, kernel K (zero-padded to s*kb) == stride-1 conv, kernel kb, on the
    # space-to-depth input: tap (s*by + py, s*bx + px) reads block (by, bx), phase (py, px).
    k, _, cin, cout = w.shape
    kb = -(-k // s)
    w = jnp.pad(w, ((0, s * kb - k), (0, s * kb - k), (0, 0), (0, 0)))
    _, h, wd, _ = x.shape
    ho, wo = (h - k) // s + 1, (wd - k) // s + 1
    hb, wb = ho + kb - 1, wo + kb - 1  # blocks read
    x = x[:, : min(h, s * hb), : min(wd, s * wb), :]
    x = jnp.pad(x, ((0, 0), (0, s * hb - x.shape[1]), (0, s * wb - x.shape[2]), (0, 0)))
    wm = w.reshape(kb, s, kb, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return _matmul(_patches(_space_to_depth(x, s), kb), wm.reshape(-1, cout))


def _phase_kernel(w: jax.Array, s: int) -> jax.Array:
    """Flipped kernel split by output phase: (K, K, Cin, Cout) -> (kb, s, kb, s, Cin, Cout).

    Entry [a, py, c, px] is w[K-1-(s*a+py), K-1-(s*c+px)], zero past the kernel.
    """
    k = w.shape[0]
    kb = -(-k // s)
    wf = jnp.pad(w[::-1, ::-1], ((0, s * kb - k), (0, s * kb - k), (0, 0), (0, 0)))
    return wf.reshape(kb, s, kb, s, *w.shape[2:])


def _subpixel_kernel(w: jax.Array, s: int) -> jax.Array:
    """(K, K, Cin, Cout) -> (kb, kb, Cin, s*s*Cout): the stride-1 kernel of all output phases."""
    wp = _phase_kernel(w, s)
    kb, cin, cout = wp.shape[0], w.shape[2], w.shape[3]
    return wp[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(kb, kb, cin, s * s * cout)


def _subpixel_crop(phases: jax.Array, x_shape: tuple[int, ...], k: int, s: int) -> jax.Array:
    h, wd = x_shape[1:3]
    return _depth_to_space(phases, s)[:, : s * (h - 1) + k, : s * (wd - 1) + k, :]


# Output pixel s*j + p (p the phase) sums x[j - a] * w[K-1-(s*a + p)] over a < kb: a
# stride-1 kb x kb correlation of the (kb-1)-padded input giving all s*s phases as
# channels, then depth-to-space and a crop. XLA:CPU runs that correlation fast as a
# stride-1 convolution but its gradients slowly, and the same correlation as one product
# over patches the other way round; so the forward pass is the convolution and the
# backward pass differentiates the product ("matmul"), or, for one output channel, where
# that product is too thin, the lax transposed convolution ("lax").


@_remat
def _conv_transpose2d_subpixel_matmul(x: jax.Array, w: jax.Array, s: int) -> jax.Array:
    kb, k = -(-w.shape[0] // s), w.shape[0]
    wm = _subpixel_kernel(w, s)
    xp = jnp.pad(x, ((0, 0), (kb - 1, kb - 1), (kb - 1, kb - 1), (0, 0)))
    return _subpixel_crop(_matmul(_patches(xp, kb), wm.reshape(-1, wm.shape[-1])), x.shape, k, s)


def _conv_transpose2d_lax(x: jax.Array, w: jax.Array, s: int) -> jax.Array:
    return lax.conv_transpose(x, w, (s, s), "VALID", dimension_numbers=_DIMENSION_NUMBERS)


_BACKWARD = {"matmul": _conv_transpose2d_subpixel_matmul, "lax": _conv_transpose2d_lax}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose2d_subpixel(x: jax.Array, w: jax.Array, s: int, backward: str) -> jax.Array:
    """The phase correlation as a convolution; the gradients are those of ``_BACKWARD[backward]``."""
    kb, k = -(-w.shape[0] // s), w.shape[0]
    xp = jnp.pad(x, ((0, 0), (kb - 1, kb - 1), (kb - 1, kb - 1), (0, 0)))
    phases = lax.conv_general_dilated(
        xp, _subpixel_kernel(w, s), (1, 1), "VALID", dimension_numbers=_DIMENSION_NUMBERS
    )
    return _subpixel_crop(phases, x.shape, k, s)


def _subpixel_fwd(
    x: jax.Array, w: jax.Array, s: int, backward: str
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_transpose2d_subpixel(x, w, s, backward), (x, w)


def _subpixel_bwd(
    s: int, backward: str, residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    return jax.vjp(lambda x, w: _BACKWARD[backward](x, w, s), x, w)[1](g)


_conv_transpose2d_subpixel.defvjp(_subpixel_fwd, _subpixel_bwd)


def _conv_transpose2d_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    # A 1x1 input spreads over the whole K x K output: one product with the flipped kernel.
    n, h, wd, cin = x.shape
    if (h, wd) != (1, 1):
        raise ValueError(f'impl="dense" needs a 1x1 input, got {h}x{wd}')
    k, cout = w.shape[0], w.shape[3]
    wm = w[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
    return _matmul(x.reshape(n, cin), wm).reshape(n, k, k, cout)


def _auto_transpose_impl(x_shape: tuple[int, ...], w_shape: tuple[int, ...], s: int) -> str:
    """Fastest measured formulation for the shape (benchmarks/conv_ops.py, XLA:CPU)."""
    if x_shape[-3:-1] == (1, 1):
        return "dense"
    if s * s * w_shape[3] < 8:  # one output channel: a thin product; lax gradients are faster
        return "subpixel_lax"
    return "subpixel"


def _split_batch(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    if x.ndim < 4:
        raise ValueError(f"expected (*batch, H, W, C), got shape {x.shape}")
    return x.reshape((-1, *x.shape[-3:])), x.shape[:-3]


def conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int = 2, impl: ConvImpl = "matmul"
) -> jax.Array:
    """VALID convolution ``(*batch, H, W, Cin) -> (*batch, (H-K)//s+1, (W-K)//s+1, Cout)``.

    ``impl``: ``"lax"`` (reference) or ``"matmul"`` (space-to-depth, patches, one product).
    """
    xf, batch = _split_batch(x)
    if impl == "lax":
        y = lax.conv_general_dilated(
            xf, w, (stride, stride), "VALID", dimension_numbers=_DIMENSION_NUMBERS
        )
    elif impl == "matmul":
        y = _conv2d_matmul(xf, w, stride)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    y = y + b.reshape(1, 1, 1, -1)
    return y.reshape((*batch, *y.shape[1:]))


def conv_transpose2d(
    x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int = 2, impl: TransposeImpl = "auto"
) -> jax.Array:
    """VALID transposed convolution ``(*batch, H, W, Cin) -> (*batch, s(H-1)+K, s(W-1)+K, Cout)``.

    ``impl``: ``"lax"`` (reference), ``"subpixel"`` (all s*s output phases from one
    stride-1 correlation: a convolution forward, a patch product backward),
    ``"subpixel_lax"`` (the same forward, the gradients of ``"lax"``), ``"dense"`` (1x1
    inputs only: one product), or ``"auto"``: ``"dense"`` for 1x1 inputs,
    ``"subpixel_lax"`` when ``s*s*Cout < 8``, else ``"subpixel"``. The subpixel forms
    support reverse-mode differentiation only (``jax.custom_vjp``).
    """
    xf, batch = _split_batch(x)
    if impl == "auto":
        impl = _auto_transpose_impl(xf.shape, w.shape, stride)
    if impl == "lax":
        y = _conv_transpose2d_lax(xf, w, stride)
    elif impl in ("subpixel", "subpixel_lax"):
        y = _conv_transpose2d_subpixel(xf, w, stride, "lax" if impl == "subpixel_lax" else "matmul")
    elif impl == "dense":
        y = _conv_transpose2d_dense(xf, w)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    y = y + b.reshape(1, 1, 1, -1)
    return y.reshape((*batch, *y.shape[1:]))
