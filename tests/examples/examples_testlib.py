"""Helpers shared by the example programs' tests."""

import json
import pathlib

import yaml

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

TINY_CELL = {"stoch_size": 2, "det_size": 3, "hidden_size": 3}

TINY = {
    "levels": 2, "temporal_factor": 2, "filters": 2, "cell_options": TINY_CELL,
    "enc_dense_layers": 2, "enc_dense_embed_size": 4, "batch_size": 1, "seq_len": 4,
    "eval_seq_len": 8, "open_loop_ctx": 2, "lr": 1e-3, "dec_stddev": 1.0,
}
"""Overrides (of the model, loss, optim, train and eval sections) that make any preset
compile and run in seconds.

``lr`` and ``dec_stddev`` are XLA constants: with one value for all presets, the presets
with the same number of channels share one compiled training step.
"""

DEMO_DATA = {"frame_size": (64, 64), "generated_digits": 2, "generated_speed": (2.0, 5.0)}
"""The frames the tests of the ``demo`` preset read: 64x64 Moving MNIST of the dataset's
kind (the preset itself renders one digit at 32x32, for a demo that learns in minutes)."""


def cli(values: dict) -> list[str]:
    """Command-line overrides: ``{"levels": 2, "factors": (2, 3)}`` -> ``["--levels", "2",
    "--factors", "2,3"]``; mappings (and lists holding them) as YAML flow collections,
    ``{"cell_options": {"stoch_size": 2}}`` -> ``["--cell_options", "{stoch_size: 2}"]``."""
    args = []
    for key, value in values.items():
        if isinstance(value, dict) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value)
        ):
            text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
        elif isinstance(value, (list, tuple)):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        args += [f"--{key}", text]
    return args


def demo_tiny(**changes) -> dict:
    """The demo preset at test size: the tests that use it compile one training step."""
    return {**TINY, **DEMO_DATA, "generated_videos": 8, "video_examples": 1, **changes}


def records(workdir: pathlib.Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
