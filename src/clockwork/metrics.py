"""Frame metrics for video prediction (PSNR, SSIM) and the open-loop evaluation protocol.

The metrics reproduce the CW-VAE references (docs/model.md#metrics), which called scikit-image
0.18 on every channel of every predicted float frame and averaged over channels:
``peak_signal_noise_ratio(gt, pred)`` (data range 1 for frames in ``[0, 1]``) and
``structural_similarity(gt, pred)`` (7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``,
sample covariance, data range 2: the float dtype's range ``-1..1``).

Frames are float arrays ``(..., H, W, C)`` (not clipped); every leading axis (batch,
time, ...) is mapped over and each metric returns one value per frame, ``(...)``. All
functions are pure; ``psnr`` and ``ssim`` check their arguments and run a jitted
computation (their flags static), and nest inside other jitted code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from clockwork import _checks


def _check_frames(pred: jax.Array, target: jax.Array) -> None:
    """Raise unless both are float frames ``(..., H, W, C)`` of one shape."""
    _checks.float_array("pred", pred, (..., "H", "W", "C"))
    _checks.float_array("target", target)
    _checks.same_shape("target", target, "pred", pred)


def psnr(
    pred: jax.Array, target: jax.Array, data_range: float = 1.0, *, per_channel: bool = True,
    max_db: float | None = None,
) -> jax.Array:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / mse)``.

    Args:
      pred: frames ``(..., H, W, C)``.
      target: frames of the same shape.
      data_range: the range of the pixel values (1 for frames in ``[0, 1]``).
      per_channel: average the PSNRs of the channels, as the references did (they called
        scikit-image on each channel); ``False`` takes one PSNR of the mean squared error
        over all pixels and channels (scikit-image on the whole frame). The two agree
        when ``C == 1``.
      max_db: if given, each PSNR (of a channel, with ``per_channel``) is clipped to at
        most ``max_db``, so that exact frames keep means finite.

    Returns:
      ``(...)``. A frame (or, with ``per_channel``, a channel) with ``mse == 0`` gives
      ``+inf``, as in scikit-image, unless ``max_db`` is given; averaging curves that
      contain ``inf`` gives ``inf`` means and ``nan`` spreads, so pass ``max_db`` when
      predictions can be exact (a copy of a frame, for one).
      In float32 the result is within 1e-5 dB of a float64 computation below about
      60 dB (float32's own spacing is 4e-6 dB from 32 to 64 dB); with x64, to rounding.

    Examples:
      >>> x = jnp.zeros((2, 8, 8, 3))
      >>> psnr(x + 0.5, x).round(4)  # mse = 1/4, so 10 log10(4) dB
      Array([6.0206, 6.0206], dtype=float32)
      >>> psnr(x, x, max_db=60.0)
      Array([60., 60.], dtype=float32)

    Raises:
      TypeError, ValueError: ``pred`` or ``target`` is not a float array ``(..., H, W,
        C)`` or their shapes differ, ``data_range`` or ``max_db`` is not a positive
        number (arrays pass unchecked) or ``per_channel`` not a bool.
    """
    _check_frames(pred, target)
    _checks.scalar("data_range", data_range, low=0.0, low_open=True)
    if max_db is not None:
        _checks.scalar("max_db", max_db, low=0.0, low_open=True)
    return _psnr(pred, target, data_range, max_db, per_channel=_checks.flag("per_channel", per_channel))


@functools.partial(jax.jit, static_argnames="per_channel")
def _psnr(pred: jax.Array, target: jax.Array, data_range: Any, max_db: Any, *,
          per_channel: bool) -> jax.Array:
    axes = (-3, -2) if per_channel else (-3, -2, -1)
    mse = jnp.mean(jnp.square(pred - target), axis=axes)
    value = 10.0 * jnp.log10(data_range**2 / mse)
    if max_db is not None:
        value = jnp.minimum(value, jnp.asarray(max_db, value.dtype))
    return jnp.mean(value, axis=-1) if per_channel else value


def _window_stats(
    pred: jax.Array, target: jax.Array, win_size: int, ddof: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Means, variances and covariance over every window lying inside the frame.

    Frames ``(..., H, W, C)``; each output ``(..., H - win_size + 1, W - win_size + 1, C)``,
    the (co)variances divided by ``win_size**2 - ddof``. Two passes (the means, then the
    products of the deviations from them) rather than ``E[xy] - E[x] E[y]``, which
    cancels catastrophically in float32 on flat regions.
    """
    out_h, out_w = pred.shape[-3] - win_size + 1, pred.shape[-2] - win_size + 1
    n = win_size**2

    def window_mean(x: jax.Array) -> jax.Array:
        window = (1,) * (x.ndim - 3) + (win_size, win_size, 1)
        zero = jnp.zeros((), x.dtype)
        return jax.lax.reduce_window(x, zero, jax.lax.add, window, (1,) * x.ndim, "VALID") / n

    ux, uy = window_mean(pred), window_mean(target)

    def add_window_row(row: jax.Array, sums: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        vx, vy, vxy = sums
        x_rows = jax.lax.dynamic_slice_in_dim(pred, row, out_h, axis=-3)
        y_rows = jax.lax.dynamic_slice_in_dim(target, row, out_h, axis=-3)
        for col in range(win_size):
            dx = x_rows[..., col : col + out_w, :] - ux
            dy = y_rows[..., col : col + out_w, :] - uy
            vx, vy, vxy = vx + dx * dx, vy + dy * dy, vxy + dx * dy
        return vx, vy, vxy

    zeros = jnp.zeros_like(ux)
    vx, vy, vxy = jax.lax.fori_loop(0, win_size, add_window_row, (zeros, zeros, zeros))
    return ux, uy, vx / (n - ddof), vy / (n - ddof), vxy / (n - ddof)


def ssim(
    pred: jax.Array,
    target: jax.Array,
    data_range: float = 2.0,
    *,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
    use_sample_covariance: bool = True,
) -> jax.Array:
    """Mean structural similarity with a uniform window, averaged over channels.

    Per channel and window, with means ``ux, uy``, (co)variances ``vx, vy, vxy`` (sample
    estimates, divided by ``win_size**2 - 1``, when ``use_sample_covariance``),
    ``C1 = (k1 data_range)**2`` and ``C2 = (k2 data_range)**2``::

        S = (2 ux uy + C1) (2 vxy + C2) / ((ux**2 + uy**2 + C1) (vx + vy + C2))

    averaged over the windows that lie wholly inside the frame, then over channels.
    scikit-image filters the whole frame (with reflected borders) and then crops
    ``(win_size - 1) // 2`` pixels from each side before averaging, which keeps exactly
    these windows, so its border mode never reaches the result.

    Args:
      pred: frames ``(..., H, W, C)`` with ``H, W >= win_size``.
      target: frames of the same shape.
      data_range: 2 reproduces the references and the paper (scikit-image 0.18's default
        for float frames); 1 is the range of frames in ``[0, 1]``.
      win_size: odd side of the square window.
      k1: the first stabilising constant.
      k2: the second stabilising constant.
      use_sample_covariance: divide (co)variances by ``win_size**2 - 1`` rather than
        ``win_size**2``.

    Returns:
      ``(...)``; 1 for identical frames.

    Examples:
      >>> x = jnp.linspace(0.0, 1.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
      >>> ssim(x, x)
      Array([1., 1.], dtype=float32)

    Raises:
      TypeError, ValueError: ``pred`` or ``target`` is not a float array ``(..., H, W,
        C)`` or their shapes differ, ``win_size`` is not an odd positive int that fits
        the frames, ``data_range`` not a positive number or ``k1``, ``k2`` not
        non-negative ones (arrays pass unchecked), or ``use_sample_covariance`` is not
        a bool.
    """
    _check_frames(pred, target)
    if _checks.integer("win_size", win_size) % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(pred.shape[-3:-1]) < win_size:
        raise ValueError(f"frames {pred.shape[-3:-1]} are smaller than the window {win_size}")
    _checks.scalar("data_range", data_range, low=0.0, low_open=True)
    _checks.scalar("k1", k1, low=0.0)
    _checks.scalar("k2", k2, low=0.0)
    _checks.flag("use_sample_covariance", use_sample_covariance)
    return _ssim(pred, target, data_range, win_size=win_size, k1=k1, k2=k2,
                 use_sample_covariance=use_sample_covariance)


@functools.partial(jax.jit, static_argnames=("win_size", "use_sample_covariance"))
def _ssim(pred: jax.Array, target: jax.Array, data_range: Any, *, win_size: int, k1: Any,
          k2: Any, use_sample_covariance: bool) -> jax.Array:
    ux, uy, vx, vy, vxy = _window_stats(pred, target, win_size, int(use_sample_covariance))
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-3, -2, -1))


def best_of_samples(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keep, per example, the sample whose metric has the highest mean over the horizon.

    The references' protocol for several samples per example (docs/model.md#metrics), for
    metrics where higher is better; each metric picks its own sample (the best by SSIM
    need not be the best by PSNR). Ties go to the first sample.

    Args:
      values: per-frame metric ``(..., num_samples, horizon)``, e.g.
        ``(num_examples, num_samples, horizon)``.

    Returns:
      ``(curves, index)``: the kept curves ``(..., horizon)`` and which sample was kept,
      ``(...)``.

    Examples:
      >>> values = jnp.array([[[0.1, 0.9], [0.6, 0.5]], [[0.3, 0.3], [0.2, 0.2]]])
      >>> curves, index = best_of_samples(values)
      >>> curves
      Array([[0.6, 0.5],
             [0.3, 0.3]], dtype=float32)
      >>> index
      Array([1, 0], dtype=int32)
    """
    _checks.array("values", values, (..., "num_samples", "horizon"))
    index = jnp.argmax(jnp.mean(values, axis=-1), axis=-1)
    curves = jnp.take_along_axis(values, index[..., None, None], axis=-2)[..., 0, :]
    return curves, index


def summarize_curves(
    curves: jax.Array, percentiles: Sequence[float] = (5.0, 50.0, 95.0)
) -> dict[str, jax.Array]:
    """Mean and spread over examples of per-frame metric curves.

    Args:
      curves: ``(num_examples, horizon)``, e.g. the output of ``best_of_samples``.
      percentiles: percentiles (0..100, linear interpolation) to report besides the mean
        and standard deviation.

    Returns:
      ``{"mean": ..., "std": ..., "p5": ..., ...}``, each ``(horizon,)``; ``std`` is the
      population standard deviation over examples (``ddof = 0``, as the references
      plotted), ``p{q:g}`` the ``q``-th percentile.

    Examples:
      >>> summary = summarize_curves(jnp.array([[1.0, 2.0], [3.0, 6.0]]), percentiles=(50,))
      >>> {name: value.tolist() for name, value in summary.items()}
      {'mean': [2.0, 4.0], 'std': [1.0, 2.0], 'p50': [2.0, 4.0]}
    """
    _checks.array("curves", curves, ("num_examples", "horizon"))
    for i, q in enumerate(_checks.sequence("percentiles", percentiles, "numbers in [0, 100]")):
        _checks.number(f"percentiles[{i}]", q, low=0.0, high=100.0)
    summary = {"mean": jnp.mean(curves, axis=0), "std": jnp.std(curves, axis=0)}
    for q in percentiles:
        summary[f"p{q:g}"] = jnp.percentile(curves, q, axis=0)
    return summary
