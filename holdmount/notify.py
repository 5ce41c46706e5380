"""sd_notify(3) on the stdlib: READY, STATUS, STOPPING, EXTEND_TIMEOUT_USEC, WATCHDOG, FDSTORE.

The protocol is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named by
$NOTIFY_SOCKET (a leading "@" means the abstract namespace), with fds attached as SCM_RIGHTS for
FDSTORE=1. Unlike the `sdnotify` package, errors are reported (returned and logged), the text is
UTF-8, and fds can be passed. Without $NOTIFY_SOCKET every call is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket

from holdmount import fdpass
from holdmount.log import log

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SEND_TIMEOUT = 5.0  # a service manager that does not drain its socket must not stall our loop
# systemd reads a notify message into a 4096-byte buffer and ignores a message that fills it
# ("Received notify message exceeded maximum size"): a message must stay below this.
MAX_MESSAGE = 4096
ELLIPSIS = "…"


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        addr = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        self.watchdog_usec = _watchdog_usec(environ)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str, fds: Sequence[int] = ()) -> bool:
        if self.address is None:
            return False
        message = _fit(fields)
        if message is None:
            log.warning("sd_notify(%s): message of %d bytes not sent (systemd ignores %d and "
                        "more): %s", self.address.replace("\0", "@"),
                        len("\n".join(fields).encode("utf-8", "surrogateescape")), MAX_MESSAGE,
                        " ".join(f.split("=", 1)[0] for f in fields))
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)
            fdpass.send(self._sock, message, fds, address=self.address)
        except TimeoutError:
            log.warning("sd_notify(%s): not taken within %gs, dropped: %s",
                        self.address.replace("\0", "@"), SEND_TIMEOUT, message[:60])
            return False
        except OSError as e:
            log.warning("sd_notify(%s): %s", self.address.replace("\0", "@"),
                        os.strerror(e.errno or 0) if e.errno else e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start/stop timeout fires (counted from now)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def fdstore(self, fd: int, name: str) -> bool:
        return self.send("FDSTORE=1", f"FDNAME={name}", fds=[fd])

    def fdstore_remove(self, name: str) -> bool:
        return self.send("FDSTOREREMOVE=1", f"FDNAME={name}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, when it is meant for this process (WATCHDOG_PID unset or ours)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _fit(fields: Sequence[str]) -> bytes | None:
    """The datagram for `fields`, below MAX_MESSAGE: a STATUS= that does not fit is cut (with
    an ellipsis) so the fields beside it (READY=1, STOPPING=1) still arrive; None when even
    that is too long."""
    encoded = [f.encode("utf-8", "surrogateescape") for f in fields]
    size = sum(map(len, encoded)) + max(0, len(encoded) - 1)
    if size < MAX_MESSAGE:
        return b"\n".join(encoded)
    excess = size - (MAX_MESSAGE - 1)
    for i, f in enumerate(encoded):
        if f.startswith(b"STATUS="):
            room = len(f) - len(b"STATUS=") - excess - len(ELLIPSIS.encode())
            if room >= 0:
                value = f[len(b"STATUS="):room + len(b"STATUS=")]
                value = value.decode("utf-8", "ignore").encode("utf-8")  # no cut character
                encoded[i] = b"STATUS=" + value + ELLIPSIS.encode()
                return b"\n".join(encoded)
    return None


def _line(text: str) -> str:
    return " ".join(text.split())

