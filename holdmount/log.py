"""Logging the systemd way: plain lines on stderr, structured records when stderr is the journal.

Without the journal a line is the message (warnings and errors prefixed `warning:`/`error:`), no
timestamps. Under the journal (JOURNAL_STREAM names our stderr) every line goes to the journal's
native socket as one datagram (systemd's native protocol): PRIORITY, MESSAGE, SYSLOG_IDENTIFIER
and, for the events an operator acts on (`log.event`), a stable MESSAGE_ID and HOLDMOUNT_*
fields a fleet can query. Everything takes one path so the journal keeps the lines in order. If
the socket refuses a datagram the line falls back to stderr with a `<N>` priority prefix.

This module is on the daemon's start path: it imports no `logging`, json, datetime or ctypes
(docs/performance.md says what each costs); `traceback` is imported only for `--debug`.
The MESSAGE_IDs below are fixed for good: docs/journal.md and the catalog file
(packaging/catalog/holdmount.catalog) list them.
"""

from __future__ import annotations

import os
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    EventName = Literal[
        "hold-taken", "hold-failed", "hold-lost", "hold-retaken", "hold-released",
        "marker-armed", "marker-disarmed",
        "action-started", "action-finished", "action-failed", "action-timed-out",
        "stamp-written", "stamp-cleared", "client-refused",
    ]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "holdmount"
DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL = 7, 6, 5, 4, 3, 2
_PREFIX = {WARNING: "warning: ", ERROR: "error: ", CRITICAL: "critical: "}

# event -> (MESSAGE_ID, priority). Never change an id: fleets and the catalog select on it.
EVENTS: dict[str, tuple[str, int]] = {
    "hold-taken": ("f9d400a3867149f0843a43929b67a947", INFO),
    "hold-failed": ("763296cf6c3e4b9a84cd95eb27061f4e", ERROR),
    "hold-lost": ("074e47518ba34fa688edfed3dc4a5f79", WARNING),
    "hold-retaken": ("2598e18c8bb64142abae0784f0e8cc97", INFO),
    "hold-released": ("39b303bf52d24d868ea54c85ce99d20b", INFO),
    "marker-armed": ("f7cdee0c4dd14b5d87ed9b36929da9e9", INFO),
    "marker-disarmed": ("a0ca82c1ce954d8dbccdbcef998b2ba6", INFO),
    "action-started": ("2169a347dfdd496b83099689ea43c2ec", INFO),
    "action-finished": ("d2e07be4be774e5c8002a13b43ec78e6", INFO),
    "action-failed": ("aa8200f520d14c88ad99d7c897dacfdc", ERROR),
    "action-timed-out": ("34ae664b6a3748e18d18ce3ceaf73418", ERROR),
    "stamp-written": ("42232f28d2a54aacbb9e7173ba3791a1", ERROR),
    "stamp-cleared": ("72daf4f85df24b32a06a380262cb0a66", INFO),
    "client-refused": ("7bf1916df53742e4817df037ec18c7ca", WARNING),
}


def stderr_is_journal() -> bool:
    """JOURNAL_STREAM=dev:ino names stderr when systemd connected it to the journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _field(key: str, value: str) -> bytes:
    """KEY=value\\n; a value with a newline takes the binary form KEY\\n<le64 size>value\\n."""
    data = value.encode("utf-8", errors="surrogateescape")
    if b"\n" in data:
        return key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


def encode(priority: int, message: str, fields: dict[str, str]) -> bytes:
    """One native-protocol datagram (systemd's "Native Journal Protocol")."""
    parts = [_field("PRIORITY", str(priority)), _field("SYSLOG_IDENTIFIER", IDENTIFIER),
             _field("MESSAGE", message)]
    parts += [_field(k, v) for k, v in fields.items()]
    return b"".join(parts)


def event_fields(name: str, values: dict[str, object]) -> dict[str, str]:
    """MESSAGE_ID, HOLDMOUNT_EVENT and HOLDMOUNT_<KEY> for each keyword (None left out)."""
    out = {"MESSAGE_ID": EVENTS[name][0], "HOLDMOUNT_EVENT": name}
    for key, value in values.items():
        if value is not None:
            out[f"HOLDMOUNT_{key.upper()}"] = str(value)
    return out


class Logger:
    """The subset of logging.Logger the package uses (%-style arguments), plus `event`."""

    __slots__ = ("_sock", "journal", "level")

    def __init__(self) -> None:
        self.level = INFO
        self.journal = False
        self._sock: socket.socket | None = None

    def setup(self, *, debug: bool = False, journal: bool | None = None) -> None:
        self.level = DEBUG if debug else INFO
        self.journal = stderr_is_journal() if journal is None else journal

    def debug(self, msg: str, *args: object) -> None:
        self._log(DEBUG, msg, args, None)

    def info(self, msg: str, *args: object) -> None:
        self._log(INFO, msg, args, None)

    def warning(self, msg: str, *args: object) -> None:
        self._log(WARNING, msg, args, None)

    def error(self, msg: str, *args: object) -> None:
        self._log(ERROR, msg, args, None)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        import traceback

        self._log(ERROR, msg, args, None)
        self._log(ERROR, traceback.format_exc().rstrip(), (), None, prefix=False)

    def event(self, name: EventName, msg: str, *args: object, **values: object) -> None:
        """An event an operator acts on: the line as usual, plus MESSAGE_ID and HOLDMOUNT_*
        fields (path=... becomes HOLDMOUNT_PATH=...) in the journal."""
        self._log(EVENTS[name][1], msg, args, event_fields(name, values))

    def _log(self, priority: int, msg: str, args: tuple[object, ...],
             fields: dict[str, str] | None, *, prefix: bool = True) -> None:
        if priority > self.level:
            return
        text = msg % args if args else msg
        if self.journal and self._send(encode(priority, text, fields or {})):
            return
        if self.journal:
            line = "\n".join(f"<{priority}>{x}" for x in text.splitlines())
        else:
            line = (_PREFIX.get(priority, "") if prefix else "") + text
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nowhere left to say it

    def _send(self, data: bytes) -> bool:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, JOURNAL_SOCKET)
        except OSError:  # no journald socket, or a datagram too large: stderr instead
            return False
        return True


log = Logger()


def setup(debug: bool = False) -> None:
    log.setup(debug=debug)
