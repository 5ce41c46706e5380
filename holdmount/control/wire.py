"""The control socket's wire format: one JSON object per SOCK_SEQPACKET message, fds alongside.

Shared by both sides (holdmount.control.server, holdmount.control.client): the limits of a
message, the peer's credentials, JSON in and out, and one message with its fds in and out.

`json` (with the `re` it imports, ~1.2 MiB) is imported by the first message, not with this
module: a daemon nobody asks anything never loads it (P2 in docs/performance.md). It is the
standard library's, so a holdmount upgrade under a running daemon cannot change it.
"""

from __future__ import annotations

import array
import errno
import socket
import struct
from collections.abc import Mapping

from holdmount import fdpass
from holdmount.errors import Exit
from holdmount.paths import text
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

PROTOCOL = 1
MAX_MESSAGE = 64 * 1024  # a request (what anyone may send us)
MAX_REPLY = 16 * 1024 * 1024  # a reply: `status` with thousands of holds outgrows 64 KiB
MAX_FDS = 16
REPLY_FDS = "_fds"  # key of a handler's reply: fds to send with it (the server closes them)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not in Python 3.11
MAX_GROUPS = 65536


class RequestError(Exception):
    """A request the daemon refuses: becomes {"ok": false, "error": str(e)} (+ "code")."""

    def __init__(self, message: str, *, code: Exit | None = None) -> None:
        super().__init__(message)
        self.code = code


class Peer(Record):
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups at connect time (SO_PEERGROUPS)


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    return Peer(pid, uid, gid, peer_groups(sock))


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups as the kernel recorded them at connect time."""
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE and size < MAX_GROUPS * 4:
                size *= 4
                continue
            return ()
        groups = array.array("I")
        groups.frombytes(raw[: len(raw) - len(raw) % 4])
        return tuple(groups)


def encode(obj: Mapping[str, Any]) -> bytes:
    """A reply: strict UTF-8 JSON, whatever strings it holds (`paths.text`)."""
    import json

    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a path that is not UTF-8
        return json.dumps(_texts(obj), separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")


def encode_request(obj: Mapping[str, Any]) -> bytes:
    """A request: as `encode`, but a path that is not UTF-8 keeps its bytes (\\udcXX escapes)."""
    import json

    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _texts(obj: Any) -> Any:
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, Mapping):
        return {_texts(k): _texts(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_texts(v) for v in obj]
    return obj


def decode(data: bytes) -> dict[str, Any]:
    """Parse one message; ValueError with a one-line reason when it is not a JSON object."""
    import json

    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"message is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"message is not JSON: {e.msg} at {e.pos}") from None
    except RecursionError:
        raise ValueError("message nests too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("message must be a JSON object")
    return obj


def recv(sock: socket.socket, size: int, flags: int = 0) -> tuple[bytes, list[int], int]:
    """One message of up to `size` bytes and its fds (received close-on-exec); the returned
    flags tell truncation."""
    return fdpass.recv(sock, size + 1, MAX_FDS, flags)


def error(message: str) -> dict[str, Any]:
    """A refusal's reply."""
    return {"ok": False, "error": message}
