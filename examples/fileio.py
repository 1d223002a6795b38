"""File writes that are atomic and fail in one line.

A run killed mid-write leaves the old file or none, never half of one; a write that fails
(a full disk, an unwritable folder) raises :class:`WriteError`, whose message names the
path and the reason, and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator


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
