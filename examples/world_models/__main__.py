"""``python examples/world_models STAGE --run DIR [--preset NAME] [--mode MODE]``.

Stages, in order (``all`` runs them all; each resumes what a killed run left):
collect, train-vae, encode, train-mdnrnn, train-controller, evaluate. Each stage's wall
seconds add up in ``<run>/times.json``. See the package doc and
docs/tutorials/world_models.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/

import fileio  # noqa: E402
from world_models import collect, controller, memory, vae  # noqa: E402
from world_models.presets import PRESETS, Preset  # noqa: E402

TIMES_FILE = "times.json"


def _controllers(run: pathlib.Path, preset: Preset, modes: tuple[str, ...]) -> None:
    for mode in modes:
        with fileio.timed(run / TIMES_FILE, f"train-controller {mode}"):
            controller.train_controller(run, preset, mode)


STAGES: dict[str, Callable[[pathlib.Path, Preset, tuple[str, ...]], object]] = {
    "collect": lambda run, preset, modes: collect.collect(run, preset.collect),
    "train-vae": lambda run, preset, modes: vae.train_vae(run, preset.vae),
    "encode": lambda run, preset, modes: memory.encode(run, preset.vae),
    "train-mdnrnn": lambda run, preset, modes: memory.train_mdnrnn(run, preset.mdnrnn, preset.vae),
    "train-controller": _controllers,
    "evaluate": lambda run, preset, modes: controller.evaluate(run, preset),
}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="world_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--run", type=pathlib.Path, required=True, help="the run folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--mode", choices=(*controller.MODES, "both"), default="both",
                        help="train-controller: in the real environment, in the dream, or both")
    parser.add_argument("--generations", type=_positive, default=None,
                        help="train-controller: CMA-ES generations instead of the preset's "
                             "(a finished run continues to them)")
    args = parser.parse_args(argv)
    modes = controller.MODES if args.mode == "both" else (args.mode,)
    preset = PRESETS[args.preset]
    if args.generations is not None:
        preset = dataclasses.replace(preset, controller=dataclasses.replace(
            preset.controller, generations=args.generations))
    for stage in STAGES if args.stage == "all" else (args.stage,):
        args.run.mkdir(parents=True, exist_ok=True)
        if stage == "train-controller":  # timed per mode
            _controllers(args.run, preset, modes)
        else:
            with fileio.timed(args.run / TIMES_FILE, stage):
                STAGES[stage](args.run, preset, modes)


if __name__ == "__main__":
    main(sys.argv[1:])
