"""Image grids, GIFs and PNGs of videos and predictions (NumPy and Pillow only).

Frames are ``uint8`` arrays ``(..., H, W, C)`` with ``C`` 1 or 3; grids are RGB.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

import fileio

CONTEXT_COLOUR = (40, 170, 60)  # border of observed frames
PREDICTION_COLOUR = (200, 40, 40)  # border of predicted frames
PLAIN_COLOUR = (80, 80, 80)  # border of true frames and errors
BORDER = 2


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in ``[0, 1]`` to ``uint8``, clipped and rounded."""
    return np.round(np.clip(np.asarray(frames, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb(frames: np.ndarray) -> np.ndarray:
    """``(..., H, W, 1 or 3)`` uint8 to ``(..., H, W, 3)``."""
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def framed(frames: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Frames ``(..., H, W, C)`` as RGB with a ``BORDER``-pixel border of ``colour``."""
    frames = rgb(frames)
    *lead, h, w, c = frames.shape
    out = np.empty((*lead, h + 2 * BORDER, w + 2 * BORDER, c), np.uint8)
    out[...] = np.asarray(colour, np.uint8)
    out[..., BORDER:-BORDER, BORDER:-BORDER, :] = frames
    return out


def tile(tiles: np.ndarray) -> np.ndarray:
    """``(rows, cols, H, W, 3)`` to one image ``(rows * H, cols * W, 3)``."""
    rows, cols, h, w, c = tiles.shape
    return tiles.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def error_frames(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``|pred - truth|`` per pixel, uint8."""
    return np.abs(pred.astype(np.int16) - truth.astype(np.int16)).astype(np.uint8)


def comparison(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Framed truth, model and error rows: ``(3, N, T, H + 2b, W + 2b, 3)`` uint8.

    Args:
      truth: ``(N, T, H, W, C)`` the sequences.
      pred: ``(N, T - ctx, H, W, C)`` the predictions of their last frames.

    The model row shows the observed context framed in green, then the predictions framed
    in red; the error row shows ``|pred - truth|`` (zero on the context).
    """
    ctx = truth.shape[1] - pred.shape[1]
    model = np.concatenate(
        [framed(truth[:, :ctx], CONTEXT_COLOUR), framed(pred, PREDICTION_COLOUR)], axis=1
    )
    error = np.concatenate(
        [np.zeros_like(truth[:, :ctx]), error_frames(truth[:, ctx:], pred)], axis=1
    )
    return np.stack([framed(truth, PLAIN_COLOUR), model, framed(error, PLAIN_COLOUR)])


def open_loop_video(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Video frames ``(T, 3 h, N w, 3)``: the sequences side by side, rows as in :func:`comparison`."""
    rows = comparison(truth, pred)
    return np.stack([tile(rows[:, :, t]) for t in range(rows.shape[2])])


def open_loop_strip(truth: np.ndarray, pred: np.ndarray, max_columns: int = 32) -> np.ndarray:
    """One image: per sequence, rows as in :func:`comparison`; columns are frames at a stride."""
    rows = comparison(truth, pred)
    columns = strip_indices(rows.shape[2], max_columns)
    per_sequence = rows[:, :, columns].transpose(1, 0, 2, 3, 4, 5)  # (N, 3, cols, h, w, 3)
    return tile(per_sequence.reshape(-1, *per_sequence.shape[2:]))


def strip_indices(length: int, max_columns: int) -> np.ndarray:
    """Every ``ceil(length / max_columns)``-th index of ``range(length)``."""
    return np.arange(0, length, max(1, math.ceil(length / max_columns)))


def strips(rows: list[np.ndarray], colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Rows of frames ``(T, H, W, C)`` (equal ``T``) as one image, one row per entry."""
    return tile(np.stack([framed(row, colour) for row, colour in zip(rows, colours, strict=True)]))


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Writes an ``(H, W, 1 or 3)`` uint8 image."""
    with fileio.replacing(path) as tmp:
        Image.fromarray(rgb(image)).save(tmp, format="PNG")


def save_gif(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 10.0) -> None:
    """Writes ``(T, H, W, 1 or 3)`` uint8 frames as a looping GIF."""
    images = [Image.fromarray(frame) for frame in rgb(frames)]
    with fileio.replacing(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
