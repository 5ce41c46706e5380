"""Who may open a connection to the control socket (docs/security.md).

Root is never refused. Other uids are refused while the daemon finalizes, past
`[control] connections_per_uid` connections each, past MAX_CONNECTIONS all together, and when
the daemon is out of fds. A refused client gets one reply with a "code" and the connection is
closed. A spare fd (on /dev/null) is kept so that even at EMFILE one client can be accepted —
and refused, or served if root — instead of the listening socket staying readable forever.
"""

from __future__ import annotations

import contextlib
import os
import socket

from holdmount.control.wire import Peer, encode
from holdmount.errors import Exit
from holdmount.log import log

MAX_CONNECTIONS = 256  # from non-root clients, all uids together (root is never refused)
DEFAULT_PER_UID = 16  # connections of one non-root uid at once


class Admission:
    def __init__(self, per_uid: int = DEFAULT_PER_UID) -> None:
        self.per_uid = per_uid
        self.by_uid: dict[int, int] = {}  # open connections per non-root uid
        self.root_only = False  # set while finalizing: only root is served
        self.spare = _open_spare()  # closed to accept (and refuse) one client at EMFILE
        self.refused = 0  # connections refused so far (logged at powers of two)

    def refusal(self, peer: Peer) -> str | None:
        """Why a new connection from `peer` is refused, or None. Root is never refused."""
        if peer.uid == 0:
            return None
        if self.root_only:
            return "the daemon is finalizing: it serves only root now"
        if self.spare < 0:
            return "the daemon is out of file descriptors: try again later"
        mine = self.by_uid.get(peer.uid, 0)
        if mine >= self.per_uid:
            return (f"uid {peer.uid} has {mine} connections open "
                    f"(control.connections_per_uid = {self.per_uid}): close some first")
        if sum(self.by_uid.values()) >= MAX_CONNECTIONS:
            return (f"{MAX_CONNECTIONS} connections from users are open (the daemon's "
                    "limit): try again later")
        return None

    def admitted(self, peer: Peer) -> None:
        if peer.uid != 0:
            self.by_uid[peer.uid] = self.by_uid.get(peer.uid, 0) + 1

    def left(self, peer: Peer) -> None:
        if peer.uid in self.by_uid:
            self.by_uid[peer.uid] -= 1
            if not self.by_uid[peer.uid]:
                del self.by_uid[peer.uid]

    def refuse(self, sock: socket.socket, peer: Peer, why: str) -> None:
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, ...: no log flood
            log.event("client-refused", "control: refused connection %d from pid %d: %s",
                      self.refused, peer.pid, why, pid=peer.pid, uid=peer.uid, status=why)
        _refuse(sock, why)
        self.refill()

    def give_spare(self) -> bool:
        """Close the spare fd to accept one client with it; False when there is none."""
        if self.spare < 0:
            return False
        os.close(self.spare)
        self.spare = -1
        return True

    def refill(self) -> None:
        """Open the spare fd again (after an fd was closed)."""
        if self.spare < 0:
            self.spare = _open_spare()

    def close(self) -> None:
        if self.spare >= 0:
            os.close(self.spare)
            self.spare = -1


def _open_spare() -> int:
    try:
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _refuse(sock: socket.socket, message: str) -> None:
    """Answer a connection we do not serve, then close it: the client reads the refusal as
    the reply to its first request (queued replies outlive the close)."""
    with contextlib.suppress(OSError):
        sock.send(encode({"ok": False, "error": message, "code": int(Exit.TEMPFAIL)}),
                  socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        # discard what it sent (fds too: no room for them): closing a socket with unread
        # data makes the peer's next recv fail with ECONNRESET before it reads our refusal
        while sock.recv(1, socket.MSG_DONTWAIT):  # SEQPACKET: the rest is dropped
            pass
    sock.close()
