"""Moving MNIST generator: format, seeds, bouncing motion, two digits per video."""

import numpy as np
import pytest

from clockwork.data import generate_moving_mnist, iter_moving_mnist, mnist_digits, mnist_labels
from clockwork.data import moving_mnist as mm
from clockwork.data.moving_mnist import SPEED_RANGE, moving_mnist_plan


def step_by_step(start: float, velocity: float, num_frames: int) -> np.ndarray:
    """Independent twin of `bouncing_positions`: move, then mirror at 0 and 36."""
    x, v, path = start, velocity, []
    for _ in range(num_frames):
        path.append(x)
        x += v
        if x < 0:
            x, v = -x, -v
        elif x > 36:
            x, v = 72 - x, -v
    return np.array(path)


def naive_render(plan: mm.MovingMnistPlan, num_frames: int, digits: np.ndarray) -> np.ndarray:
    """Independent twin of `render`: one frame at a time, pasting each digit by max."""
    positions = mm.plan_positions(plan, num_frames)
    out = np.zeros((len(plan), num_frames, 64, 64, 1), np.uint8)
    for n in range(len(plan)):
        for t in range(num_frames):
            for d in range(2):
                r, c = positions[n, t, d]
                box = out[n, t, r : r + 28, c : c + 28, 0]
                box[...] = np.maximum(box, digits[plan.digit_ids[n, d]])
    return out


def test_shape_dtype_and_seeds():
    videos = generate_moving_mnist(4, num_frames=30, seed=1)
    assert videos.shape == (4, 30, 64, 64, 1) and videos.dtype == np.uint8
    np.testing.assert_array_equal(videos, generate_moving_mnist(4, num_frames=30, seed=1))
    assert not np.array_equal(videos, generate_moving_mnist(4, num_frames=30, seed=2))
    assert not np.array_equal(
        videos, generate_moving_mnist(4, num_frames=30, seed=1, digit_split="test")
    )
    # A longer video starts with the shorter one; more videos start with the fewer.
    np.testing.assert_array_equal(generate_moving_mnist(4, num_frames=50, seed=1)[:, :30], videos)
    np.testing.assert_array_equal(generate_moving_mnist(2, num_frames=30, seed=1), videos[:2])
    assert generate_moving_mnist(0, num_frames=30).shape == (0, 30, 64, 64, 1)


def test_chunks_do_not_change_the_videos():
    whole = generate_moving_mnist(7, num_frames=20, seed=3)
    chunks = list(iter_moving_mnist(7, num_frames=20, seed=3, chunk_frames=50))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_bouncing_matches_step_by_step_reflection():
    plan = mm.moving_mnist_plan(20, seed=0)
    positions = mm.bouncing_positions(plan.start, plan.velocity, 300)  # (20, 2, 2, 300)
    assert positions.min() >= 0 and positions.max() <= 36
    for n in range(20):
        for d in range(2):
            for axis in range(2):
                expected = step_by_step(plan.start[n, d, axis], plan.velocity[n, d, axis], 300)
                np.testing.assert_allclose(positions[n, d, axis], expected, atol=1e-9)
    # Every digit bounces: its direction along some axis reverses within 300 frames.
    steps = np.diff(positions, axis=-1)
    assert (np.sign(steps[..., 1:]) != np.sign(steps[..., :-1])).any(axis=(-1, -2)).all()


def test_speeds_and_starts_follow_the_plan_distribution():
    plan = mm.moving_mnist_plan(2000, seed=0)
    speed = np.linalg.norm(plan.velocity, axis=-1)
    assert speed.min() >= 2.0 and speed.max() < 5.0
    assert plan.start.min() >= 0 and plan.start.max() <= 36
    assert plan.digit_ids.min() >= 0 and plan.digit_ids.max() < 1600
    directions = np.arctan2(plan.velocity[..., 0], plan.velocity[..., 1])
    histogram, _ = np.histogram(directions, bins=4, range=(-np.pi, np.pi))
    assert histogram.min() > 0.2 * directions.size  # roughly uniform on the circle


def test_render_matches_naive_renderer():
    plan = mm.moving_mnist_plan(3, seed=4)
    digits = mnist_digits("train")
    videos = generate_moving_mnist(3, num_frames=40, seed=4)
    np.testing.assert_array_equal(videos, naive_render(plan, 40, digits))


def test_two_digits_inside_the_frame_and_nothing_else():
    plan = mm.moving_mnist_plan(5, seed=9)
    digits = mnist_digits("train")
    videos = generate_moving_mnist(5, num_frames=100, seed=9)
    positions = mm.plan_positions(plan, 100)
    assert positions.min() >= 0 and positions.max() <= 36  # so each 28x28 digit stays inside
    for n in range(5):
        for t in range(100):
            frame = videos[n, t, :, :, 0]
            covered = np.zeros((64, 64), bool)
            for d in range(2):
                r, c = positions[n, t, d]
                digit = digits[plan.digit_ids[n, d]]
                assert (frame[r : r + 28, c : c + 28] >= digit).all()  # each digit is drawn
                covered[r : r + 28, c : c + 28] |= digit > 0
            assert (frame[~covered] == 0).all()  # and nothing else
    # Pixels move: consecutive frames differ.
    assert (np.abs(np.diff(videos.astype(np.int16), axis=1)).sum(axis=(2, 3, 4)) > 0).all()


def test_shipped_digits():
    train, test = mnist_digits("train"), mnist_digits("test")
    assert train.shape == (1600, 28, 28) and test.shape == (400, 28, 28)
    assert train.dtype == np.uint8 and train.max() == 255
    assert not train.flags.writeable
    train_set = {image.tobytes() for image in train}
    assert not any(image.tobytes() in train_set for image in test)


def test_shipped_labels_belong_to_the_digits():
    for split, count in (("train", 1600), ("test", 400)):
        labels = mnist_labels(split)
        assert labels.shape == (count,) and labels.dtype == np.uint8
        assert not labels.flags.writeable
        assert set(labels.tolist()) == set(range(10))  # every class, each at least 20 times
        assert np.bincount(labels).min() >= 20
    # A class's mean image resembles its own digits more than another class's mean:
    # a nearest-mean classifier on the train means labels most test digits rightly.
    train, test = mnist_digits("train").astype(np.float32), mnist_digits("test").astype(np.float32)
    means = np.stack([train[mnist_labels("train") == c].mean(0) for c in range(10)])
    nearest = np.argmin(((test[:, None] - means[None]) ** 2).sum(axis=(2, 3)), axis=1)
    assert np.mean(nearest == mnist_labels("test")) > 0.7
    with pytest.raises(ValueError, match="digit_split must be 'train' or 'test'"):
        mnist_labels("validation")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        generate_moving_mnist(1, seed=-1)
    with pytest.raises(ValueError, match="digit_split"):
        generate_moving_mnist(1, digit_split="validation")
    with pytest.raises(ValueError, match="num_frames"):
        generate_moving_mnist(1, num_frames=0)


def test_one_digit_and_a_speed_range():
    plan = moving_mnist_plan(50, 0, num_digits=1, speed_range=(1.0, 1.5))
    assert plan.digit_ids.shape == (50, 1) and plan.start.shape == (50, 1, 2)
    speed = np.linalg.norm(plan.velocity, axis=-1)
    assert speed.min() >= 1.0 and speed.max() <= 1.5
    one = generate_moving_mnist(4, 6, 0, num_digits=1)
    two = generate_moving_mnist(4, 6, 0)
    assert (one > 0).sum() < (two > 0).sum()  # one digit covers fewer pixels than two
    # The default arguments draw what they always drew.
    np.testing.assert_array_equal(generate_moving_mnist(3, 5, 1, num_digits=2, speed_range=SPEED_RANGE),
                                  generate_moving_mnist(3, 5, 1))
    with pytest.raises(ValueError, match="num_digits must be a positive int"):
        moving_mnist_plan(2, num_digits=0)
    with pytest.raises(ValueError, match="speed_range must be"):
        moving_mnist_plan(2, speed_range=(3.0, 2.0))
