import jax.numpy as jnp
import numpy as np
import pytest

from clockwork.hierarchy import Clock


def loop_merge(x: np.ndarray, period: int) -> np.ndarray:
    b, t = x.shape[:2]
    steps = -(-t // period)
    out = np.zeros((b, steps) + x.shape[2:], x.dtype)
    for i in range(t):
        out[:, i // period] += x[:, i]
    return out


def loop_tile(x: np.ndarray, k: int, steps: int) -> np.ndarray:
    return np.stack([x[:, i // k] for i in range(steps)], axis=1)


def test_periods_and_steps():
    clock = Clock((2, 3, 4))
    assert clock.levels == 4
    assert clock.periods == (1, 2, 6, 24)
    assert clock.num_steps(25) == (25, 13, 5, 2)
    assert clock.num_steps(24) == (24, 12, 4, 1)
    assert Clock.uniform(3, 6).periods == (1, 6, 36)
    assert Clock(()).periods == (1,) and Clock.uniform(1, 6).levels == 1


@pytest.mark.parametrize("factors", [(2, 3, 4), (6, 6), (1, 5), (3,)])
def test_merge_and_tile_match_loops(factors):
    rng = np.random.default_rng(sum(factors))
    clock = Clock(factors)
    for t in [1, 5, 7, 13, 24, 37, 50]:
        x = rng.normal(size=(2, t, 3)).astype(np.float32)
        steps = clock.num_steps(t)
        for level in range(clock.levels):
            merged = np.asarray(clock.merge(jnp.asarray(x), level))
            np.testing.assert_allclose(merged, loop_merge(x, clock.periods[level]), rtol=1e-6, atol=1e-6)
            assert merged.shape[1] == steps[level]
        for level in range(1, clock.levels):
            up = rng.normal(size=(2, steps[level], 4)).astype(np.float32)
            tiled = np.asarray(clock.tile(jnp.asarray(up), level, steps[level - 1]))
            np.testing.assert_array_equal(tiled, loop_tile(up, factors[level - 1], steps[level - 1]))


def test_tile_reads_step_t_over_k():
    clock = Clock((3,))
    up = jnp.arange(4.0).reshape(1, 4, 1)
    tiled = clock.tile(up, 1, 10)
    assert tiled[0, :, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize("bad,error,match", [
    ((0,), ValueError, r"factors\[0\] must be a positive int, got 0$"),
    ((2, -1), ValueError, r"factors\[1\] must be a positive int, got -1$"),
    ((2.5,), TypeError, r"factors\[0\] must be a positive int, got 2\.5 \(float\)"),
    (("3",), TypeError, r"factors\[0\] must be a positive int, got '3' \(str\)"),
    ((True,), TypeError, r"factors\[0\] must be a positive int, got True \(bool\)"),
])
def test_bad_factors(bad, error, match):
    # A value out of range is a ValueError, a value of the wrong type a TypeError.
    with pytest.raises(error, match=match):
        Clock(bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="sequence"):
        Clock(6)
    with pytest.raises(ValueError, match="k must be"):
        Clock.uniform(3, 0)
    with pytest.raises(ValueError, match="level must be in"):
        Clock((2,)).merge(jnp.zeros((1, 4, 2)), 2)
    with pytest.raises(ValueError, match="level must be >= 1"):
        Clock((2,)).tile(jnp.zeros((1, 4, 2)), 0, 4)
    with pytest.raises(ValueError, match="cannot tile"):
        Clock((2,)).tile(jnp.zeros((1, 2, 2)), 1, 5)
