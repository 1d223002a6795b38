"""``python examples/world_models STAGE --run DIR [--preset NAME]``: see the package doc."""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/

from world_models import collect, memory, vae  # noqa: E402
from world_models.presets import PRESETS  # noqa: E402

STAGES = {
    "collect": lambda run, preset: collect.collect(run, preset.collect),
    "train-vae": lambda run, preset: vae.train_vae(run, preset.vae),
    "encode": lambda run, preset: memory.encode(run, preset.vae),
    "train-mdnrnn": lambda run, preset: memory.train_mdnrnn(run, preset.mdnrnn, preset.vae),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="world_models", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--run", type=pathlib.Path, required=True, help="the run folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    args = parser.parse_args(argv)
    STAGES[args.stage](args.run, PRESETS[args.preset])


if __name__ == "__main__":
    main(sys.argv[1:])
