"""The daemon's signals: handlers that only record, and a wakeup fd for the loop.

A handler never runs daemon code: it appends the signal number, and `signal.set_wakeup_fd` makes
the loop's selector see the pipe readable; the loop then drains the pipe and handles what was
recorded. `__main__` blocks these signals before its imports (so a SIGTERM during start-up is
not lost); entering `Signals` installs the handlers and unblocks them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from types import FrameType

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

TERMINATE = (signal.SIGTERM, signal.SIGINT)
HANDLED = (*TERMINATE, signal.SIGHUP)


class Signals:
    """Handlers that only record; set_wakeup_fd wakes the loop. Restores what it replaced."""

    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = tuple(signums)
        self.pending: list[int] = []
        self.rfd = self.wfd = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def __enter__(self) -> Signals:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        for signum in self.signums:
            self._old_handlers[signum] = signal.signal(signum, self._record)
        # __main__ blocked them before its imports: one that came meanwhile is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums)
        return self

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def drain(self) -> list[int]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.rfd, 4096):
                pass
        got, self.pending = self.pending, []
        return got

    def __exit__(self, *_exc: object) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.rfd)
        os.close(self.wfd)
