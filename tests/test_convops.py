"""The matrix-product convolutions equal the lax reference, values and gradients."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clockwork import convops

Op = Callable[..., jax.Array]


def _normal(shape: tuple[int, ...], dtype: jnp.dtype, seed: int) -> jax.Array:
    # NumPy draws: jax.random would compile a sampler for every new shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _inputs(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _normal(x_shape, dtype, 0), _normal(w_shape, dtype, 1), _normal(w_shape[-1:], dtype, 2)


def _assert_matches(op: Op, impl: str, x: jax.Array, w: jax.Array, b: jax.Array) -> None:
    y_shape = jax.eval_shape(lambda: op(x, w, b, impl="lax")).shape
    g = _normal(y_shape, x.dtype, 7)

    @jax.jit
    def both(x: jax.Array, w: jax.Array, b: jax.Array) -> list[tuple[jax.Array, ...]]:
        out = []
        for i in (impl, "lax"):
            y, vjp = jax.vjp(lambda *a, i=i: op(*a, impl=i), x, w, b)
            out.append((y, *vjp(g)))
        return out

    got, ref = both(x, w, b)
    for name, a, r in zip(("y", "dx", "dw", "db"), got, ref, strict=True):
        assert a.shape == r.shape, name
        scale = float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-5 * scale, err_msg=name)


# (input (N, H, W, Cin), kernel (K, K, Cin, Cout), stride): every encoder layer's
# spatial shape with few channels, then odd sizes, kernels and strides.
CONV_CASES = [
    ((2, 64, 64, 1), (4, 4, 1, 3), 2),
    ((2, 31, 31, 3), (4, 4, 3, 4), 2),
    ((2, 14, 14, 2), (4, 4, 2, 3), 2),
    ((2, 6, 6, 3), (4, 4, 3, 2), 2),
    ((1, 9, 7, 2), (3, 3, 2, 2), 2),
    ((2, 8, 11, 2), (5, 5, 2, 3), 2),
    ((1, 10, 9, 2), (4, 4, 2, 3), 3),
    ((1, 7, 6, 2), (3, 3, 2, 2), 1),
]

# Every decoder layer's spatial shape (1 -> 5, 5 -> 13, 13 -> 30, 30 -> 64), then odd ones.
TRANSPOSE_CASES = [
    ((2, 1, 1, 6), (5, 5, 6, 3), 2),
    ((2, 5, 5, 3), (5, 5, 3, 4), 2),
    ((2, 13, 13, 4), (6, 6, 4, 3), 2),
    ((2, 30, 30, 3), (6, 6, 3, 1), 2),
    ((1, 4, 7, 2), (3, 3, 2, 2), 2),
    ((1, 3, 2, 2), (4, 4, 2, 3), 2),
    ((1, 4, 3, 2), (5, 5, 2, 2), 3),
    ((1, 5, 4, 2), (3, 3, 2, 2), 1),
]


@pytest.fixture(params=["strided", "blocked"])
def patch_layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with patches of few channels built both ways (all cases have <= 4)."""
    if request.param == "strided":
        monkeypatch.setattr(convops, "_BLOCK_MAX_CHANNELS", 0)
    return request.param


@pytest.mark.parametrize(("x_shape", "w_shape", "stride"), CONV_CASES)
def test_conv2d_matmul_matches_lax(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, patch_layout: str
) -> None:
    x, w, b = _inputs(x_shape, w_shape, jnp.float32)
    op = lambda *a, impl: convops.conv2d(*a, stride=stride, impl=impl)  # noqa: E731
    _assert_matches(op, "matmul", x, w, b)


@pytest.mark.parametrize(("x_shape", "w_shape", "stride"), TRANSPOSE_CASES)
def test_conv_transpose2d_fast_forms_match_lax(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, patch_layout: str
) -> None:
    x, w, b = _inputs(x_shape, w_shape, jnp.float32)
    op = lambda *a, impl: convops.conv_transpose2d(*a, stride=stride, impl=impl)  # noqa: E731
    _assert_matches(op, "subpixel", x, w, b)
    _assert_matches(op, "scatter", x, w, b)


def test_block_layout_is_chosen_by_channels_and_divisibility() -> None:
    # The first encoder / last decoder layer of both presets, then wider or odd kernels.
    assert convops._blocked(1, 4, 2) and convops._blocked(3, 6, 2)
    assert not convops._blocked(32, 4, 2)
    assert not convops._blocked(3, 5, 2)
    # Block patches are the strided patches with their taps in block order.
    x = _normal((1, 10, 10, 2), jnp.float32, 0)
    taps = np.asarray(convops._taps_to_rows(jnp.arange(16).reshape(4, 4), 2, True))
    strided = convops._strided_patches(x, 4, 2, 4, 4).reshape(1, 4, 4, 16, 2)
    blocked = convops._block_patches(x, 4, 2, 4, 4).reshape(1, 4, 4, 16, 2)
    np.testing.assert_array_equal(blocked, strided[:, :, :, taps])
    w = _normal((6, 6, 2, 3), jnp.float32, 1)
    rows = convops._taps_to_rows(w, 2, True)
    np.testing.assert_array_equal(convops._rows_to_taps(rows, 6, 2, True), w)


def test_conv_transpose2d_dense_matches_lax() -> None:
    x, w, b = _inputs((3, 1, 1, 5), (5, 5, 5, 4), jnp.float32)
    _assert_matches(convops.conv_transpose2d, "dense", x, w, b)
    with pytest.raises(ValueError, match="1x1"):
        convops.conv_transpose2d(jnp.zeros((1, 2, 2, 5)), w, b, impl="dense")


def test_auto_picks_by_product_size() -> None:
    # The mmnist / minerl decoder layers: dense, scatter, subpixel, then scatter for one
    # output channel and subpixel for three.
    auto = convops._auto_transpose_impl
    assert auto((8, 1, 1, 1024), (5, 5, 1024, 128)) == "dense"
    assert auto((8, 5, 5, 128), (5, 5, 128, 64)) == "scatter"
    assert auto((8, 13, 13, 64), (6, 6, 64, 32)) == "subpixel"
    assert auto((8, 30, 30, 32), (6, 6, 32, 1)) == "scatter"
    assert auto((8, 30, 30, 32), (6, 6, 32, 3)) == "subpixel"
    # Both sides of the threshold still match the reference.
    x, w, b = _inputs((1, 13, 13, 3), (6, 6, 3, 16), jnp.float32)
    assert auto(x.shape, w.shape) == "subpixel"
    _assert_matches(convops.conv_transpose2d, "auto", x, w, b)
    x, w, b = _inputs((1, 5, 5, 3), (6, 6, 3, 4), jnp.float32)
    assert auto(x.shape, w.shape) == "scatter"
    _assert_matches(convops.conv_transpose2d, "auto", x, w, b)


@pytest.mark.parametrize(
    ("op", "w_shape", "impl"),
    [(convops.conv2d, (4, 4, 2, 3), "matmul"), (convops.conv_transpose2d, (6, 6, 2, 3), "subpixel")],
)
def test_leading_batch_dims_and_vmap(
    op: Op, w_shape: tuple[int, ...], impl: str
) -> None:
    x, w, b = _inputs((2, 3, 9, 9, 2), w_shape, jnp.float32)
    flat = op(x.reshape(6, 9, 9, 2), w, b, impl="lax")
    np.testing.assert_allclose(
        op(x, w, b, impl=impl), flat.reshape(2, 3, *flat.shape[1:]), rtol=1e-5, atol=1e-5
    )
    mapped = jax.vmap(lambda xi: op(xi, w, b, impl=impl))(x)
    np.testing.assert_allclose(mapped, flat.reshape(2, 3, *flat.shape[1:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("op", "x_shape", "w_shape", "impl"),
    [
        (convops.conv2d, (2, 31, 31, 3), (4, 4, 3, 4), "matmul"),
        (convops.conv_transpose2d, (2, 13, 13, 4), (6, 6, 4, 3), "subpixel"),
    ],
)
def test_bfloat16(
    op: Op, x_shape: tuple[int, ...], w_shape: tuple[int, ...], impl: str
) -> None:
    x, w, b = _inputs(x_shape, w_shape, jnp.bfloat16)
    got = op(x, w, b, impl=impl)
    ref = op(x.astype(jnp.float32), w.astype(jnp.float32), b.astype(jnp.float32), impl="lax")
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(got.astype(jnp.float32), ref, rtol=0, atol=2e-2 * scale)


def test_rejects_unbatched_input_and_unknown_impl() -> None:
    w, b = jnp.zeros((4, 4, 2, 3)), jnp.zeros((3,))
    with pytest.raises(ValueError, match="batch"):
        convops.conv2d(jnp.zeros((8, 8, 2)), w, b)
    with pytest.raises(ValueError, match="impl"):
        convops.conv2d(jnp.zeros((1, 8, 8, 2)), w, b, impl="nope")  # type: ignore[arg-type]


def _round_bf16(a: jax.Array) -> jax.Array:
    return a.astype(jnp.bfloat16).astype(a.dtype)


# (op, impl, x, w, stride, forward rounded, input gradient rounded): the float32
# reference the bfloat16-operand products should give. A product of two bfloat16
# numbers is exact in float32, so a product with bfloat16 operands and float32
# accumulation is the float32 product of the rounded operands, up to summation order.
# XLA's own convolutions stay float32: conv2d's forward pass above 4 input channels,
# and its input gradient where that is a sub-pixel convolution.
BF16_CASES = [
    (convops.conv2d, "matmul", (2, 31, 31, 3), (4, 4, 3, 4), 2, True, True),
    (convops.conv2d, "matmul", (1, 30, 30, 12), (6, 6, 12, 4), 2, False, False),
    (convops.conv2d, "matmul", (2, 14, 14, 8), (4, 4, 8, 6), 2, False, True),
    (convops.conv_transpose2d, "scatter", (2, 5, 5, 3), (5, 5, 3, 4), 2, True, True),
    (convops.conv_transpose2d, "subpixel", (2, 13, 13, 4), (6, 6, 4, 3), 2, False, True),
    (convops.conv_transpose2d, "dense", (3, 1, 1, 5), (5, 5, 5, 4), 2, True, True),
]


@pytest.mark.parametrize(("op", "impl", "x_shape", "w_shape", "stride", "fwd_rounded",
                          "dx_rounded"), BF16_CASES)
def test_bfloat16_product_operands_equal_float32_products_of_rounded_operands(
    op: Op, impl: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int,
    fwd_rounded: bool, dx_rounded: bool,
) -> None:
    x, w, b = _inputs(x_shape, w_shape, jnp.float32)
    g = _normal(jax.eval_shape(lambda: op(x, w, b, stride=stride, impl="lax")).shape, jnp.float32, 7)

    @jax.jit
    def run(x: jax.Array, w: jax.Array, b: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
        y, vjp = jax.vjp(lambda *a: op(*a, stride=stride, impl=impl, product_dtype="bfloat16"),
                         x, w, b)
        return (y, *vjp(g))

    def reference(x: jax.Array, w: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
        y, vjp = jax.vjp(lambda *a: op(*a, stride=stride, impl="lax"), x, w, b)
        return (y, *vjp(g))

    got = run(x, w, b, g)
    assert all(a.dtype == jnp.float32 for a in got)
    rounded = reference(_round_bf16(x), _round_bf16(w), _round_bf16(g))
    plain = reference(x, w, g)
    # dx rounds w and g; dw rounds x and g; db is g summed (no product).
    want = [rounded[0] if fwd_rounded else plain[0],
            rounded[1] if dx_rounded else plain[1], rounded[2], plain[3]]
    for name, a, r, p in zip(("y", "dx", "dw", "db"), got, want, plain, strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(a, r, rtol=0, atol=2e-6 * scale, err_msg=name)
        if r is not p:  # the rounding is visible: the check could fail
            assert float(jnp.max(jnp.abs(p - r))) > 1e-4 * scale, name


def test_product_dtype_rejects_bad_values() -> None:
    x, w, b = jnp.zeros((1, 8, 8, 2)), jnp.zeros((4, 4, 2, 3)), jnp.zeros((3,))
    with pytest.raises(ValueError, match=r'^product_dtype applies to the matrix-product forms, not impl="lax"$'):
        convops.conv2d(x, w, b, impl="lax", product_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"^product_dtype must be a float dtype, got int8$"):
        convops.conv_transpose2d(x, w.transpose(0, 1, 3, 2), b[:2], product_dtype="int8")
    with pytest.raises(TypeError, match=r"^product_dtype must be None or a float dtype, got 'bf17'$"):
        convops.conv2d(x, w, b, product_dtype="bf17")
