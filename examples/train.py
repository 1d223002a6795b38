"""Train a Clockwork VAE on Moving MNIST, GQN Mazes or MineRL Navigate.

    python examples/train.py --config demo --logdir runs/demo
    python examples/train.py --config mmnist --logdir runs/mmnist --datadir ~/tfds --seed 1
    python examples/train.py --config mazes --logdir runs/mazes --levels 4 --factors 4,4,4
    python examples/train.py --config demo --logdir runs/gru --cell gru \
        --cell_options "{det_size: 64, hidden_size: 64}"
    python examples/train.py --config demo --logdir runs/mine --imports my_cells --cell mine
    python examples/train.py --config mmnist --logdir runs/mmnist --mesh 8       # 8 devices
    python examples/train.py --config mmnist --logdir gs://b/run --mesh auto --distributed

``--config`` is a file of ``examples/configs/`` (``demo``, ``mmnist``, ``mazes``,
``minerl``) or a YAML path with the sections ``model``, ``loss``, ``optim``, ``speed``,
``train`` and ``eval`` (see ``run_config.py``); every field of every section can be
overridden (``--<field> VALUE``). A cell is a registered name (``rssm``, ``gru``, or one
registered by a module of ``--imports``) or an import path ``module:Factory``.
Running again with the same ``--logdir`` resumes the run from its last checkpoint (and
may leave out ``--config``). The run folder gets ``config.yaml``, ``metrics.jsonl``,
TensorBoard files in ``tb/``, checkpoints in ``checkpoints/`` and open-loop videos in
``videos/``; see docs/examples.md. ``--mesh`` trains data-parallel on several devices and
``--distributed`` on several hosts (one process each); see docs/parallel.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorboardX
from flax import nnx
from tqdm import tqdm

import checkpointing
import fileio
import interrupts
import media
import run_config
import sources
from clockwork import data, parallel
from clockwork.metrics import psnr, ssim
from clockwork.training import (
    TrainState,
    init_train_state,
    make_loss_fn,
    make_optimizer,
    make_train_step,
)
from host import restart_with_hugepage_malloc
from run_config import RunConfig

VIDEO_COLUMNS = 32  # frames per row of the PNG strips
VideoFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; nothing after it was saved."""


def main(argv: Sequence[str] | None = None) -> None:
    config, workdir, launch = _parse(argv)
    if launch.distributed:
        parallel.initialize_distributed(
            launch.coordinator_address, launch.num_processes, launch.process_id
        )
    try:
        train_and_evaluate(config, workdir)
    except (NonFiniteLossError, checkpointing.CheckpointError, fileio.WriteError) as e:
        fileio.exit_with(f"error: {e}")
    except interrupts.Interrupted as e:
        interrupts.exit_on(e)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        fileio.exit_with("interrupted; the checkpoints already written are kept",
                         128 + interrupts.signal.SIGINT)


def parse_args(argv: Sequence[str] | None = None) -> tuple[RunConfig, pathlib.Path]:
    """The resolved config and the run folder; exits with a message on a bad command line."""
    return _parse(argv)[:2]


def _parse(argv: Sequence[str] | None) -> tuple[RunConfig, pathlib.Path, argparse.Namespace]:
    """:func:`parse_args` plus the multi-process launch flags."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        usage="%(prog)s [--config NAME] --logdir DIR [--imports MODULES] [--<field> VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="demo, mmnist, mazes, minerl or a .yaml path "
                        "(default when resuming: the run folder's config.yaml)")
    parser.add_argument("--logdir", required=True, type=pathlib.Path, help="the run folder")
    launch = parser.add_argument_group(
        "multi-process", "jax.distributed.initialize(); unset values come from the "
        "environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or a "
        "TPU VM, SLURM, Open MPI); needs --mesh")
    launch.add_argument("--distributed", action="store_true", help="join a multi-process run")
    launch.add_argument("--coordinator_address", help="host:port of process 0")
    launch.add_argument("--num_processes", type=int, help="processes in the run")
    launch.add_argument("--process_id", type=int, help="this process, 0 .. num_processes-1")
    run_config.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        keys = [u.split("=")[0].lstrip("-") for u in unknown if u.startswith("-")]
        parser.error(run_config.unknown_key_message(keys, "--") if keys
                     else f"unexpected arguments: {' '.join(unknown)}")
    saved = args.logdir / "config.yaml"
    try:
        overrides = run_config.overrides(args)
        if args.config is not None:
            config = run_config.load(args.config, overrides)
        elif saved.is_file():
            config = run_config.build(run_config.read(saved).to_dict(), overrides)
        else:
            parser.error(f"--config is required: {args.logdir} holds no config.yaml to resume")
    except ValueError as e:
        parser.error(str(e))
    given = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id")
             if getattr(args, k) is not None]
    if given and not args.distributed:
        parser.error(f"{', '.join(given)} need(s) --distributed")
    if args.distributed and config.train.mesh is None:
        parser.error("--distributed needs --mesh (e.g. --mesh auto)")
    return config, args.logdir, args


def train_and_evaluate(
    config: RunConfig,
    workdir: str | os.PathLike[str],
    *,
    videos: tuple[data.VideoSource, data.VideoSource] | None = None,
) -> TrainState:
    """Trains (or resumes) the run in ``workdir`` up to ``config.train.num_steps``.

    Args:
      config: the run's configuration.
      workdir: the run folder; a checkpoint in it is resumed.
      videos: ``(train, test)`` videos to use instead of those ``config`` names.

    Returns:
      The final train state.

    Raises:
      ValueError: ``workdir`` holds a run whose settings differ from ``config`` in a
        field that would change the trajectory.
      NonFiniteLossError: a step gave a non-finite loss or gradient norm; the checkpoints
        written before it are kept and nothing after it is saved.
      checkpointing.CheckpointError: every checkpoint in ``workdir`` is damaged, or one
        could not be written (the earlier ones are intact). A damaged newest checkpoint
        is not an error: the run resumes from the newest good one, with a warning.
      fileio.WriteError: a log, config or video file could not be written.
      interrupts.Interrupted: SIGINT or SIGTERM arrived; the run stopped at the next
        step boundary after saving a checkpoint there.

    With ``config.train.mesh`` the step runs data-parallel on that mesh
    (``clockwork.parallel``); in a multi-process run every process calls this, each
    reads its own rows of the global batch, all write the checkpoints together (Orbax)
    and only process 0 writes the config, logs and videos.
    """
    t, speed = config.train, config.speed
    workdir = pathlib.Path(workdir)
    primary = jax.process_index() == 0
    mesh = None if t.mesh is None else parallel.make_mesh(*parallel.parse_mesh(t.mesh))
    if mesh is None and jax.process_count() > 1:
        raise ValueError("a multi-process run needs a mesh (--mesh auto)")
    rows = t.batch_size // jax.process_count()  # this process's rows of the global batch
    if rows * jax.process_count() != t.batch_size:
        raise ValueError(f"batch_size ({t.batch_size}) must be a multiple of the number of "
                         f"processes ({jax.process_count()})")
    if t.video_every and t.video_examples > rows:
        raise ValueError(f"video_examples ({t.video_examples}) must not exceed the rows of "
                         f"each process ({rows})")
    with fileio.reporting(workdir, "the run folder"):
        workdir.mkdir(parents=True, exist_ok=True)
    prepare_workdir(config, workdir, write=primary)
    wandb_run = start_wandb(config, workdir) if t.wandb and primary else None
    train_src, train_actions, val_batch = load_videos(config, videos)
    ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
    mgr = checkpointing.manager(ckpt_dir, keep=t.keep, keep_every=t.keep_every)
    optimizer = make_optimizer(**dataclasses.asdict(config.optim))
    init_key, train_key, video_key = jax.random.split(jax.random.key(t.seed), 3)
    pipeline = data.VideoPipeline(
        train_src, seq_len=t.seq_len, batch_size=rows, seed=t.seed, prefetch=t.prefetch,
        actions=train_actions,
    )
    graphdef, abstract = checkpointing.abstract_state(config)
    sharding = None if mesh is None else parallel.replicated(mesh)
    found = checkpointing.restore_latest(mgr, abstract, sharding, config,
                                         warn=print if primary else lambda _: None)
    pending: list[dict[str, Any]] = []  # metrics on device, fetched when logged
    if found is None:
        last_saved = None
        model = checkpointing.build_model(config, init_key)
        graphdef, state = init_train_state(model, optimizer, train_key)
        del model
        if mesh is not None:
            state = parallel.shard_params(state, mesh)
    else:
        last_saved, state, position = found
        pending = position.pop("window", [])  # steps since the last record, when interrupted
        pipeline.restore(position)
    start = int(parallel.host_local(state.step))
    if primary and start >= t.num_steps:
        print(f"{workdir} has finished its {t.num_steps} steps (raise --num_steps to go on); "
              f"its videos are in {workdir / 'videos'}", flush=True)
    elif primary and start:
        print(f"resuming {workdir} from step {start}", flush=True)

    if mesh is None:
        step_fn = make_train_step(graphdef, optimizer, compute_dtype=speed.compute_dtype)
    else:
        step_fn = parallel.make_sharded_train_step(
            graphdef, optimizer, mesh, compute_dtype=speed.compute_dtype
        )
    video_fn = None
    if val_batch is not None:
        video_fn = make_video_fn(graphdef, config.eval.open_loop_ctx,
                                 compute_dtype=speed.compute_dtype)
    log = MetricLog(workdir, start, wandb_run) if primary else None
    bar = tqdm(total=t.num_steps, initial=start, unit="step", dynamic_ncols=True,
               disable=not (primary and sys.stderr.isatty()))
    throughput = Throughput(t.batch_size * t.seq_len)
    perf: dict[str, float] = {}
    written: list[pathlib.Path] = []
    stop = interrupts.Interrupts()
    try:
        stop.__enter__()
        for step in range(start + 1, t.num_steps + 1):
            batch = next(pipeline)
            state, metrics = step_fn(state, *(batch if isinstance(batch, tuple) else (batch,)))
            pending.append(parallel.host_local(metrics))
            throughput.steps += 1
            bar.update(1)
            if step == start + 1:  # timed apart: it includes the compilation
                jax.block_until_ready(metrics)
                perf["perf/first_step_s"] = throughput.restart()
            final = step == t.num_steps
            if step % t.log_every == 0 or final:
                means = window_means(pending, step, ckpt_dir, last_saved)
                pending = []
                if throughput.steps:
                    perf["perf/frames_per_s"] = throughput.frames_per_s()
                status = progress(means, perf.get("perf/frames_per_s"))
                if log is not None:
                    log.write(step, {**means, **perf})
                    if bar.disable:
                        print(f"step {step}/{t.num_steps}  {status}", flush=True)
                    else:
                        bar.set_postfix_str(status, refresh=True)
                perf = {}
            if video_fn is not None and log is not None and (step % t.video_every == 0 or final):
                key = jax.random.fold_in(video_key, step)
                written = write_videos(video_fn, parallel.host_local(state.params), batch,
                                       val_batch, key, step, workdir / "videos", log)
            if step % t.ckpt_every == 0 or final:
                checkpointing.save(mgr, state, pipeline.state(), config)
                last_saved = step
            if step % t.log_every == 0 or final:
                throughput.restart()  # frames/s leave out logging, videos and checkpoints
            if stop.signum is not None and not final:
                if last_saved != step:
                    if pending:  # the unlogged steps pass the non-finite check first
                        window_means(pending, step, ckpt_dir, last_saved)
                    window = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
                    checkpointing.save(mgr, state, pipeline.state(), config, window)
                raise interrupts.Interrupted(
                    stop.signum, f"{interrupts.name(stop.signum)}: stopped at step {step} of "
                    f"{t.num_steps}, saved in {ckpt_dir / str(step)}; run the same command "
                    "to resume")
    finally:
        stop.__exit__()
        bar.close()
        pipeline.close()
        if log is not None:
            log.close()
        mgr.close()
    if written:
        print("open-loop predictions:", *written, sep="\n  ", flush=True)
    if primary:
        print(f"step {int(parallel.host_local(state.step))} of {t.num_steps}; run folder "
              f"{workdir}", flush=True)
    return state


def load_videos(
    config: RunConfig, videos: tuple[data.VideoSource, data.VideoSource] | None
) -> tuple[data.VideoSource, Any, data.Batch | None]:
    """The training videos, their actions (``None`` without) and the fixed validation
    batch (frames, or frames and actions; ``None`` without videos)."""
    t = config.train
    actions = None
    if videos is None:
        train_src, actions = sources.train_videos(t, config.model)
        val_src = sources.test_videos(t, config.model, t.video_examples, t.seq_len) if t.video_every else None
    else:
        train_src = videos[0]
        val_src = sources.Prefix(videos[1], t.video_examples, t.seq_len) if t.video_every else None
    if val_src is None:
        return train_src, actions, None
    val_batch = np.stack([val_src[i] for i in range(len(val_src))])
    if val_src.actions is not None:
        return train_src, actions, (val_batch, np.stack([val_src.actions[i] for i in range(len(val_src))]))
    return train_src, actions, val_batch


def split_batch(batch: data.Batch) -> tuple[np.ndarray, np.ndarray | None]:
    """``(frames, actions)`` of a pipeline batch; ``actions`` is ``None`` without."""
    return batch if isinstance(batch, tuple) else (batch, None)


class Throughput:
    """Training frames per second since the last restart."""

    def __init__(self, frames_per_step: int):
        self.frames_per_step = frames_per_step
        self.start, self.steps = time.perf_counter(), 0

    def restart(self) -> float:
        """Starts a new window; returns the seconds of the one that ends."""
        now = time.perf_counter()
        elapsed, self.start, self.steps = now - self.start, now, 0
        return elapsed

    def frames_per_s(self) -> float:
        return self.steps * self.frames_per_step / (time.perf_counter() - self.start)


def prepare_workdir(config: RunConfig, workdir: pathlib.Path, *, write: bool = True) -> None:
    """Checks a run already in ``workdir`` against ``config``, then saves ``config``
    (if ``write``: in a multi-process run, process 0 only)."""
    path = workdir / "config.yaml"
    if path.is_file():
        conflicts = run_config.resume_conflicts(run_config.read(path), config)
        if conflicts:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise ValueError(
                f"{workdir} holds a run with other settings ({changes}); resume it with its "
                "own settings or use another --logdir"
            )
    if write:
        run_config.save(config, path)


def window_means(
    pending: list[dict[str, jax.Array]], step: int, ckpt_dir: pathlib.Path, last_saved: int | None
) -> dict[str, float]:
    """Means of the metrics of the steps ending at ``step``; raises if any is not finite."""
    values = jax.device_get(pending)
    first = step - len(values) + 1
    for offset, metrics in enumerate(values):
        bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
        if bad:
            kept = (f"the last good checkpoint is step {last_saved} in {ckpt_dir}"
                    if last_saved is not None else "no checkpoint was written")
            raise NonFiniteLossError(
                f"non-finite values at step {first + offset}: {bad}. Training stopped "
                f"before saving it; {kept}. Start a "
                "new run with a lower --lr or a smaller --grad_clip_norm, or check the data."
            )
    return {
        f"train/{name}": float(np.mean(np.asarray([v[name] for v in values], np.float64)))
        for name in values[0]
    }


def progress(means: dict[str, float], fps: float | None) -> str:
    """``loss 1234.56  kl 1.2 0.3  456 frames/s`` (KL per level, fastest first)."""
    kls = sorted((int(k.rsplit("/", 1)[1]), v) for k, v in means.items() if k.startswith("train/kl/"))
    return (
        f"loss {means['train/loss']:.2f}  kl {' '.join(f'{v:.3g}' for _, v in kls)}"
        + (f"  {fps:.0f} frames/s" if fps is not None else "")
    )


def make_video_fn(graphdef: nnx.GraphDef, ctx: int, *, compute_dtype: str = "float32") -> VideoFn:
    """Jitted ``(params, train_u8, val_u8, key, train_actions=None, val_actions=None) ->
    (uint8 predictions, val metrics)``.

    Observes frames ``..ctx`` of both batches and predicts the rest at once (one
    compilation), given the batches' actions when the model takes them; the validation
    metrics are the ELBO terms (computed as in training, in ``compute_dtype``) and the
    mean PSNR and SSIM of the predictions (clipped to ``[0, 1]``, as the evaluator scores
    them).
    """
    loss_fn = make_loss_fn(graphdef, compute_dtype=compute_dtype)

    @jax.jit
    def video_fn(params, train_u8, val_u8, key, train_actions=None, val_actions=None):
        open_key, loss_key = jax.random.split(key)
        frames = data.to_float(jnp.concatenate([train_u8, val_u8]))
        actions = None
        if val_actions is not None:
            actions = jnp.concatenate([train_actions, val_actions])
        model = nnx.merge(graphdef, params)
        pred = model.open_loop(frames[:, :ctx], frames.shape[1] - ctx, open_key, actions=actions)
        pred = jnp.clip(pred, 0.0, 1.0)
        _, metrics = loss_fn(params, val_u8, loss_key, val_actions)
        val_pred, val_truth = pred[train_u8.shape[0]:], frames[train_u8.shape[0]:, ctx:]
        metrics = dict(
            metrics, psnr=jnp.mean(psnr(val_pred, val_truth)), ssim=jnp.mean(ssim(val_pred, val_truth))
        )
        pred_u8 = jnp.round(pred * 255.0).astype(jnp.uint8)
        return pred_u8, metrics

    return video_fn


def write_videos(
    video_fn: VideoFn, params: Any, batch: data.Batch, val_batch: data.Batch, key: jax.Array,
    step: int, folder: pathlib.Path, log: MetricLog,
) -> list[pathlib.Path]:
    """Open-loop GIF and PNG of a training and a validation batch; logs val metrics."""
    (frames, actions), (val_batch, val_actions) = split_batch(batch), split_batch(val_batch)
    rows = val_batch.shape[0]
    train = frames[:rows]
    train_actions = None if actions is None else actions[:rows]
    pred, metrics = jax.device_get(video_fn(params, train, val_batch, key, train_actions, val_actions))
    log.write(step, {f"val/{k}": float(v) for k, v in metrics.items()})
    with fileio.reporting(folder, "videos into"):
        folder.mkdir(exist_ok=True)
    written = []
    for split, truth, p in (("train", train, pred[: len(train)]),
                            ("val", val_batch, pred[len(train):])):
        stem = folder / f"{split}_step{step:07d}"
        media.save_gif(stem.with_suffix(".gif"), media.open_loop_video(truth, p))
        strip = media.open_loop_strip(truth, p, VIDEO_COLUMNS)
        media.save_png(stem.with_suffix(".png"), strip)
        log.image(f"{split}/open_loop", strip, step)
        written += [stem.with_suffix(".png"), stem.with_suffix(".gif")]
    return written


class MetricLog:
    """Scalars to ``metrics.jsonl`` and TensorBoard (and W&B), consistent across resumes.

    Resuming at step ``start`` drops the records after it from ``metrics.jsonl`` and has
    TensorBoard discard its events after it, so the logs read as one uninterrupted run.
    """

    def __init__(self, workdir: pathlib.Path, start: int, wandb_run: Any = None):
        self.path = workdir / "metrics.jsonl"
        truncate_records(self.path, start)
        with fileio.reporting(self.path, "metrics"):
            self.file = open(self.path, "a")
        self.tb = tensorboardX.SummaryWriter(str(workdir / "tb"), purge_step=start + 1)
        self.wandb = wandb_run

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with fileio.reporting(self.path, "metrics"):
            self.file.write(json.dumps({"step": step, **scalars}) + "\n")
            self.file.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.tb.add_image(tag, media.rgb(image), step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_records(path: pathlib.Path, last_step: int) -> None:
    """Keeps the complete records of ``path`` up to ``last_step`` (rewritten atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the run was killed
            continue
        if record["step"] <= last_step:
            kept.append(line + "\n")
    with fileio.replacing(path) as tmp:
        tmp.write_text("".join(kept))


def start_wandb(config: RunConfig, workdir: pathlib.Path) -> Any:
    """A W&B run resumed across restarts of this run folder (its id is kept in the folder)."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError("wandb: true needs the wandb package (pip install wandb)") from None
    id_path = workdir / "wandb_id.txt"
    if not id_path.exists():
        id_path.write_text(wandb.util.generate_id())
    return wandb.init(
        project=config.train.wandb_project, id=id_path.read_text().strip(), resume="allow",
        dir=str(workdir), config=config.to_dict(),
    )


if __name__ == "__main__":
    restart_with_hugepage_malloc()
    main()
