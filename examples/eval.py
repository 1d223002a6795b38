"""Open-loop evaluation of a trained Clockwork VAE (docs/model.md#open-loop-prediction).

    python examples/eval.py --logdir runs/demo
    python examples/eval.py --logdir runs/mmnist/checkpoints/500000 --num-examples 100 \\
        --num-samples 10 --use-obs TTF

Reads the run's ``config.yaml`` (importing its ``imports`` first, so that the cells it
names resolve), restores a checkpoint, observes the first ``--open-loop-ctx`` frames of
each of the first ``--num-examples`` test videos, predicts the rest of ``--seq-len``
frames ``--num-samples`` times, streamed one top-level period at a time
(``CWVAE.open_loop(..., chunk=...)``), and scores every predicted frame by PSNR and SSIM. Writes to ``--outdir`` (default
``<run>/eval/step<step>-ctx<ctx>-len<T>-obs<flags>-<examples>x<samples>-seed<seed>``,
``-noclip`` appended with ``--no-clip``):

- ``examples/ex<i>.npz``: ``context``, ``truth`` and the kept samples (``sample`` when
  there is one; else ``best_ssim``, ``best_psnr`` and ``random``) as uint8, their indices,
  and the ``psnr`` and ``ssim`` curves of every sample;
- ``examples/ex<i>_context.png`` and ``ex<i>_pred.png``: strips of the context and of the
  truth and kept samples (unless ``--no-save-grid``);
- ``metrics.npz``, ``metrics.csv``, ``psnr.png``, ``ssim.png``: per predicted frame, the
  mean, standard deviation and percentiles over examples of the best sample's metric;
- ``summary.json``: the settings, the mean metrics, those of two baselines on the same
  frames (``copy_last``: the last context frame repeated; ``blank``: black frames) and
  the peak memory.

PSNR is clipped to :func:`psnr_limit` of the frame size (a frame predicted exactly, as
the ``copy_last`` baseline can be when a digit comes back to where it was, would give
``inf`` and make every mean it enters ``inf``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import resource
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import checkpointing
import fileio
import interrupts
import media
import run_config
import sources
from clockwork import Clock, data
from clockwork.hierarchy import parse_use_obs
from clockwork.metrics import best_of_samples, psnr, ssim, summarize_curves
from host import restart_with_hugepage_malloc

GRID_COLUMNS = 50  # most frames per row of the prediction strips
PERCENTILES = (5.0, 50.0, 95.0)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What to evaluate; ``None`` takes the run's value (its config or latest checkpoint)."""

    step: int | None = None
    open_loop_ctx: int | None = None
    seq_len: int | None = None
    use_obs: str | None = None
    num_examples: int = 100
    num_samples: int = 1
    num_random: int = 1
    sample_batch: int = 8
    seed: int = 0
    datadir: str | None = None
    save_grid: bool = True
    clip: bool = True
    outdir: pathlib.Path | None = None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--logdir", required=True, type=pathlib.Path,
                        help="a run folder (its latest checkpoint) or <run>/checkpoints/<step>")
    parser.add_argument("--open-loop-ctx", type=int, help="context frames (default: the config's)")
    parser.add_argument("--seq-len", type=int,
                        help="context + predicted frames (default: the config's eval_seq_len)")
    parser.add_argument("--use-obs", help="observe the context at each level, fastest first, "
                        "e.g. TTF (default: all T)")
    parser.add_argument("--num-examples", type=int, default=100, help="test videos")
    parser.add_argument("--num-samples", type=int, default=1, help="predictions per video")
    parser.add_argument("--num-random", type=int, default=1,
                        help="random samples kept per video besides the best ones")
    parser.add_argument("--sample-batch", type=int, default=8,
                        help="samples predicted at once (memory grows with it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datadir", help="tfds data folder (default: the run's)")
    parser.add_argument("--no-save-grid", action="store_true", help="skip the PNG strips")
    parser.add_argument("--no-clip", action="store_true",
                        help="score the raw decoder means rather than clipped to [0, 1]")
    parser.add_argument("--outdir", type=pathlib.Path, help="output folder")
    args = parser.parse_args(argv)
    settings = EvalSettings(
        open_loop_ctx=args.open_loop_ctx, seq_len=args.seq_len, use_obs=args.use_obs,
        num_examples=args.num_examples, num_samples=args.num_samples,
        num_random=args.num_random, sample_batch=args.sample_batch, seed=args.seed,
        datadir=args.datadir, save_grid=not args.no_save_grid, clip=not args.no_clip,
        outdir=args.outdir,
    )
    try:
        run, step = locate(args.logdir)
        settings = dataclasses.replace(settings, step=step)
        with interrupts.Interrupts() as stop:
            evaluate(run, settings, stop=stop)
    except ValueError as e:
        parser.error(str(e))
    except (checkpointing.CheckpointError, fileio.WriteError) as e:
        fileio.exit_with(f"error: {e}")
    except interrupts.Interrupted as e:
        interrupts.exit_on(e)
    except KeyboardInterrupt:  # a second signal
        fileio.exit_with("interrupted; summary.json was not written",
                         128 + interrupts.signal.SIGINT)


def locate(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
    """``(run folder, checkpoint step or None for the latest)`` of a ``--logdir``."""
    if (path / "config.yaml").is_file():
        return path, None
    if path.name.isdigit() and path.parent.name == checkpointing.CHECKPOINT_DIR:
        run = path.parent.parent
        if (run / "config.yaml").is_file():
            return run, int(path.name)
    raise ValueError(
        f"{path} is neither a run folder (with config.yaml) nor a checkpoint in one "
        f"(<run>/{checkpointing.CHECKPOINT_DIR}/<step>)"
    )


def psnr_limit(frame_size: tuple[int, int]) -> float:
    """The highest PSNR (dB) two different 8-bit frames of ``frame_size`` can have: one
    level of one pixel apart, ``10 log10(255**2 H W)``; exact predictions count as this.

    >>> round(psnr_limit((64, 64)), 2)
    84.25
    """
    height, width = frame_size
    return float(10 * np.log10(255.0**2 * height * width))


def evaluate(
    run: str | pathlib.Path, settings: EvalSettings, *, videos: data.VideoSource | None = None,
    stop: interrupts.Interrupts | None = None,
) -> dict[str, Any]:
    """Evaluates a checkpoint of ``run`` and writes the files listed in the module doc.

    Args:
      run: the run folder.
      settings: what to evaluate.
      videos: test videos to use instead of the run's test split.
      stop: read after each example: once it has caught a signal, the evaluation stops
        with ``interrupts.Interrupted`` (the examples done so far stay written).

    Returns:
      The contents of ``summary.json``.
    """
    started = time.perf_counter()
    run = pathlib.Path(run)
    config = run_config.read(run / "config.yaml")  # imports its modules first
    e = config.eval
    ctx = e.open_loop_ctx if settings.open_loop_ctx is None else settings.open_loop_ctx
    length = e.eval_seq_len if settings.seq_len is None else settings.seq_len
    clock = config.model.clock
    use_obs = settings.use_obs or "T" * clock.levels
    check_settings(settings, clock, ctx, length, use_obs)
    horizon = length - ctx

    mgr = checkpointing.manager(run / checkpointing.CHECKPOINT_DIR, read_only=True)
    step = mgr.latest_step() if settings.step is None else settings.step
    if step is None or step not in mgr.all_steps():
        which = "" if step is None else f" of step {step}"
        raise ValueError(f"no checkpoint{which} in {mgr.directory} (it holds steps "
                         f"{list(mgr.all_steps())})")
    graphdef, abstract = checkpointing.abstract_state(config)
    params = checkpointing.restore(mgr, step, abstract, config=config)[0].params
    mgr.close()
    model = nnx.merge(graphdef, params)

    train_cfg = config.train
    if settings.datadir is not None:
        train_cfg = dataclasses.replace(train_cfg, datadir=settings.datadir)
    if videos is None:
        test = sources.test_videos(train_cfg, config.model, settings.num_examples, length)
    else:
        test = sources.Prefix(videos, settings.num_examples, length)

    outdir = settings.outdir or run / "eval" / (
        f"step{step}-ctx{ctx}-len{length}-obs{use_obs}-"
        f"{settings.num_examples}x{settings.num_samples}-seed{settings.seed}"
        + ("" if settings.clip else "-noclip")
    )
    (outdir / "examples").mkdir(parents=True, exist_ok=True)
    batches = math.ceil(settings.num_samples / settings.sample_batch)
    batch = math.ceil(settings.num_samples / batches)  # fewest samples thrown away
    print(f"evaluating {run} step {step}: {settings.num_examples} examples x "
          f"{settings.num_samples} samples, {ctx} context + {horizon} predicted frames, "
          f"use_obs {use_obs} -> {outdir}", flush=True)

    all_psnr = np.empty((settings.num_examples, settings.num_samples, horizon), np.float32)
    all_ssim = np.empty_like(all_psnr)
    base = {name: np.empty((settings.num_examples, 2, horizon), np.float32) for name in BASELINES}
    root = jax.random.key(settings.seed)
    limit = psnr_limit(test[0].shape[-3:-1])
    for i in range(settings.num_examples):
        video = test[i]
        context = data.to_float(np.broadcast_to(video[:ctx], (batch, *video[:ctx].shape)))
        truth = data.to_float(np.broadcast_to(video[ctx:], (batch, *video[ctx:].shape)))
        actions = None
        if test.actions is not None:
            actions = jnp.broadcast_to(test.actions[i], (batch, *test.actions[i].shape))
        preds = []
        for j in range(batches):
            key = jax.random.fold_in(jax.random.fold_in(root, i), j)
            pred = predict(model, context, horizon, key, use_obs, actions)
            if settings.clip:
                pred = jnp.clip(pred, 0.0, 1.0)
            first, count = j * batch, min(batch, settings.num_samples - j * batch)
            all_psnr[i, first : first + count] = np.asarray(psnr(pred, truth, max_db=limit))[:count]
            all_ssim[i, first : first + count] = np.asarray(ssim(pred, truth))[:count]
            preds.append(media.to_uint8(np.asarray(pred[:count])))
        for name, guess in baselines(data.to_float(video[None]), ctx).items():
            base[name][i] = np.stack([np.asarray(psnr(guess, truth[:1], max_db=limit))[0],
                                      np.asarray(ssim(guess, truth[:1]))[0]])
        write_example(outdir / "examples", i, video, ctx, np.concatenate(preds),
                      all_psnr[i], all_ssim[i], settings)
        print(f"example {i + 1}/{settings.num_examples}: PSNR {all_psnr[i].mean():.2f} "
              f"SSIM {all_ssim[i].mean():.4f}", flush=True)
        if stop is not None and stop.signum is not None and i + 1 < settings.num_examples:
            raise interrupts.Interrupted(
                stop.signum, f"{interrupts.name(stop.signum)}: stopped after example {i + 1} "
                f"of {settings.num_examples}; {outdir / 'examples'} holds those done, "
                "summary.json was not written")

    frames = np.arange(ctx, length)
    summary_curves = write_curves(outdir, frames, all_psnr, all_ssim)
    summary = {
        "run": str(run), "step": step, "open_loop_ctx": ctx, "seq_len": length,
        "use_obs": use_obs, "num_examples": settings.num_examples,
        "num_samples": settings.num_samples, "sample_batch": batch, "seed": settings.seed,
        "clip": settings.clip,
        "psnr": float(summary_curves["psnr_mean"].mean()),
        "ssim": float(summary_curves["ssim_mean"].mean()),
        "baselines": {name: {"psnr": float(v[:, 0].mean()), "ssim": float(v[:, 1].mean())}
                      for name, v in base.items()},
        "seconds": time.perf_counter() - started, **peak_memory(),
    }
    with fileio.replacing(outdir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    memory = ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if k.startswith("peak_"))
    print(f"mean over {horizon} predicted frames: PSNR {summary['psnr']:.2f} dB, SSIM "
          f"{summary['ssim']:.4f}; {memory}; wrote {outdir}", flush=True)
    for name, scores in summary["baselines"].items():
        print(f"  baseline {name:9s}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}",
              flush=True)
    return summary


BASELINES = ("copy_last", "blank")
"""Predictions without a model, scored like the model's: the last context frame
repeated, and black frames."""


def baselines(video: jax.Array, ctx: int) -> dict[str, jax.Array]:
    """Each of :data:`BASELINES` for the frames after ``ctx`` of ``video (1, T, H, W, C)``."""
    horizon = video.shape[1] - ctx
    last = jnp.repeat(video[:, ctx - 1 : ctx], horizon, axis=1)
    return {"copy_last": last, "blank": jnp.zeros_like(last)}


def check_settings(
    settings: EvalSettings, clock: Clock, ctx: int, length: int, use_obs: str
) -> None:
    """Raises ValueError with a message naming the flag at fault."""
    for name in ("num_examples", "num_samples", "sample_batch"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= settings.num_random:
        raise ValueError("--num-random must be non-negative")
    clock.check_top_multiple(ctx, "--open-loop-ctx")
    if length <= ctx:
        raise ValueError(f"--seq-len {length} must exceed --open-loop-ctx {ctx}")
    parse_use_obs(use_obs, clock.levels)


def predict(
    model: Any, context: jax.Array, horizon: int, key: jax.Array, use_obs: str,
    actions: jax.Array | None = None,
) -> jax.Array:
    """``(B, horizon, 64, 64, C)`` open-loop predictions, imagined and decoded one
    top-level period at a time (memory does not grow with the horizon); ``actions (B,
    ctx + horizon, A)`` when the model takes them."""
    chunks = model.open_loop(context, horizon, key, use_obs=use_obs, actions=actions,
                             chunk=model.hierarchy.clock.top_period)
    return jnp.concatenate(list(chunks), axis=1)


def write_example(
    folder: pathlib.Path, index: int, video: np.ndarray, ctx: int, preds: np.ndarray,
    psnr_curves: np.ndarray, ssim_curves: np.ndarray, settings: EvalSettings,
) -> None:
    """NPZ (and PNG strips) of one example: truth and the kept samples ``(S, H, ...)``."""
    arrays: dict[str, np.ndarray] = {
        "context": video[:ctx], "truth": video[ctx:], "psnr": psnr_curves, "ssim": ssim_curves,
    }
    rows = [("truth", video[ctx:], media.PLAIN_COLOUR)]
    if len(preds) == 1:
        arrays["sample"] = preds[0]
        rows.append(("sample", preds[0], media.PREDICTION_COLOUR))
    else:
        for name, curves in (("best_ssim", ssim_curves), ("best_psnr", psnr_curves)):
            best = int(best_of_samples(jnp.asarray(curves))[1])
            arrays[name], arrays[f"{name}_index"] = preds[best], np.asarray(best)
            rows.append((name, preds[best], media.PREDICTION_COLOUR))
        rng = np.random.default_rng([settings.seed, index])
        chosen = np.sort(rng.choice(len(preds), min(settings.num_random, len(preds)), replace=False))
        arrays["random"], arrays["random_index"] = preds[chosen], chosen
        rows += [("random", preds[c], media.PREDICTION_COLOUR) for c in chosen]
    stem = folder / f"ex{index:04d}"
    with fileio.replacing(stem.with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    if settings.save_grid:
        media.save_png(f"{stem}_context.png", media.strips([video[:ctx]], [media.CONTEXT_COLOUR]))
        columns = media.strip_indices(len(video) - ctx, GRID_COLUMNS)
        image = media.strips([r[columns] for _, r, _ in rows], [c for _, _, c in rows])
        media.save_png(f"{stem}_pred.png", image)


def write_curves(
    outdir: pathlib.Path, frames: np.ndarray, all_psnr: np.ndarray, all_ssim: np.ndarray
) -> dict[str, np.ndarray]:
    """Best-of-samples curves, their summaries over examples: NPZ, CSV and two plots."""
    arrays: dict[str, np.ndarray] = {"frame": frames, "psnr": all_psnr, "ssim": all_ssim}
    for name, values in (("psnr", all_psnr), ("ssim", all_ssim)):
        best, index = best_of_samples(jnp.asarray(values))
        arrays[f"{name}_best"], arrays[f"{name}_best_index"] = np.asarray(best), np.asarray(index)
        for stat, curve in summarize_curves(best, PERCENTILES).items():
            arrays[f"{name}_{stat}"] = np.asarray(curve)
    with fileio.replacing(outdir / "metrics.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    stats = ["mean", "std"] + [f"p{q:g}" for q in PERCENTILES]
    columns = [f"{name}_{stat}" for name in ("psnr", "ssim") for stat in stats]
    with fileio.replacing(outdir / "metrics.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["frame", *columns])
            for t, frame in enumerate(frames):
                writer.writerow([int(frame), *(f"{float(arrays[c][t]):.6g}" for c in columns)])
    for name, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
        plot_curve(outdir / f"{name}.png", frames, arrays, name, label, len(all_psnr))
    return arrays


def plot_curve(
    path: pathlib.Path, frames: np.ndarray, arrays: dict[str, np.ndarray], name: str,
    label: str, examples: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.fill_between(frames, arrays[f"{name}_p5"], arrays[f"{name}_p95"], alpha=0.2,
                    label="5th-95th percentile")
    mean, std = arrays[f"{name}_mean"], arrays[f"{name}_std"]
    ax.fill_between(frames, mean - std, mean + std, alpha=0.3, label="mean ± std")
    ax.plot(frames, mean, label="mean")
    ax.set_xlabel("frame")
    ax.set_ylabel(label)
    ax.set_title(f"{label} of the best sample, over {examples} examples")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with fileio.replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on accelerators, of the device (GiB)."""
    peak = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak["peak_device_gib"] = stats["peak_bytes_in_use"] / 2**30
    return peak


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
