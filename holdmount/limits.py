"""What one client may cost the daemon, and the fds that no client can take.

The control socket is open to every local user (mode 0666 by default), so every resource a
request can pin is bounded per uid (docs/security.md): connections, leases and the paths those
leases hold. Root and the configured holds are never counted.

The finalize must run whatever clients did: the daemon raises its RLIMIT_NOFILE soft limit to
the hard one at start, and keeps a reserve of fds open on /dev/null. Clients can use fds only up
to the reserve (the kernel then says EMFILE and the request is refused cleanly); at SIGTERM the
reserve is closed so the staged holds can be taken and the actions run (pipes, pidfds, exec).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

RESERVE_BASE = 32  # fds kept for the finalize: an action needs ~6 (pipes, pidfd, exec)
RESERVE_PER_HOLD = 1  # and each staged hold (taken at SIGTERM if missing) its fd; the trigger
# helper's socket for the batch is in the base. Holds held from boot are open already.


_original_nofile: tuple[int, int] | None = None  # before raise_nofile raised it


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one; returns the (soft, hard) now in force."""
    global _original_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            _original_nofile = (soft, hard)
            soft = hard
    return soft, hard


def original_nofile() -> tuple[int, int] | None:
    """The RLIMIT_NOFILE this process started with, when raise_nofile changed it (a child
    gets it back: holdmount.spawn); None when it did not."""
    return _original_nofile


class FdReserve:
    """`size` fds held open on /dev/null, so that no client can use the last ones."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fds: list[int] = []
        self.refill()

    def refill(self) -> None:
        while len(self.fds) < self.size:
            try:
                self.fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def release(self) -> None:
        """For good (the finalize): every reserved fd is free again."""
        self.size = 0
        while self.fds:
            os.close(self.fds.pop())

    @contextlib.contextmanager
    def lent(self, count: int | None = None) -> Iterator[None]:
        """Free `count` (default: all) reserved fds for the block, take them back after."""
        for _ in range(len(self.fds) if count is None else min(count, len(self.fds))):
            os.close(self.fds.pop())
        try:
            yield
        finally:
            self.refill()
