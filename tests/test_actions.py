"""Actions from data: the pushed-digit dataset, the pipeline's action windows, and a
model whose loss, open loop and gradients depend on them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clockwork import CWVAE, ModelConfig, SpeedConfig
from clockwork.data import VideoPipeline, generate_pushed_mnist
from clockwork.data.moving_mnist import LIMIT, PUSH_SPEED
from clockwork.training import init_train_state, make_optimizer, make_train_step


def corners(videos: np.ndarray) -> np.ndarray:
    """Top-left corner (row, col) of the digit's bounding box per frame: ``(N, T, 2)``."""
    on = videos[..., 0] > 0
    rows, cols = on.any(axis=3), on.any(axis=2)
    return np.stack([rows.argmax(-1), cols.argmax(-1)], axis=-1)


def test_pushed_digits_move_by_their_actions():
    videos, actions = generate_pushed_mnist(6, 30, seed=2)
    assert videos.dtype == np.uint8 and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    # Piecewise constant: a velocity is held until a switch (probability 0.2 per frame).
    held = np.all(actions[:, 1:] == actions[:, :-1], axis=-1).mean()
    assert 0.65 < held < 0.95
    # Away from the edges the digit's box moves by PUSH_SPEED * action (to a pixel). The
    # box's corner lies 0 to 8 pixels inside the digit's 28x28 patch, whose corner stops
    # at 0 and LIMIT: a box corner in (11, LIMIT - 3) keeps the patch off the edges.
    corner = corners(videos).astype(np.float64)
    step = np.diff(corner, axis=1)
    away = (corner > 11) & (corner < LIMIT - 3)
    inside = np.all(away[:, 1:] & away[:, :-1], axis=-1)
    assert inside.sum() > 20
    np.testing.assert_allclose(step[inside], PUSH_SPEED * actions[:, 1:][inside], atol=1.01)
    again = generate_pushed_mnist(6, 30, seed=2)
    np.testing.assert_array_equal(again[0], videos)
    assert not np.array_equal(generate_pushed_mnist(6, 30, seed=3)[1], actions)


def test_pipeline_batches_pair_each_window_with_its_actions():
    videos, actions = generate_pushed_mnist(4, 12)
    pipe = VideoPipeline(videos, actions=actions, seq_len=4, batch_size=3, seed=1,
                         process_index=0, process_count=1, prefetch=0)
    frames, acts = next(pipe)
    assert frames.shape == (3, 4, 64, 64, 1) and acts.shape == (3, 4, 2)
    for row, window in enumerate(pipe.batch_windows(0, 0)):
        video, slot = divmod(int(window), 3)
        np.testing.assert_array_equal(frames[row], videos[video, slot * 4 : slot * 4 + 4])
        np.testing.assert_array_equal(acts[row], actions[video, slot * 4 : slot * 4 + 4])
    # Its position round-trips like a pipeline without actions, and says it has them.
    state = pipe.state()
    assert state["actions"] == 1
    later = next(pipe)
    other = VideoPipeline(videos, actions=actions, seq_len=4, batch_size=3, seed=1,
                          process_index=0, process_count=1, prefetch=0)
    other.restore(state)
    for a, b in zip(next(other), later):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="state is for other pipeline settings"):
        VideoPipeline(videos, seq_len=4, batch_size=3, seed=1, process_index=0,
                      process_count=1, prefetch=0).restore(state)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((3, 12, 2), np.float32), "actions are given for 3 videos, but there are 4"),
    (np.zeros((4, 11, 2), np.float32), "actions\\[i\\] must be float \\(T, A\\) with T = 12"),
    (np.zeros((4, 12, 2), np.int32), "must be float"),
])
def test_pipeline_rejects_actions_that_do_not_fit(bad, match):
    videos, _ = generate_pushed_mnist(4, 12)
    with pytest.raises(ValueError, match=match):
        VideoPipeline(videos, actions=bad, seq_len=4, batch_size=2, process_index=0,
                      process_count=1, prefetch=0)


CONFIG = ModelConfig(levels=2, temporal_factor=2, filters=2, enc_dense_layers=2,
                     enc_dense_embed_size=4, action_size=2,
                     cell_options={"stoch_size": 2, "det_size": 3, "hidden_size": 3})


def test_actions_change_the_loss_and_the_open_loop_and_their_weights_learn():
    model = CWVAE.from_config(CONFIG, speed=SpeedConfig(conv_chunk=None), rngs=nnx.Rngs(0))
    videos, actions = generate_pushed_mnist(2, 8)
    frames = jnp.asarray(videos, jnp.float32) / 255
    actions = jnp.asarray(actions)
    key = jax.random.key(1)
    loss = model.loss(frames, key, actions=actions)[0]
    assert float(loss) != float(model.loss(frames, key, actions=-actions)[0])
    # The open loop: the context's actions and the future ones both matter.
    pred = model.open_loop(frames[:, :4], 4, key, actions=actions)
    future = actions.at[:, 4:].set(-actions[:, 4:])
    assert not np.allclose(pred, model.open_loop(frames[:, :4], 4, key, actions=future))
    with pytest.raises(ValueError, match="this model takes actions of size 2"):
        model.loss(frames, key)

    # Gradients reach the rows of level 0's first layer that read the actions, and a
    # training step changes them.
    optimizer = make_optimizer(1e-2)
    graphdef, state = init_train_state(model, optimizer, jax.random.key(2))
    step = make_train_step(graphdef, optimizer, donate=False)
    new, metrics = step(state, videos, actions)
    kernel = lambda s: np.asarray(s.params["hierarchy"]["cells"][0]["prior_in"]["kernel"][...])  # noqa: E731
    reads_actions = slice(-2, None)  # [sample, context from above, actions]
    moved = np.abs(kernel(new) - kernel(state))[reads_actions]
    assert np.isfinite(float(metrics["loss"])) and moved.min() > 0
