"""The demo: train the ``demo`` preset from scratch, then score its open-loop predictions.

    python examples/demo.py --logdir runs/demo [--picture docs/demo_prediction.png]

Trains (or resumes) ``examples/train.py --config demo`` in ``--logdir``, then runs the
evaluator on the first ``--num-examples`` validation sequences: ``--open-loop-ctx``
context frames observed, the next ``--predict`` frames predicted (one sample each). It
prints the model's mean PSNR and SSIM over the predicted frames beside two predictions
without a model on the same frames (the last context frame repeated, and black frames),
writes the three pairs into ``<logdir>/demo_summary.json`` and draws the first few
sequences (truth above, prediction below, context framed in green, predictions in red)
into ``--picture`` (default ``<logdir>/demo_prediction.png``). What the preset is and
how it was chosen: docs/examples.md#the-demo.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import eval as evaluator
import fileio
import media
import train

PICTURE_EXAMPLES = 4  # sequences drawn in the picture
PICTURE_SCALE = 2  # pixels per frame pixel in the picture


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=pathlib.Path, default=pathlib.Path("runs/demo"))
    parser.add_argument("--picture", type=pathlib.Path, help="where to draw the predictions "
                        "(default: <logdir>/demo_prediction.png)")
    parser.add_argument("--num-examples", type=int, default=32, help="validation sequences")
    parser.add_argument("--open-loop-ctx", type=int, default=16, help="context frames")
    parser.add_argument("--predict", type=int, default=16, help="predicted frames")
    args, overrides = parser.parse_known_args(argv)
    train.main(["--config", "demo", "--logdir", str(args.logdir), *overrides])
    settings = evaluator.EvalSettings(
        open_loop_ctx=args.open_loop_ctx, seq_len=args.open_loop_ctx + args.predict,
        num_examples=args.num_examples, num_samples=1, outdir=args.logdir / "eval" / "demo",
    )
    try:
        summary = evaluator.evaluate(args.logdir, settings)
    except ValueError as e:
        parser.error(str(e))
    result = scores(summary)
    with fileio.replacing(args.logdir / "demo_summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    picture = args.picture or args.logdir / "demo_prediction.png"
    media.save_png(picture, draw(settings.outdir / "examples",
                                 min(PICTURE_EXAMPLES, args.num_examples)))
    print(report(result), f"wrote {args.logdir / 'demo_summary.json'} and {picture}",
          sep="\n", flush=True)


def scores(summary: dict[str, Any]) -> dict[str, Any]:
    """The model's and the baselines' mean PSNR and SSIM, with what they were taken over."""
    base = summary["baselines"]
    return {
        "step": summary["step"], "sequences": summary["num_examples"],
        "context_frames": summary["open_loop_ctx"],
        "predicted_frames": summary["seq_len"] - summary["open_loop_ctx"],
        "model": {"psnr": summary["psnr"], "ssim": summary["ssim"]},
        "copy_last_frame": base["copy_last"], "blank_frame": base["blank"],
    }


def report(result: dict[str, Any]) -> str:
    """The three pairs as a small table, and whether the model beats both baselines."""
    rows = [("model", result["model"]), ("copy last frame", result["copy_last_frame"]),
            ("blank frame", result["blank_frame"])]
    lines = [f"open-loop prediction after {result['step']} steps: the first "
             f"{result['predicted_frames']} predicted frames of {result['sequences']} validation "
             f"sequences ({result['context_frames']} context frames)",
             f"  {'':16s} {'PSNR (dB)':>9s} {'SSIM':>7s}"]
    lines += [f"  {name:16s} {s['psnr']:9.2f} {s['ssim']:7.4f}" for name, s in rows]
    beats = all(result["model"][m] > result[b][m] for m in ("psnr", "ssim")
                for b in ("copy_last_frame", "blank_frame"))
    lines.append("  the model beats both baselines on both scores" if beats else
                 "  the model does not beat both baselines on both scores")
    return "\n".join(lines)


def draw(examples: pathlib.Path, count: int) -> np.ndarray:
    """Per sequence, two rows: the truth (context, then the true future) and the model
    (the same context framed in green, then its predictions framed in red)."""
    rows, colours = [], []
    for i in range(count):
        with np.load(examples / f"ex{i:04d}.npz") as ex:
            context, truth, sample = ex["context"], ex["truth"], ex["sample"]
        rows.append(np.concatenate([media.framed(context, media.PLAIN_COLOUR),
                                    media.framed(truth, media.PLAIN_COLOUR)]))
        rows.append(np.concatenate([media.framed(context, media.CONTEXT_COLOUR),
                                    media.framed(sample, media.PREDICTION_COLOUR)]))
    image = media.tile(np.stack(rows))
    return image.repeat(PICTURE_SCALE, axis=0).repeat(PICTURE_SCALE, axis=1)


if __name__ == "__main__":
    main(sys.argv[1:])
