"""VideoPipeline: windows, shuffling, batching, epochs, shards, resume; to_float."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clockwork.data import VideoPipeline, to_float


def labelled_videos(num_videos: int, num_frames: int) -> np.ndarray:
    """`(N, T, 3, 1, 1)` uint8 whose frame `(n, t)` holds the pixels `(n, t // 256, t % 256)`."""
    videos = np.zeros((num_videos, num_frames, 3, 1, 1), np.uint8)
    videos[:, :, 0] = np.arange(num_videos)[:, None, None, None]
    videos[:, :, 1] = (np.arange(num_frames) // 256)[None, :, None, None]
    videos[:, :, 2] = (np.arange(num_frames) % 256)[None, :, None, None]
    return videos


def frame_labels(batch: np.ndarray) -> np.ndarray:
    """`(B, seq_len)` frame index of every frame in a batch of labelled frames."""
    return batch[:, :, 1, 0, 0].astype(np.int64) * 256 + batch[:, :, 2, 0, 0]


def windows_of(batch: np.ndarray) -> list[tuple[int, int]]:
    """(video, first frame) of each window in a batch of labelled frames."""
    return [
        (int(v), int(t))
        for v, t in zip(batch[:, 0, 0, 0, 0], frame_labels(batch)[:, 0], strict=True)
    ]


def make(videos, **kwargs) -> VideoPipeline:
    defaults = dict(seq_len=10, batch_size=4, seed=0, process_index=0, process_count=1, prefetch=0)
    return VideoPipeline(videos, **{**defaults, **kwargs})


def test_windows_are_consecutive_and_the_remainder_is_dropped():
    videos = labelled_videos(6, 500)
    pipeline = make(videos, seq_len=100, batch_size=5, shuffle=False, num_epochs=1)
    assert (
        (pipeline.windows_per_video == 5).all()
        and pipeline.num_windows == 30
        and pipeline.steps_per_epoch == 6
    )
    batches = list(pipeline)
    assert [b.shape for b in batches] == [(5, 100, 3, 1, 1)] * 6
    assert all(b.dtype == np.uint8 for b in batches)
    seen = [w for b in batches for w in windows_of(b)]
    assert seen == [(n, s) for n in range(6) for s in range(0, 500, 100)]  # in order
    for batch in batches:  # frames within a window are consecutive
        labels = frame_labels(batch)
        np.testing.assert_array_equal(labels - labels[:, :1], np.tile(np.arange(100), (5, 1)))
        assert (batch[:, :, 0] == batch[:, :1, 0]).all()  # from one video
    # 25 frames: 2 windows each, frames 20-24 dropped; 6 windows: one batch of 4.
    short = make(labelled_videos(3, 25), seq_len=10, batch_size=4, shuffle=False, num_epochs=1)
    assert [w for b in short for w in windows_of(b)] == [(0, 0), (0, 10), (1, 0), (1, 10)]


def test_shuffled_epochs_visit_every_window_once_in_fresh_orders():
    pipeline = make(labelled_videos(10, 30), batch_size=5, num_epochs=3)
    batches = list(pipeline)
    assert len(batches) == 3 * 6
    epochs = [[w for b in batches[6 * e : 6 * e + 6] for w in windows_of(b)] for e in range(3)]
    every = sorted((n, s) for n in range(10) for s in (0, 10, 20))
    assert all(sorted(epoch) == every for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2] != every
    with pytest.raises(StopIteration):
        next(pipeline)


def test_incomplete_last_batch_is_dropped():
    pipeline = make(labelled_videos(7, 10), batch_size=3, num_epochs=1)
    batches = list(pipeline)
    assert len(batches) == 2 and len({w for b in batches for w in windows_of(b)}) == 6


def test_same_seed_same_batches_other_seed_other_batches():
    videos = labelled_videos(8, 40)
    first = [windows_of(b) for b in make(videos, seed=7, num_epochs=2)]
    again = [windows_of(b) for b in make(videos, seed=7, num_epochs=2, prefetch=3)]
    other = [windows_of(b) for b in make(videos, seed=8, num_epochs=2)]
    assert first == again
    assert first != other


def test_process_shards_are_disjoint_and_form_the_global_batches():
    videos = labelled_videos(12, 20)  # 24 windows; 3 processes x 2 = 6 per global batch
    single = [windows_of(b) for b in make(videos, batch_size=6, num_epochs=2)]
    shards = [
        [
            windows_of(b)
            for b in make(videos, batch_size=2, process_index=p, process_count=3, num_epochs=2)
        ]
        for p in range(3)
    ]
    assert all(len(s) == len(single) == 8 for s in shards)
    for step, global_batch in enumerate(single):
        assert shards[0][step] + shards[1][step] + shards[2][step] == global_batch
    for epoch in range(2):
        per_process = [{w for b in s[4 * epoch : 4 * epoch + 4] for w in b} for s in shards]
        assert sum(len(p) for p in per_process) == len(set.union(*per_process)) == 24


def test_defaults_to_jax_process():
    pipeline = VideoPipeline(labelled_videos(2, 10), seq_len=5, batch_size=2)
    assert (pipeline.process_index, pipeline.process_count) == (
        jax.process_index(),
        jax.process_count(),
    )
    pipeline.close()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_sees_exactly_the_uninterrupted_batches(prefetch):
    videos = labelled_videos(9, 30)  # 27 windows, batch 4: 6 steps per epoch
    uninterrupted = [b.copy() for b in make(videos, num_epochs=3, prefetch=prefetch)]
    assert len(uninterrupted) == 18
    interrupted = make(videos, num_epochs=3, prefetch=prefetch)
    before = [next(interrupted) for _ in range(8)]  # stop inside epoch 2
    saved = json.loads(json.dumps(interrupted.state()))
    assert (saved["epoch"], saved["step"]) == (1, 2)
    interrupted.close()
    resumed = make(videos, num_epochs=3, prefetch=prefetch)
    resumed.restore(saved)
    after = list(resumed)
    assert len(before) + len(after) == 18
    for a, b in zip(before + after, uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)
    # Restoring rewinds a running pipeline too, discarding what it had read ahead.
    resumed.restore(saved)
    np.testing.assert_array_equal(next(resumed), uninterrupted[8])


def test_restore_rejects_other_settings():
    videos = labelled_videos(9, 30)
    state = make(videos, seed=1).state()
    for changed in (dict(seed=2), dict(batch_size=3), dict(seq_len=15), dict(shuffle=False)):
        with pytest.raises(ValueError, match="other pipeline settings"):
            make(videos, **{"seed": 1, **changed}).restore(state)
    with pytest.raises(ValueError, match="num_windows"):
        make(labelled_videos(8, 30), seed=1).restore(state)


def test_batch_at_is_a_pure_function_of_position():
    pipeline = make(labelled_videos(9, 30), num_epochs=2)
    batches = list(pipeline)
    np.testing.assert_array_equal(pipeline.batch_at(1, 3), batches[6 + 3])
    np.testing.assert_array_equal(pipeline.batch_at(0, 0), batches[0])
    with pytest.raises(IndexError):
        pipeline.batch_at(0, 6)


def test_input_errors():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make(labelled_videos(2, 30), batch_size=4, process_count=2)
    with pytest.raises(TypeError, match="uint8"):
        make(labelled_videos(4, 30).astype(np.float32))
    with pytest.raises(ValueError, match=r"process_index 2 not in \[0, 2\)"):
        make(labelled_videos(4, 30), process_index=2, process_count=2)
    uneven = [np.zeros((30, 3, 1, 1), np.uint8)] * 3 + [np.zeros((20, 3, 1, 1), np.uint8)]
    with pytest.raises(ValueError, match="video 3 has shape"):
        list(make(uneven, batch_size=3, shuffle=False, num_epochs=1))


def test_to_float_on_device():
    frames = jnp.array([[0, 51, 255]], jnp.uint8)
    out = jax.jit(to_float)(frames)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), [[0.0, 0.2, 1.0]], rtol=0, atol=1e-7)
    half = to_float(np.array([255, 0], np.uint8), jnp.bfloat16)
    assert half.dtype == jnp.bfloat16 and half.tolist() == [1.0, 0.0]
