"""Passing fds over an AF_UNIX socket (SCM_RIGHTS): the trigger helper's answers, the control
socket's messages and sd_notify's FDSTORE=1 all go through `send` and `recv`.

Not `socket.send_fds`/`socket.recv_fds`: on Python 3.11 they drop their `flags` and `address`
arguments without a word, so MSG_CMSG_CLOEXEC (received fds would leak into the commands we
start), MSG_DONTWAIT|MSG_NOSIGNAL (a client that does not read would block the daemon) and the
notify socket's address would all be lost.
"""

from __future__ import annotations

import array
import socket

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Sequence


def send(sock: socket.socket, data: bytes, fds: Sequence[int] = (), flags: int = 0,
         address: str | None = None) -> int:
    """One message, with `fds` as SCM_RIGHTS when there are any; to `address` when given."""
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
        if fds else []
    if address is None:
        return sock.sendmsg([data], ancdata, flags)
    return sock.sendmsg([data], ancdata, flags, address)


def recv(sock: socket.socket, size: int, max_fds: int,
         flags: int = 0) -> tuple[bytes, list[int], int]:
    """One message of up to `size` bytes and the fds that came with it, always received
    close-on-exec; the returned flags tell truncation (MSG_TRUNC, MSG_CTRUNC)."""
    fds = array.array("i")
    data, ancdata, got_flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(max_fds * fds.itemsize),
                                               socket.MSG_CMSG_CLOEXEC | flags)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), got_flags
