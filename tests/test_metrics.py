"""clockwork.metrics against scikit-image, closed forms and plain loops."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from clockwork import metrics
from clockwork.metrics import best_of_samples, psnr, ssim, summarize_curves

H, W = 24, 32  # not square, so that swapped axes show
KINDS = ["random", "noisy", "smooth", "blobs", "flat"]


def _frames(kind: str, channels: int, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target), float32 ``(batch, H, W, channels)`` in [0, 1]."""
    rng = np.random.default_rng([KINDS.index(kind), channels])
    shape = (batch, H, W, channels)
    if kind == "random":
        target, pred = rng.uniform(size=shape), rng.uniform(size=shape)
    elif kind == "noisy":
        target = rng.uniform(size=shape)
        pred = target + 0.05 * rng.normal(size=shape)
    elif kind == "smooth":
        yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
        phase = rng.uniform(0, 2 * np.pi, size=(batch, 1, 1, channels))
        target = 0.5 + 0.5 * np.sin(5 * xx[..., None] + 3 * yy[..., None] + phase)
        pred = target + 0.01 * rng.normal(size=shape)
    elif kind == "blobs":  # bright squares on black, the prediction shifted by a pixel
        target = np.zeros(shape)
        for i in range(batch):
            y, x = rng.integers(2, H - 10), rng.integers(2, W - 10)
            target[i, y : y + 8, x : x + 8] = rng.uniform(0.5, 1.0, size=channels)
        pred = np.roll(target, 1, axis=-2) * 0.9
    elif kind == "flat":  # float32 cancellation is at its worst here
        target = np.full(shape, 0.7)
        pred = target + 3e-3 * rng.normal(size=shape)
    else:
        raise ValueError(kind)
    return np.clip(pred, 0, 1).astype(np.float32), np.clip(target, 0, 1).astype(np.float32)



def _sk_ssim(pred: np.ndarray, target: np.ndarray, data_range: float, **kwargs) -> np.ndarray:
    return np.array(
        [
            structural_similarity(
                t.astype(np.float64),
                p.astype(np.float64),
                data_range=data_range,
                channel_axis=-1,
                **kwargs,
            )
            for p, t in zip(pred, target)
        ]
    )


def _sk_psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """As the references: scikit-image on each channel, averaged over channels."""
    return np.array(
        [
            np.mean(
                [
                    peak_signal_noise_ratio(
                        t[..., c].astype(np.float64),
                        p[..., c].astype(np.float64),
                        data_range=data_range,
                    )
                    for c in range(t.shape[-1])
                ]
            )
            for p, t in zip(pred, target)
        ]
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_matches_skimage(kind: str, channels: int, data_range: float) -> None:
    pred, target = _frames(kind, channels)
    got = ssim(jnp.asarray(pred), jnp.asarray(target), data_range)
    assert got.dtype == jnp.float32 and got.shape == (len(pred),)
    np.testing.assert_allclose(got, _sk_ssim(pred, target, data_range), rtol=0, atol=1e-5)


def test_defaults_are_the_references_settings() -> None:
    pred, target = _frames("noisy", 3)
    reference = _sk_ssim(
        pred, target, 2.0, win_size=7, K1=0.01, K2=0.03, use_sample_covariance=True
    )
    got = ssim(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)
    got = psnr(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(got, _sk_psnr(pred, target, 1.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(win_size=5),
        dict(win_size=11, use_sample_covariance=False),
        dict(k1=0.05, k2=0.1),
    ],
)
def test_ssim_options_match_skimage(options: dict) -> None:
    pred, target = _frames("smooth", 3)
    sk_options = {{"k1": "K1", "k2": "K2"}.get(k, k): v for k, v in options.items()}
    got = ssim(jnp.asarray(pred), jnp.asarray(target), 1.0, **options)
    reference = _sk_ssim(pred, target, 1.0, **sk_options)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_matches_skimage_per_channel(kind: str, channels: int, data_range: float) -> None:
    pred, target = _frames(kind, channels)
    got = psnr(jnp.asarray(pred), jnp.asarray(target), data_range)
    assert got.dtype == jnp.float32 and got.shape == (len(pred),)
    np.testing.assert_allclose(got, _sk_psnr(pred, target, data_range), rtol=0, atol=1e-5)


def test_psnr_max_db_clips_exact_channels_and_leaves_the_rest() -> None:
    target = np.random.default_rng(0).random((3, 8, 8, 2)).astype(np.float32)
    pred = target.copy()
    pred[1, 0, 0, 0] += 0.25  # frame 1: channel 0 off by one pixel, channel 1 exact
    pred[2] += 0.5  # frame 2: both channels off everywhere (6.02 dB each)
    got = np.asarray(psnr(jnp.asarray(pred), jnp.asarray(target), max_db=40.0))
    one_pixel = 10 * np.log10(64 / 0.25**2)  # 30.1 dB
    np.testing.assert_allclose(got, [40.0, (one_pixel + 40.0) / 2, 10 * np.log10(4)], rtol=1e-5)
    assert np.isinf(np.asarray(psnr(jnp.asarray(target), jnp.asarray(target)))).all()
    with pytest.raises(ValueError, match="max_db"):
        psnr(jnp.asarray(pred), jnp.asarray(target), max_db=0.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_float64_matches_skimage_to_rounding(channels: int) -> None:
    """With x64 the only differences left are float64 rounding."""
    pred, target = (x.astype(np.float64) for x in _frames("smooth", channels))
    with jax.enable_x64(True):
        got_ssim = ssim(jnp.asarray(pred), jnp.asarray(target))
        got_psnr = psnr(jnp.asarray(pred), jnp.asarray(target))
        assert got_ssim.dtype == got_psnr.dtype == jnp.float64
    np.testing.assert_allclose(got_ssim, _sk_ssim(pred, target, 2.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_psnr, _sk_psnr(pred, target, 1.0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_psnr_whole_frame_matches_skimage(kind: str) -> None:
    pred, target = _frames(kind, 3)
    reference = [
        peak_signal_noise_ratio(t.astype(np.float64), p.astype(np.float64), data_range=1.0)
        for p, t in zip(pred, target)
    ]
    got = psnr(jnp.asarray(pred), jnp.asarray(target), per_channel=False)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)


def test_psnr_closed_form() -> None:
    target = jnp.zeros((1, 8, 8, 3))
    pred = target + jnp.array([0.5, 0.25, 0.125]).reshape(1, 1, 1, 3)  # mse 4**-1, 4**-2, 4**-3
    per_channel = np.mean([10 * np.log10(4**k) for k in (1, 2, 3)])
    np.testing.assert_allclose(psnr(pred, target), [per_channel], rtol=1e-6)
    whole = 10 * np.log10(1 / np.mean([0.5**2, 0.25**2, 0.125**2]))
    np.testing.assert_allclose(psnr(pred, target, per_channel=False), [whole], rtol=1e-6)
    got = psnr(pred[..., :1], target[..., :1], 2.0)
    np.testing.assert_allclose(got, [10 * np.log10(2**2 / 0.5**2)], rtol=1e-6)


def test_psnr_of_identical_frames_is_inf() -> None:
    x = jnp.asarray(_frames("random", 3)[0])
    assert np.all(np.isposinf(psnr(x, x)))
    assert np.all(np.isposinf(psnr(x, x, per_channel=False)))


def test_ssim_of_identical_frames_is_one() -> None:
    for kind in KINDS:
        x = jnp.asarray(_frames(kind, 3)[1])
        np.testing.assert_allclose(ssim(x, x), 1.0, rtol=0, atol=1e-6)


def test_ssim_closed_form_on_constant_frames() -> None:
    """No variance: S = (2ab + C1) / (a^2 + b^2 + C1) everywhere."""
    a, b, data_range = 0.2, 0.6, 2.0
    c1 = (0.01 * data_range) ** 2
    got = ssim(jnp.full((1, 7, 9, 2), a), jnp.full((1, 7, 9, 2), b), data_range)
    np.testing.assert_allclose(got, [(2 * a * b + c1) / (a * a + b * b + c1)], rtol=1e-6)


def test_vectorised_over_batch_and_time_equals_loop() -> None:
    pred, target = (jnp.asarray(x).reshape(2, 2, H, W, 3) for x in _frames("noisy", 3))
    for metric in (psnr, ssim):
        got = metric(pred, target)
        assert got.shape == (2, 2)
        loop = [[metric(pred[b, t], target[b, t]) for t in range(2)] for b in range(2)]
        np.testing.assert_allclose(got, np.array(loop), rtol=1e-6)


def test_jit_equals_eager() -> None:
    """The metrics run jitted computations: compare their bodies run eagerly, and nesting."""
    pred, target = (jnp.asarray(x) for x in _frames("blobs", 3))
    eager = [metrics._ssim.__wrapped__(pred, target, 1.0, win_size=7, k1=0.01, k2=0.03,
                                       use_sample_covariance=True),
             metrics._psnr.__wrapped__(pred, target, 1.0, None, per_channel=True)]
    nested = jax.jit(lambda p, t, r: (ssim(p, t, r), psnr(p, t)))(pred, target, 1.0)
    for got, want in zip(nested, eager):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_invalid_inputs_raise() -> None:
    x = jnp.zeros((2, 16, 16, 1))
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 16, 16, 1\)"):
        ssim(x, x[:1])
    with pytest.raises(TypeError, match="pred must be a float array, got dtype uint8"):
        psnr(x.astype(jnp.uint8), x.astype(jnp.uint8))
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, win_size=6)
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(x[:, :5], x[:, :5])


def test_best_of_samples_keeps_the_best_mean() -> None:
    values = jnp.array(
        [
            # sample 0 has the highest single frame, sample 2 the highest mean
            [[0.9, 0.1, 0.1], [0.4, 0.4, 0.4], [0.5, 0.5, 0.5]],
            [[0.3, 0.3, 0.3], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]],
            # a tie goes to the first
            [[0.2, 0.2, 0.2], [0.6, 0.6, 0.6], [0.6, 0.6, 0.6]],
        ]
    )
    curves, index = best_of_samples(values)
    np.testing.assert_array_equal(index, [2, 0, 1])
    np.testing.assert_array_equal(curves, np.float32([[0.5] * 3, [0.3] * 3, [0.6] * 3]))
    batched_curves, batched_index = jax.jit(best_of_samples)(jnp.stack([values, values]))
    np.testing.assert_array_equal(batched_index, [[2, 0, 1]] * 2)
    np.testing.assert_array_equal(batched_curves, jnp.stack([curves, curves]))


def test_summarize_curves_matches_numpy() -> None:
    curves = np.random.default_rng(0).uniform(size=(7, 5)).astype(np.float32)
    summary = summarize_curves(jnp.asarray(curves), percentiles=(2.5, 50, 95))
    assert list(summary) == ["mean", "std", "p2.5", "p50", "p95"]
    expected = [curves.mean(0), curves.std(0)] + [
        np.percentile(curves, q, axis=0) for q in (2.5, 50, 95)
    ]
    for value, want in zip(summary.values(), expected):
        assert value.shape == (5,)
        np.testing.assert_allclose(value, want, rtol=1e-6)
