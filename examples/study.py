"""The long-horizon study: a 3-level and a 2-level CW-VAE against a 1-level RSSM.

    python examples/study.py all --dir runs/study      # every stage, in order
    python examples/study.py STAGE --dir runs/study    # one stage

Stages (each resumable: a rerun skips what is done and resumes what is not):

- ``train``: trains the three models of :data:`MODELS` with ``examples/train.py``'s
  trainer on one-digit Moving MNIST rendered at 32x32 (``configs/study.yaml``): the same
  data, steps, batch and learning rate, and about the same parameter count, so that only
  the hierarchy differs. Run folders ``<dir>/<model>``.
- ``classifier``: a small conv net that names the digit of a 32x32 frame, trained on
  frames of the shipped train digits and scored on frames of the test digits
  (``<dir>/classifier.npz``).
- ``evaluate``: the evaluator (``examples/eval.py``) on the first ``sequences`` test
  videos: ``context`` frames observed, the next ``horizon`` predicted, PSNR and SSIM
  per predicted frame (``<dir>/eval/<model>``).
- ``ablation``: after the context of a video A, the top level's state is replaced by
  that of another video B (a different digit); the prediction is then scored for whose
  digit it shows (the classifier) and whose position (the centroid of its pixels).
- ``report``: the curves with 95 % confidence bands beside the copy-last-frame
  baseline (``--figure``), the tables as markdown (``--tables``), and
  ``<dir>/study.json``.

``--preset tiny`` shrinks every size for the test suite. What the study found, the
commands and wall times: docs/study.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import checkpointing
import eval as evaluator
import fileio
import interrupts
import run_config
import sources
import train
import trees
from clockwork import data
from clockwork.data.moving_mnist import moving_mnist_plan
from clockwork.metrics import psnr, ssim

STAGES = ("train", "classifier", "evaluate", "ablation", "report")

MODELS: dict[str, dict[str, Any]] = {
    "cwvae3": {},
    "cwvae2": {"levels": 2, "cell_options": {"stoch_size": 16, "det_size": 88, "hidden_size": 88}},
    "rssm": {"levels": 1, "cell_options": {"stoch_size": 16, "det_size": 136, "hidden_size": 136}},
}
"""The study's models as changes to ``configs/study.yaml`` (the 3-level CW-VAE, periods
1, 4, 16); the cells' sizes give each about 373,000 parameters."""

LABELS = {"cwvae3": "CW-VAE, 3 levels", "cwvae2": "CW-VAE, 2 levels", "rssm": "RSSM (1 level)"}


@dataclasses.dataclass(frozen=True)
class Preset:
    """The sizes of a study.

    Attributes:
      overrides: changes to ``configs/study.yaml`` applied to every model.
      model_overrides: further changes per model (replacing :data:`MODELS`' entries).
      sequences: test videos of the evaluation and the ablation.
      context: observed frames (a multiple of every model's top period).
      horizon: predicted frames of the evaluation.
      ablation_horizon: predicted frames scored by the ablation.
      classifier_steps, classifier_batch: the classifier's training.
    """

    overrides: dict[str, Any]
    model_overrides: dict[str, dict[str, Any]]
    sequences: int
    context: int
    horizon: int
    ablation_horizon: int
    classifier_steps: int
    classifier_batch: int


PRESETS = {
    "full": Preset({}, {}, sequences=64, context=32, horizon=512, ablation_horizon=32,
                   classifier_steps=3000, classifier_batch=128),
    "tiny": Preset(
        {"num_steps": 2, "batch_size": 2, "seq_len": 16, "generated_videos": 8, "log_every": 1,
         "ckpt_every": 1, "filters": 2, "enc_dense_embed_size": 8, "eval_seq_len": 48,
         "open_loop_ctx": 16},
        {name: {"cell_options": {"stoch_size": 2, "det_size": 4 + 2 * i, "hidden_size": 4}}
         for i, name in enumerate(MODELS)},
        sequences=3, context=16, horizon=32, ablation_horizon=8, classifier_steps=20,
        classifier_batch=16),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=(*STAGES, "all"))
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("runs/study"),
                        help="the study's folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--figure", type=pathlib.Path,
                        help="where report draws the curves (default <dir>/study_curves.png)")
    parser.add_argument("--tables", type=pathlib.Path,
                        help="where report writes its tables as markdown (default <dir>/tables.md)")
    args = parser.parse_args(argv)
    try:
        study = Study(args.dir, PRESETS[args.preset], args.preset)
    except ValueError as e:
        parser.error(str(e))
    stages = STAGES if args.stage == "all" else (args.stage,)
    try:
        for stage in stages:
            study.run_stage(stage, figure=args.figure, tables=args.tables)
    except (train.NonFiniteLossError, checkpointing.CheckpointError, fileio.WriteError) as e:
        fileio.exit_with(f"error: {e}")
    except interrupts.Interrupted as e:  # the stage's finished parts are kept; rerun to resume
        interrupts.exit_on(e)
    except KeyboardInterrupt:  # a second signal
        fileio.exit_with("interrupted; rerun the same command to resume",
                         128 + interrupts.signal.SIGINT)


class Study:
    """The stages of the study in the folder ``root`` (see the module doc)."""

    def __init__(self, root: pathlib.Path, preset: Preset, preset_name: str = "full"):
        self.root, self.preset = pathlib.Path(root), preset
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "preset.json"
        stored = json.loads(marker.read_text()) if marker.is_file() else None
        if stored is not None and stored != dataclasses.asdict(preset):
            raise ValueError(f"{self.root} holds a study of other sizes ({marker}); use another --dir")
        if stored is None:
            with fileio.replacing(marker) as tmp:
                tmp.write_text(json.dumps(dataclasses.asdict(preset), indent=2) + "\n")
        self.preset_name = preset_name

    # -- the stages -------------------------------------------------------------------

    def run_stage(self, stage: str, figure: pathlib.Path | None = None,
                  tables: pathlib.Path | None = None) -> None:
        """Runs ``stage`` and adds its wall time to ``<dir>/times.json``."""
        print(f"study: {stage}", flush=True)
        with fileio.timed(self.root / "times.json", stage):
            if stage == "report":
                self.report(figure or self.root / "study_curves.png", tables or self.root / "tables.md")
            else:
                getattr(self, stage)()

    def config(self, name: str) -> run_config.RunConfig:
        """The run config of model ``name``."""
        changes = {**MODELS[name], **self.preset.overrides, **self.preset.model_overrides.get(name, {})}
        return run_config.load("study", changes)

    def train(self) -> None:
        for name in MODELS:
            train.train_and_evaluate(self.config(name), self.root / name)

    def classifier(self) -> None:
        path = self.root / "classifier.npz"
        if path.is_file():
            return
        frame_size = self.config("cwvae3").model.frame_size
        params, accuracy = train_classifier(frame_size, self.preset.classifier_steps,
                                            self.preset.classifier_batch)
        trees.save(path, params, {"test_accuracy": accuracy})
        print(f"classifier: {accuracy:.1%} of the test digits' frames named rightly", flush=True)

    def evaluate(self) -> None:
        p = self.preset
        for name in MODELS:
            outdir = self.root / "eval" / name
            if (outdir / "summary.json").is_file():
                continue
            settings = evaluator.EvalSettings(
                open_loop_ctx=p.context, seq_len=p.context + p.horizon, num_examples=p.sequences,
                num_samples=1, num_random=0, save_grid=False, outdir=outdir)
            evaluator.evaluate(self.root / name, settings)

    def ablation(self) -> None:
        path = self.root / "ablation.json"
        if path.is_file():
            return
        classify = load_classifier(self.root / "classifier.npz", self.config("cwvae3").model.frame_size)
        results = {}
        for name in MODELS:
            config = self.config(name)
            model = load_model(self.root / name, config)
            videos, labels = self.test_set(config, self.preset.context + self.preset.ablation_horizon)
            results[name] = swap_top_level(model, videos, labels, self.preset.context, classify)
            print(f"ablation {name}: {json.dumps(results[name])}", flush=True)
        with fileio.replacing(path) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")

    def report(self, figure: pathlib.Path, tables: pathlib.Path) -> None:
        p = self.preset
        curves = {name: np.load(self.root / "eval" / name / "metrics.npz") for name in MODELS}
        config = self.config("cwvae3")
        videos, _ = self.test_set(config, p.context + p.horizon)
        copy_last = copy_last_curves(videos, p.context)
        series = {name: {"psnr": c["psnr"][:, 0], "ssim": c["ssim"][:, 0]} for name, c in curves.items()}
        series["copy_last"] = copy_last
        windows = horizon_windows(p.horizon)
        table = {name: {metric: {f"{a + 1}-{b}": mean_and_ci(s[metric][:, a:b]) for a, b in windows}
                        for metric in ("psnr", "ssim")} for name, s in series.items()}
        summary = {
            "preset": self.preset_name, "sequences": p.sequences, "context": p.context,
            "horizon": p.horizon,
            "parameters": {name: parameter_count(self.config(name)) for name in MODELS},
            "steps": {name: self.config(name).train.num_steps for name in MODELS},
            "table": table,
            "ablation": json.loads((self.root / "ablation.json").read_text()),
            "classifier_test_accuracy": float(np.load(self.root / "classifier.npz")["test_accuracy"]),
            "times_s": json.loads((self.root / "times.json").read_text()),
        }
        with fileio.replacing(self.root / "study.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        plot(figure, series, p.context)
        text = markdown_tables(summary)
        with fileio.replacing(tables) as tmp:
            tmp.write_text(text + "\n")
        print(text, f"wrote {self.root / 'study.json'}, {tables} and {figure}", sep="\n", flush=True)

    def test_set(self, config: run_config.RunConfig, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The evaluator's test videos ``(N, frames, H, W, 1)`` uint8 and their digits'
        classes ``(N,)`` (one digit per video)."""
        cfg = config.train
        videos = sources.test_videos(cfg, config.model, self.preset.sequences, frames)
        stacked = np.stack([videos[i] for i in range(self.preset.sequences)])
        plan = moving_mnist_plan(self.preset.sequences, sources.GENERATED_SEED, "test",
                                      num_digits=cfg.generated_digits,
                                      speed_range=tuple(cfg.generated_speed))
        return stacked, np.asarray(data.mnist_labels("test"), np.int32)[plan.digit_ids[:, 0]]


# -- the digit classifier -------------------------------------------------------------


class DigitClassifier(nnx.Module):
    """Three strided 3x3 convolutions and a linear read-out: ``(B, H, W, 1)`` frames in
    ``[0, 1]`` to ``(B, 10)`` logits."""

    def __init__(self, frame_size: tuple[int, int], *, rngs: nnx.Rngs):
        self.convs = nnx.List([nnx.Conv(i, o, (3, 3), strides=(2, 2), rngs=rngs)
                               for i, o in ((1, 16), (16, 32), (32, 64))])
        h, w = (-(-side // 8) for side in frame_size)
        self.out = nnx.Linear(h * w * 64, 10, rngs=rngs)

    def __call__(self, frames: jax.Array) -> jax.Array:
        x = frames
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.out(x.reshape(x.shape[0], -1))


def digit_frames(count: int, split: str, frame_size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` one-digit frames of the shipped ``split`` digits at random places,
    rendered as the study's videos are, and the digits' classes."""
    videos = data.generate_moving_mnist(count, 1, seed, digit_split=split, num_digits=1)
    frames = sources.block_mean(videos, frame_size)[:, 0]
    plan = moving_mnist_plan(count, seed, split, num_digits=1)
    return frames, np.asarray(data.mnist_labels(split), np.int32)[plan.digit_ids[:, 0]]


def train_classifier(frame_size: tuple[int, int], steps: int, batch: int, seed: int = 0
                     ) -> tuple[nnx.State, float]:
    """The classifier's parameters and its accuracy on frames of the test digits."""
    frames, labels = digit_frames(20_000, "train", frame_size, seed)
    model = DigitClassifier(frame_size, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        grads = jax.grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction, as in training
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    order = np.random.default_rng(seed)
    for _ in range(steps):
        index = order.integers(0, len(frames), batch)
        params, opt_state = step(params, opt_state, data.to_float(frames[index]), labels[index])
    test_frames, test_labels = digit_frames(2000, "test", frame_size, seed + 1)
    classify = _classify_fn(graphdef)
    predicted = np.asarray(classify(params, data.to_float(test_frames)))
    return params, float(np.mean(predicted == test_labels))


def _classify_fn(graphdef: nnx.GraphDef) -> Callable[[nnx.State, jax.Array], jax.Array]:
    return jax.jit(lambda params, x: jnp.argmax(nnx.merge(graphdef, params)(x), axis=-1))


def load_classifier(path: pathlib.Path, frame_size: tuple[int, int]) -> Callable[[jax.Array], np.ndarray]:
    """The stored classifier as a function of ``(B, H, W, 1)`` frames to classes ``(B,)``."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: DigitClassifier(frame_size, rngs=nnx.Rngs(0))))
    params = trees.load(path, abstract)
    classify = _classify_fn(graphdef)
    return lambda frames: np.asarray(classify(params, frames.reshape(-1, *frames.shape[-3:]))
                                     ).reshape(frames.shape[:-3])


# -- the level ablation ---------------------------------------------------------------


def load_model(run: pathlib.Path, config: run_config.RunConfig) -> Any:
    """The latest checkpoint of ``run`` as a model."""
    mgr = checkpointing.manager(run / checkpointing.CHECKPOINT_DIR, read_only=True)
    step = mgr.latest_step()
    if step is None:
        raise ValueError(f"no checkpoint in {mgr.directory}: run the train stage first")
    graphdef, abstract = checkpointing.abstract_state(config)
    params = checkpointing.restore(mgr, step, abstract, config=config)[0].params
    mgr.close()
    return nnx.merge(graphdef, params)


def donors(labels: np.ndarray) -> np.ndarray:
    """For each video, the next one (cyclically) whose digit is of another class."""
    n = len(labels)
    out = np.empty(n, np.int64)
    for i in range(n):
        j = next((i + k) % n for k in range(1, n + 1) if labels[(i + k) % n] != labels[i] or k == n)
        out[i] = j
    return out


def centroids(frames: np.ndarray) -> np.ndarray:
    """The intensity-weighted mean pixel (row, col) of each ``(..., H, W, 1)`` frame."""
    weights = np.clip(frames[..., 0], 0.0, None) + 1e-9  # a blank frame: the centre
    h, w = weights.shape[-2:]
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    total = weights.sum(axis=(-2, -1))
    return np.stack([(weights.sum(-1) * rows).sum(-1) / total,
                     (weights.sum(-2) * cols).sum(-1) / total], axis=-1)



def swap_top_level(model: Any, videos: np.ndarray, labels: np.ndarray, context: int,
                   classify: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Scores predictions whose top level was taken from another video.

    Each video A's context is observed, and so is that of its donor B (:func:`donors`),
    under the same noise; the prediction of A is imagined twice under the same noise:
    from A's own states, and with the top level's state replaced by B's (for a 1-level
    model, all of it). With B = A the two predictions are equal. Each
    predicted frame's digit is named by ``classify`` and its position is the centroid of
    its pixels, compared with A's and B's true frames at the same time.

    Args:
      videos: ``(N, context + H, h, w, 1)`` uint8 test videos, one digit each.
      labels: ``(N,)`` the classes of their digits.
    """
    donor = donors(labels)
    frames = np.asarray(data.to_float(videos))
    horizon = frames.shape[1] - context
    graphdef, params = nnx.split(model)
    own, swapped = _swapped_rollouts(graphdef, params, frames[:, :context],
                                     frames[donor, :context], horizon, jax.random.key(seed))
    own, swapped = (np.clip(np.asarray(x), 0.0, 1.0) for x in (own, swapped))
    truth_a = frames[:, context:]
    truth_b = truth_a[donor]
    label_a, label_b = labels[:, None], labels[donor][:, None]
    own_digit, swapped_digit = classify(own), classify(swapped)
    at_a, at_b = centroids(truth_a), centroids(truth_b)

    def distance(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.linalg.norm(x - y, axis=-1).mean())

    return {
        "pairs": len(labels), "frames": horizon,
        "classifier_on_truth": float(np.mean(classify(truth_a) == label_a)),
        "truth_a_to_b_distance": distance(at_a, at_b),
        "own": {"digit_is_a": float(np.mean(own_digit == label_a)),
                "position_error_to_a": distance(centroids(own), at_a)},
        "swapped": {"digit_is_a": float(np.mean(swapped_digit == label_a)),
                    "digit_is_b": float(np.mean(swapped_digit == label_b)),
                    "position_error_to_a": distance(centroids(swapped), at_a),
                    "position_error_to_b": distance(centroids(swapped), at_b),
                    "digit_is_b_per_frame": np.mean(swapped_digit == label_b, axis=0).round(4).tolist()},
    }


@functools.partial(jax.jit, static_argnums=(0, 4))
def _swapped_rollouts(graphdef, params, context_a, context_b, horizon, key):
    model = nnx.merge(graphdef, params)
    k_obs, k_img = jax.random.split(key)
    hierarchy = model.hierarchy
    a = hierarchy.observe(model.encoder(context_a, chunk=None, remat=False), k_obs).last
    b = hierarchy.observe(model.encoder(context_b, chunk=None, remat=False), k_obs).last
    swapped = (*a[:-1], b[-1])
    own = hierarchy.imagine(a, horizon, k_img)
    other = hierarchy.imagine(swapped, horizon, k_img)
    return model.decode(own.priors[0].feature), model.decode(other.priors[0].feature)


# -- the report -----------------------------------------------------------------------


def copy_last_curves(videos: np.ndarray, context: int) -> dict[str, np.ndarray]:
    """PSNR and SSIM ``(N, H)`` of repeating each video's last context frame (the
    evaluator's ``copy_last`` baseline, per frame)."""
    out: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": []}
    limit = evaluator.psnr_limit(videos.shape[-3:-1])
    for video in videos:
        frames = data.to_float(video[None])
        guess, truth = evaluator.baselines(frames, context)["copy_last"], frames[:, context:]
        out["psnr"].append(np.asarray(psnr(guess, truth, max_db=limit))[0])
        out["ssim"].append(np.asarray(ssim(guess, truth))[0])
    return {k: np.stack(v) for k, v in out.items()}


def horizon_windows(horizon: int) -> list[tuple[int, int]]:
    """The ranges of predicted frames the tables average over: 1-16, 17-128, 129-H."""
    edges = [0, *(e for e in (16, 128) if e < horizon), horizon]
    return list(zip(edges[:-1], edges[1:]))


def mean_and_ci(curves: np.ndarray) -> dict[str, float]:
    """The mean over sequences of each sequence's mean over ``(N, F)``'s frames, and the
    half-width of its 95 % confidence interval (normal approximation, ``1.96 s / sqrt N``)."""
    per_sequence = curves.mean(axis=1)
    half = 1.96 * per_sequence.std(ddof=1) / np.sqrt(len(per_sequence)) if len(per_sequence) > 1 else 0.0
    return {"mean": float(per_sequence.mean()), "ci95": float(half)}


def parameter_count(config: run_config.RunConfig) -> int:
    """The model's parameters, counted on shapes."""
    model = nnx.eval_shape(lambda: checkpointing.build_model(config))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def plot(path: pathlib.Path, series: dict[str, dict[str, np.ndarray]], context: int) -> None:
    """PSNR and SSIM per predicted frame: the mean over sequences and its 95 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    names = {**LABELS, "copy_last": "copy last context frame"}
    for ax, (metric, label) in zip(axes, (("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
        for name, s in series.items():
            curves = s[metric]
            frames = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(axis=0)
            half = 1.96 * curves.std(axis=0, ddof=1) / np.sqrt(len(curves))
            style = {"color": "0.4", "linestyle": "--"} if name == "copy_last" else {}
            ax.plot(frames, mean, label=names[name], linewidth=1.2, **style)
            ax.fill_between(frames, mean - half, mean + half, alpha=0.25, **({"color": "0.4"} if name == "copy_last" else {}))
        ax.set_xlabel(f"predicted frame (after {context} context frames)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    count = len(next(iter(series.values()))["psnr"])
    fig.suptitle(f"Open-loop prediction on {count} test videos: mean and 95 % confidence band")
    fig.tight_layout()
    with fileio.replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def markdown_tables(summary: dict[str, Any]) -> str:
    """The study's tables as markdown: scores per window of frames, and the ablation."""
    names = {**LABELS, "copy_last": "copy last frame"}
    windows = list(next(iter(summary["table"].values()))["psnr"])
    lines = ["| model | parameters | " + " | ".join(f"PSNR {w}" for w in windows) + " | "
             + " | ".join(f"SSIM {w}" for w in windows) + " |",
             "|---" * (2 + 2 * len(windows)) + "|"]
    for name, metrics in summary["table"].items():
        count = summary["parameters"].get(name)
        cells = [f"{metrics['psnr'][w]['mean']:.2f} ± {metrics['psnr'][w]['ci95']:.2f}" for w in windows]
        cells += [f"{metrics['ssim'][w]['mean']:.3f} ± {metrics['ssim'][w]['ci95']:.3f}" for w in windows]
        lines.append(f"| {names[name]} | {'' if count is None else f'{count:,}'} | " + " | ".join(cells) + " |")
    lines += ["", "| model | own: digit of A | own: position error to A | swapped top: digit of A "
              "| swapped top: digit of B | swapped top: position error to A | to B |",
              "|---|---|---|---|---|---|---|"]
    for name, r in summary["ablation"].items():
        own, sw = r["own"], r["swapped"]
        lines.append(f"| {names[name]} | {own['digit_is_a']:.1%} | {own['position_error_to_a']:.2f} px "
                     f"| {sw['digit_is_a']:.1%} | {sw['digit_is_b']:.1%} | "
                     f"{sw['position_error_to_a']:.2f} px | {sw['position_error_to_b']:.2f} px |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
