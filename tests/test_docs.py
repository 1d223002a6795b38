"""The documentation's code runs: each page's ``python`` blocks run in order in one
namespace, and a block followed by a plain block must print exactly that text."""

import contextlib
import io
import pathlib
import re

import jax

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks(page: str) -> list[tuple[str, str | None]]:
    """``(code, expected output or None)`` for each python block of ``page``."""
    found = [(m.group(1), m.group(2), m.end(), m.start()) for m in BLOCK.finditer(page)]
    out = []
    for i, (lang, text, end, _) in enumerate(found):
        if lang != "python":
            continue
        following = found[i + 1] if i + 1 < len(found) else None
        expected = None
        if following and following[0] == "" and page[end:following[3]].strip() == "":
            expected = following[1]
        out.append((text, expected))
    return out


def run_page(name: str, min_blocks: int, xla_flags: tuple[str, str] | None = None) -> None:
    """Runs the page's python blocks in one namespace; each printed output must match.

    The pages run under JAX's default (standard) dtype promotion, as a reader's code
    does, not under the suite's strict one (optax's Adam, for one, needs standard).
    ``xla_flags=(old, new)``: a page that sets ``XLA_FLAGS`` itself gets ``new`` for
    ``old`` (the suite's compile options, see conftest.py)."""
    text = (DOCS / name).read_text()
    if xla_flags is not None:
        assert xla_flags[0] in text, f"{name} no longer sets {xla_flags[0]}"
        text = text.replace(xla_flags[0], xla_flags[1])
    code = blocks(text)
    assert len(code) >= min_blocks
    namespace: dict = {"__name__": "docs_example"}
    for i, (text, expected) in enumerate(code):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), jax.numpy_dtype_promotion("standard"):
            exec(compile(text, f"{name} block {i}", "exec"), namespace)  # noqa: S102
        if expected is not None:
            assert printed.getvalue() == expected, f"{name} block {i}"


def test_write_your_own_cell_page_runs(clean_registry):
    run_page("write_your_own_cell.md", 5)


def test_own_video_page_runs():
    run_page("own_videos.md", 6)


def test_tutorial_hierarchy_in_your_model_runs():
    run_page("tutorials/hierarchy_in_your_model.md", 4)


def test_tutorial_cells_and_factors_runs():
    run_page("tutorials/cells_and_factors.md", 4)


def test_getting_started_page_runs():
    run_page("getting_started.md", 1)


def test_concepts_page_runs():
    run_page("concepts.md", 8)


def test_parallel_tutorial_runs_on_four_fake_devices():
    # The page sets XLA_FLAGS before JAX starts; in this process JAX has started, so the
    # page runs in a fresh interpreter (through run_page, with its output checks), the
    # suite's compile options added to the page's flag.
    import os
    import subprocess
    import sys

    page_flag = "--xla_force_host_platform_device_count=4"
    with_suite = f"{page_flag} {os.environ.get('XLA_FLAGS', '')}".strip()
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import test_docs; "
              "test_docs.run_page('parallel.md', 2, xla_flags=tuple(sys.argv[2:]))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", script, str(pathlib.Path(__file__).parent),
                           page_flag, with_suite], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
