"""Strided convolutions for the CW-VAE encoder and decoder, as matrix products.

XLA:CPU runs strided and transposed convolutions, and above all their weight
gradients, far below its matrix-product speed (the decoder's 13x13 -> 30x30 layer
takes 15-30 s forward + backward for 800 frames, against about 1 s here). The
functions below compute the same arithmetic as

    conv2d:           lax.conv_general_dilated(x, w, (s, s), "VALID", ("NHWC", "HWIO", "NHWC")) + b
    conv_transpose2d: lax.conv_transpose(x, w, (s, s), "VALID", ("NHWC", "HWIO", "NHWC")) + b

(the latter is Flax ``ConvTranspose`` with ``transpose_kernel=False``). XLA runs a
strided convolution's forward pass fast, so ``conv2d`` keeps it; a transposed
convolution's forward pass is either one stride-1 convolution giving all its output
phases (sub-pixel) or one product giving every kernel tap's contribution, added up by
phase (scatter), whichever was measured faster for the shape. All gradients are matrix
products over K x K strided patches (``jax.custom_vjp``; reverse mode only): the
weight gradient is the patches of one side against the other, and the input gradient
of a convolution is the transposed convolution of its output gradient, and vice versa.
Where the patched side has at most 4 channels (the image side of the first encoder and
last decoder layer) and s divides K, the patches come from a space-to-depth view
(K*K/s^2 slices of s*s*C channels instead of K*K slices of C), and a convolution's
forward pass is their product with the kernel too: XLA:CPU runs strided convolutions
and slices with so few channels far below its product speed.
``impl="lax"`` is the reference computation. Nothing but the inputs is kept for the
backward pass; the patch matrices (up to K*K/4 times a layer's input or output, about
0.8 MB per frame for the 13x13 -> 30x30 layer's output gradient) exist only while their
layer runs, so apply these to bounded chunks of frames when memory matters.

Shapes: ``x`` is ``(*batch, H, W, Cin)`` with at least one batch dimension, ``w`` is
``(K, K, Cin, Cout)``, ``b`` is ``(Cout,)``. Any float dtype; the products run in the
inputs' dtype, like the lax reference, unless ``product_dtype`` names another for their
operands (bfloat16 on CPUs with AMX or AVX-512 BF16: docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["lax", "matmul"]
TransposeImpl = Literal["lax", "subpixel", "scatter", "dense", "auto"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _cast(a: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """``a`` as a product operand: in ``dtype``, or unchanged when it is None."""
    return a if dtype is None else a.astype(dtype)


def _dot(a: jax.Array, b: jax.Array, dims, out: jnp.dtype) -> jax.Array:
    """``lax.dot_general`` accumulating and returning ``out`` (the operands' own dtype
    asks for nothing: the default product, bit for bit)."""
    same = a.dtype == out and b.dtype == out
    return lax.dot_general(a, b, dims, preferred_element_type=None if same else out)


def _matmul(p: jax.Array, w: jax.Array, out: jnp.dtype) -> jax.Array:
    """(..., D) x (D, Cout) -> (..., Cout)."""
    return _dot(p, w, (((p.ndim - 1,), (0,)), ((), ())), out)


def _outer(x: jax.Array, y: jax.Array, out: jnp.dtype) -> jax.Array:
    """(N, H, W, D) x (N, H, W, E) -> (D, E), summed over N, H, W."""
    return _dot(x, y, (((0, 1, 2), (0, 1, 2)), ((), ())), out)


def _depth_to_space(x: jax.Array, s: int) -> jax.Array:
    """(N, H, W, s*s*C) with channel index (py, px, c) -> (N, s*H, s*W, C)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, s, s, c // (s * s))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c // (s * s))


def _strided_patches(x: jax.Array, k: int, s: int, ho: int, wo: int) -> jax.Array:
    """(N, H, W, C) -> (N, ho, wo, k*k*C): entry (i, j, (u, v, c)) is x[s*i + u, s*j + v, c]."""
    return jnp.concatenate(
        [
            x[:, u : u + s * (ho - 1) + 1 : s, v : v + s * (wo - 1) + 1 : s, :]
            for u in range(k)
            for v in range(k)
        ],
        axis=-1,
    )


# Patches of at most this many channels are built from a space-to-depth view when s | K.
_BLOCK_MAX_CHANNELS = 4


def _blocked(c: int, k: int, s: int) -> bool:
    return c <= _BLOCK_MAX_CHANNELS and k % s == 0


def _block_patches(x: jax.Array, k: int, s: int, ho: int, wo: int) -> jax.Array:
    """(N, H, W, C) -> (N, ho, wo, k*k*C), s | k: entry (i, j, (a, b, p, q, c)) is
    x[s*(i+a) + p, s*(j+b) + q, c], i.e. the strided patches with taps u = s*a + p,
    v = s*b + q in block order (see ``_taps_to_rows``)."""
    n, _, _, c = x.shape
    m = k // s
    hp, wp = s * (ho - 1 + m), s * (wo - 1 + m)
    x = x[:, :hp, :wp].reshape(n, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, hp // s, wp // s, s * s * c)
    return jnp.concatenate(
        [x[:, a : a + ho, b : b + wo] for a in range(m) for b in range(m)], axis=-1
    )


def _patches(x: jax.Array, k: int, s: int, ho: int, wo: int) -> tuple[jax.Array, bool]:
    """x's K x K stride-s patches ``(N, ho, wo, K*K*C)`` and whether their taps are in
    block order (few channels, s | K) rather than (u, v) order."""
    if _blocked(x.shape[-1], k, s):
        return _block_patches(x, k, s, ho, wo), True
    return _strided_patches(x, k, s, ho, wo), False


def _taps_to_rows(t: jax.Array, s: int, blocked: bool) -> jax.Array:
    """(K, K, ...) indexed (u, v) -> (K*K, ...) in the patches' tap order: (u, v), or
    block order (a, b, p, q) with u = s*a + p, v = s*b + q."""
    k = t.shape[0]
    if not blocked:
        return t.reshape(k * k, *t.shape[2:])
    m = k // s
    t = t.reshape(m, s, m, s, *t.shape[2:]).swapaxes(1, 2)
    return t.reshape(k * k, *t.shape[4:])


def _rows_to_taps(t: jax.Array, k: int, s: int, blocked: bool) -> jax.Array:
    """Inverse of ``_taps_to_rows``: (K*K, ...) -> (K, K, ...)."""
    if not blocked:
        return t.reshape(k, k, *t.shape[1:])
    m = k // s
    t = t.reshape(m, m, s, s, *t.shape[1:]).swapaxes(1, 2)
    return t.reshape(k, k, *t.shape[4:])


def _conv2d_lax(x: jax.Array, w: jax.Array, s: int) -> jax.Array:
    return lax.conv_general_dilated(x, w, (s, s), "VALID", dimension_numbers=_DIMENSION_NUMBERS)


def _conv_transpose2d_lax(x: jax.Array, w: jax.Array, s: int) -> jax.Array:
    return lax.conv_transpose(x, w, (s, s), "VALID", dimension_numbers=_DIMENSION_NUMBERS)


# The transposed convolution adds x[i] * w[K-1-u] to output pixel s*i + u. Writing
# u = s*a + p (p the output phase), phase p at position j sums x[j - a] * w[K-1-(s*a+p)]
# over a < kb = ceil(K/s): all s*s phases come from one stride-1 kb x kb correlation
# (sub-pixel) or from the products x[i] * w[K-1-u] for every tap added up by phase
# (scatter). Its gradients are both strided products over the output gradient's
# K x K patches g[s*i + u]: dx = patches . W^T and dW = x^T . patches.


def _scatter_kernel(w: jax.Array) -> jax.Array:
    """(K, K, Cin, Cout) -> (Cin, K*K*Cout), column (u, v, c) holding w[K-1-u, K-1-v, :, c]."""
    k, _, cin, cout = w.shape
    return w[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, k * k * cout)


def _subpixel_kernel(w: jax.Array, s: int) -> jax.Array:
    """(K, K, Cin, Cout) -> (kb, kb, Cin, s*s*Cout): the stride-1 kernel of all output phases."""
    k, _, cin, cout = w.shape
    kb = -(-k // s)
    wf = jnp.pad(w[::-1, ::-1], ((0, s * kb - k), (0, s * kb - k), (0, 0), (0, 0)))
    wp = wf.reshape(kb, s, kb, s, cin, cout)  # [a, py, b, px] = w[K-1-(s*a+py), K-1-(s*b+px)]
    return wp[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(kb, kb, cin, s * s * cout)


def _phases_to_output(phases: jax.Array, x_shape: tuple[int, ...], k: int, s: int) -> jax.Array:
    """Interleave (N, H+kb-1, W+kb-1, s*s*Cout) phases and crop to s*(H-1)+K."""
    h, wd = x_shape[1:3]
    return _depth_to_space(phases, s)[:, : s * (h - 1) + k, : s * (wd - 1) + k, :]


def _transpose_subpixel(x: jax.Array, w: jax.Array, s: int, dtype: jnp.dtype | None) -> jax.Array:
    del dtype  # XLA's own convolution, in the inputs' dtype
    kb = -(-w.shape[0] // s)
    xp = jnp.pad(x, ((0, 0), (kb - 1, kb - 1), (kb - 1, kb - 1), (0, 0)))
    phases = _conv2d_lax(xp, _subpixel_kernel(w, s), 1)
    return _phases_to_output(phases, x.shape, w.shape[0], s)


def _transpose_scatter(x: jax.Array, w: jax.Array, s: int, dtype: jnp.dtype | None) -> jax.Array:
    n, h, wd, _ = x.shape
    k, cout = w.shape[0], w.shape[3]
    kb = -(-k // s)
    taps = _matmul(_cast(x, dtype), _cast(_scatter_kernel(w), dtype), x.dtype)
    taps = taps.reshape(n, h, wd, k, k, cout)
    phases = []
    for py in range(s):
        for px in range(s):
            acc = jnp.zeros((n, h + kb - 1, wd + kb - 1, cout), taps.dtype)
            for a in range(-(-(k - py) // s)):
                for b in range(-(-(k - px) // s)):
                    tap = taps[:, :, :, s * a + py, s * b + px]
                    acc = acc + jnp.pad(tap, ((0, 0), (a, kb - 1 - a), (b, kb - 1 - b), (0, 0)))
            phases.append(acc)
    phases_ = jnp.stack(phases, axis=3).reshape(n, h + kb - 1, wd + kb - 1, s * s * cout)
    return _phases_to_output(phases_, x.shape, k, s)


_TRANSPOSE_FORWARD = {"subpixel": _transpose_subpixel, "scatter": _transpose_scatter}


# ``dtype`` (None or a dtype, a non-differentiable argument) is the operands' dtype of
# the matrix products. The residuals stay in the inputs' dtype: stacking bfloat16
# copies over the conv chunks' loop made the mmnist batch-50 step 1.8x slower
# (XLA:CPU fuses the conversion into the stacking's dynamic-update-slice, run slowly).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose2d_fast(
    x: jax.Array, w: jax.Array, s: int, forward: str, dtype: jnp.dtype | None
) -> jax.Array:
    return _TRANSPOSE_FORWARD[forward](x, w, s, dtype)


def _conv_transpose2d_fast_fwd(
    x: jax.Array, w: jax.Array, s: int, forward: str, dtype: jnp.dtype | None
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _TRANSPOSE_FORWARD[forward](x, w, s, dtype), (x, w)


def _conv_transpose2d_fast_bwd(
    s: int, forward: str, dtype: jnp.dtype | None, residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    k, _, cin, cout = w.shape
    patches, blocked = _patches(_cast(g, dtype), k, s, x.shape[1], x.shape[2])  # (N, H, W, K*K*Cout)
    wm = _taps_to_rows(w[::-1, ::-1], s, blocked).transpose(1, 0, 2).reshape(cin, k * k * cout)
    dx = _dot(patches, _cast(wm, dtype), (((3,), (1,)), ((), ())), g.dtype)
    dw = _outer(_cast(x, dtype), patches, w.dtype).reshape(cin, k * k, cout).transpose(1, 0, 2)
    return dx, _rows_to_taps(dw, k, s, blocked)[::-1, ::-1]


_conv_transpose2d_fast.defvjp(_conv_transpose2d_fast_fwd, _conv_transpose2d_fast_bwd)


# A stride-s convolution: XLA:CPU runs the forward pass fast (unless the input has few
# channels) and the gradients slowly. Its weight gradient is x's K x K strided patches
# against g; its input gradient is the transposed convolution of g with the flipped
# kernel, computed like the decoder's.


def _conv2d_forward(x: jax.Array, w: jax.Array, s: int, dtype: jnp.dtype | None) -> jax.Array:
    k, _, cin, cout = w.shape
    if not _blocked(cin, k, s):
        return _conv2d_lax(x, w, s)
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    wm = _taps_to_rows(w, s, True).reshape(-1, cout)
    return _matmul(_block_patches(_cast(x, dtype), k, s, ho, wo), _cast(wm, dtype), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_fast(x: jax.Array, w: jax.Array, s: int, dtype: jnp.dtype | None) -> jax.Array:
    return _conv2d_forward(x, w, s, dtype)


def _conv2d_fast_fwd(
    x: jax.Array, w: jax.Array, s: int, dtype: jnp.dtype | None
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv2d_forward(x, w, s, dtype), (x, w)


def _conv2d_fast_bwd(
    s: int, dtype: jnp.dtype | None, residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    k, _, cin, cout = w.shape
    patches, blocked = _patches(_cast(x, dtype), k, s, g.shape[1], g.shape[2])  # (N, Ho, Wo, K*K*Cin)
    dw = _outer(patches, _cast(g, dtype), w.dtype).reshape(k * k, cin, cout)
    dw = _rows_to_taps(dw, k, s, blocked)
    wt = w[::-1, ::-1].transpose(0, 1, 3, 2)  # dx = conv_transpose(g, wt)
    dx = _TRANSPOSE_FORWARD[_auto_forward(g.shape, wt.shape)](g, wt, s, dtype)
    pad = ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0))
    return jnp.pad(dx, pad), dw


_conv2d_fast.defvjp(_conv2d_fast_fwd, _conv2d_fast_bwd)


def _conv_transpose2d_dense(x: jax.Array, w: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    # A 1x1 input spreads over the whole K x K output: one product with the flipped kernel.
    n, h, wd, cin = x.shape
    if (h, wd) != (1, 1):
        raise ValueError(f'impl="dense" needs a 1x1 input, got {h}x{wd}')
    k, cout = w.shape[0], w.shape[3]
    x2, km = x.reshape(n, cin), _scatter_kernel(w)
    y = _matmul(x2, km, x.dtype) if dtype is None else _low_product(x2, km, dtype)
    return y.reshape(n, k, k, cout)


# (N, D) x (D, M) with operands in ``dtype`` and the result and both gradients
# accumulated in the inputs' dtype (autodiff of a cast product would round the
# gradients to ``dtype``).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_product(a: jax.Array, b: jax.Array, dtype: jnp.dtype) -> jax.Array:
    return _matmul(_cast(a, dtype), _cast(b, dtype), a.dtype)


def _low_product_fwd(
    a: jax.Array, b: jax.Array, dtype: jnp.dtype
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _matmul(_cast(a, dtype), _cast(b, dtype), a.dtype), (a, b)


def _low_product_bwd(
    dtype: jnp.dtype, residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    a, b = _cast(residuals[0], dtype), _cast(residuals[1], dtype)
    gc = _cast(g, dtype)
    return (_dot(gc, b, (((1,), (1,)), ((), ())), g.dtype),
            _dot(a, gc, (((0,), (0,)), ((), ())), g.dtype))


_low_product.defvjp(_low_product_fwd, _low_product_bwd)


# Per frame, the scatter form's product holds H*W*K*K*Cout values; up to this many it was
# faster than the sub-pixel convolution for every decoder layer measured
# (benchmarks/conv_ops.py), above it slower.
_SCATTER_MAX_TAPS = 65536


def _auto_forward(x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> str:
    h, wd = x_shape[-3:-1]
    return "scatter" if h * wd * w_shape[0] ** 2 * w_shape[3] <= _SCATTER_MAX_TAPS else "subpixel"


def _auto_transpose_impl(x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> str:
    """Fastest measured formulation for the shape (benchmarks/conv_ops.py, XLA:CPU)."""
    if x_shape[-3:-1] == (1, 1):
        return "dense"
    return _auto_forward(x_shape, w_shape)


def _split_batch(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    if x.ndim < 4:
        raise ValueError(f"expected (*batch, H, W, C), got shape {x.shape}")
    return x.reshape((-1, *x.shape[-3:])), x.shape[:-3]


def _product_dtype(product_dtype: object, impl: str) -> jnp.dtype | None:
    if product_dtype is None:
        return None
    try:
        dtype = jnp.dtype(product_dtype)
    except TypeError:
        raise TypeError(f"product_dtype must be None or a float dtype, got {product_dtype!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"product_dtype must be a float dtype, got {dtype}")
    if impl == "lax":
        raise ValueError('product_dtype applies to the matrix-product forms, not impl="lax"')
    return dtype


def conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int = 2, impl: ConvImpl = "matmul",
    product_dtype: jnp.dtype | str | None = None,
) -> jax.Array:
    """VALID convolution ``(*batch, H, W, Cin) -> (*batch, (H-K)//s+1, (W-K)//s+1, Cout)``.

    ``impl``: ``"lax"`` (reference) or ``"matmul"`` (the lax forward pass, or for at most
    4 input channels a product over patches; gradients as matrix products over patches;
    reverse-mode differentiation only). ``product_dtype`` (``"matmul"`` only), say
    ``"bfloat16"``: the matrix products take operands rounded to it and accumulate in
    the inputs' dtype; XLA's own convolutions (the forward pass above 4 channels, a
    sub-pixel input gradient) stay in the inputs' dtype. None: the inputs' dtype.

    Examples:
      >>> x, w, b = jnp.ones((1, 8, 8, 2)), jnp.ones((4, 4, 2, 3)), jnp.zeros(3)
      >>> conv2d(x, w, b).shape
      (1, 3, 3, 3)
      >>> float(conv2d(x, w * 1.001, b, product_dtype="bfloat16")[0, 0, 0, 0])  # 1.001 -> 1.0
      32.0
    """
    xf, batch = _split_batch(x)
    dtype = _product_dtype(product_dtype, impl)
    if impl == "lax":
        y = _conv2d_lax(xf, w, stride)
    elif impl == "matmul":
        y = _conv2d_fast(xf, w, stride, dtype)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    y = y + b.reshape(1, 1, 1, -1)
    return y.reshape((*batch, *y.shape[1:]))


def conv_transpose2d(
    x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int = 2, impl: TransposeImpl = "auto",
    product_dtype: jnp.dtype | str | None = None,
) -> jax.Array:
    """VALID transposed convolution ``(*batch, H, W, Cin) -> (*batch, s(H-1)+K, s(W-1)+K, Cout)``.

    ``impl``: ``"lax"`` (reference); ``"subpixel"`` (forward: all s*s output phases from
    one stride-1 convolution) or ``"scatter"`` (forward: one product giving every tap's
    contribution, added up by phase), both with gradients as products over the output
    gradient's patches and reverse-mode only; ``"dense"`` (1x1 inputs only: one
    product); or ``"auto"``: ``"dense"`` for 1x1 inputs, ``"scatter"`` where its product
    holds at most 65536 values per frame (``H*W*K*K*Cout``), else ``"subpixel"``.
    ``product_dtype``: as for ``conv2d`` (the sub-pixel forward pass is XLA's own
    convolution and stays in the inputs' dtype).

    Examples:
      >>> x, w, b = jnp.ones((1, 1, 1, 2)), jnp.ones((5, 5, 2, 3)), jnp.zeros(3)
      >>> conv_transpose2d(x, w, b).shape
      (1, 5, 5, 3)
    """
    xf, batch = _split_batch(x)
    if impl == "auto":
        impl = _auto_transpose_impl(xf.shape, w.shape)
    dtype = _product_dtype(product_dtype, impl)
    if impl == "lax":
        y = _conv_transpose2d_lax(xf, w, stride)
    elif impl in _TRANSPOSE_FORWARD:
        y = _conv_transpose2d_fast(xf, w, stride, impl, dtype)
    elif impl == "dense":
        y = _conv_transpose2d_dense(xf, w, dtype)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    y = y + b.reshape(1, 1, 1, -1)
    return y.reshape((*batch, *y.shape[1:]))
