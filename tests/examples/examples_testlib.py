"""Helpers shared by the example programs' tests."""

import json
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

TINY = {
    "levels": 2, "temporal_factor": 2, "filters": 2, "stoch_size": 2, "det_size": 3,
    "hidden_size": 3, "enc_dense_layers": 2, "enc_dense_embed_size": 4, "batch_size": 1,
    "seq_len": 4, "eval_seq_len": 8, "open_loop_ctx": 2, "lr": 1e-3, "dec_stddev": 1.0,
}
"""Model overrides that make any preset compile and run in seconds.

``lr`` and ``dec_stddev`` are XLA constants: with one value for all presets, the presets
with the same number of channels share one compiled training step.
"""


def cli(values: dict) -> list[str]:
    """``{"levels": 2, "factors": (2, 3)}`` -> ``["--levels", "2", "--factors", "2,3"]``."""
    args = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        args += [f"--{key}", text]
    return args


def demo_tiny(**changes) -> dict:
    """The demo preset at test size: the tests that use it compile one training step."""
    return {**TINY, "generated_videos": 8, "video_examples": 1, **changes}


def records(workdir: pathlib.Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
