"""File writes that are atomic and fail in one line.

A run killed mid-write leaves the old file or none, never half of one; a write that fails
(a full disk, an unwritable folder) raises :class:`WriteError`, whose message names the
path and the reason, and leaves the old file as it was.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import NoReturn


def exit_with(message: str, status: int = 1) -> NoReturn:
    """Prints ``message`` on stderr and exits with ``status``, the line staying last.

    What other threads print while Python shuts down is dropped: after a failed
    checkpoint write TensorStore's threads may still call back into Orbax's closed event
    loop and print ``RuntimeError: Event loop is closed``, which would bury the one line.
    (The shutdown's first exit handler points stderr at the null device; a caller that
    catches the ``SystemExit`` keeps its stderr until its own exit.)
    """
    print(message, file=sys.stderr, flush=True)
    atexit.unregister(_drop_late_output)  # registered once, to run first at shutdown
    atexit.register(_drop_late_output)
    sys.exit(status)


def _drop_late_output() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


class WriteError(OSError):
    """A file could not be written; ``str()`` is one line naming the path and why."""


@contextlib.contextmanager
def reporting(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turns an ``OSError`` inside the block into a :class:`WriteError` naming ``path``.

    >>> try:
    ...     with reporting("/nonexistent/dir/metrics.jsonl", "metrics"):
    ...         open("/nonexistent/dir/metrics.jsonl", "w")
    ... except WriteError as e:
    ...     print(e)
    could not write metrics /nonexistent/dir/metrics.jsonl: No such file or directory
    """
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        label = f"{what} " if what else ""
        error = WriteError(f"could not write {label}{path}: {e.strerror or e}")
        error.errno = e.errno
        raise error from e


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """A temporary path beside ``path`` that is renamed over ``path`` when the block succeeds.

    >>> import tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with replacing(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with reporting(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def timed(path: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Adds the block's wall seconds to ``name`` in the JSON file ``path`` (written with
    :func:`replacing`; a resumed stage adds its own, one stopped by an error nothing)."""
    started = time.perf_counter()
    yield
    path = pathlib.Path(path)
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[name] = round(times.get(name, 0.0) + time.perf_counter() - started, 1)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(times, indent=2) + "\n")
