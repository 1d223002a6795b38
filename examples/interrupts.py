"""Stopping a program cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop).

Inside :class:`Interrupts` the first signal only sets ``signum``, which the program reads
at a point where it can stop cleanly (the trainer: at the next step boundary, after
saving a checkpoint); a second signal stops at once, with ``KeyboardInterrupt``.
:class:`Interrupted` carries the signal out to ``main``, which prints one line and exits
with the conventional status ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import fileio

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The program stopped on ``signum``; ``message`` says what was kept."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupts:
    """Context manager: SIGINT and SIGTERM set ``signum`` instead of stopping the program.

    A signal the process ignores (``nohup`` and background jobs ignore SIGINT) stays
    ignored. Outside the main thread (where Python cannot install handlers) it does
    nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``."""
    return signal.Signals(signum).name


def exit_on(error: Interrupted) -> None:
    """Prints ``error``'s one line to stderr and exits with its status."""
    fileio.exit_with(error.message, error.exit_code)
