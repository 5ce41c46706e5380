"""The daemon side of the control socket: connections, ops by name, one error boundary.

Handlers register by op name (`Server.register`), receive a `Request` (body, fds, peer,
connection) and return the reply fields; raising `RequestError` answers {"ok": false} (with its
"code"). Nothing a client sends and no bug in a handler takes the daemon down: `_answer` turns
every exception into a refusal (a bug is logged with its traceback), and `_on_message` closes a
connection whose message cannot be read or whose reply cannot be sent. The server closes every
fd that arrived with a request after the handler returns: a handler that keeps one must dup it.
`on_disconnect` callbacks run when a connection closes (for holds tied to a connection).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Mapping, Sequence

from holdmount import __version__, fdpass
from holdmount.control import listen
from holdmount.control.admission import DEFAULT_PER_UID, Admission
from holdmount.control.wire import (
    MAX_FDS,
    MAX_MESSAGE,
    MAX_REPLY,
    PROTOCOL,
    REPLY_FDS,
    Peer,
    RequestError,
    decode,
    encode,
    error,
    peer_of,
    recv,
)
from holdmount.errors import Exit, Failure
from holdmount.log import log
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

    Handler = Callable[["Request"], Mapping[str, Any]]

_SEND = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class Connection:
    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.id = sock.fileno()
        self.deadline: float | None = None  # closed when idle past it (None: no timeout)
        self.pins = 0  # leases tied to it: a connection that holds something is not idle

    def fileno(self) -> int:
        return self.sock.fileno()


class Request(Record):
    op: str
    body: Mapping[str, Any]
    fds: tuple[int, ...]
    peer: Peer
    connection: Connection


class Server:
    def __init__(self, path: str, selector: selectors.BaseSelector, *, mode: int = 0o666,
                 group: str | None = None, per_uid: int = DEFAULT_PER_UID,
                 idle_timeout: float | None = None) -> None:
        self.path = path
        self.selector = selector
        self.handlers: dict[str, Handler] = {"ping": self._ping}
        self.connections: dict[int, Connection] = {}
        self.on_disconnect: list[Callable[[Connection], None]] = []
        self.idle_timeout = idle_timeout
        self.admission = Admission(per_uid)
        self._paused = False  # not accepting: out of fds, even the spare one
        self.sock = listen.bind(path, mode, group)
        self._bound_ino = os.stat(path).st_ino
        selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
        self.admission.close()
        listen.unlink_own(self.path, self._bound_ino)

    # --- connections ----------------------------------------------------------------------

    def _on_accept(self, _mask: int) -> None:
        while not self._paused:
            got: socket.socket | None
            try:
                got, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    log.warning("accept(%s): %s", self.path, os.strerror(e.errno or 0))
                    return
                got = self._accept_spare()
            if got is None:
                return
            try:
                self._admit(got)
            except OSError:
                got.close()

    def _accept_spare(self) -> socket.socket | None:
        """Out of fds: accept one client on the spare fd to refuse it (root is served), or,
        without a spare, stop accepting until a connection closes (no busy loop on EMFILE)."""
        if self.admission.give_spare():
            try:
                sock: socket.socket | None = self.sock.accept()[0]
            except OSError:
                sock = None
            self.admission.refill()
            if sock is not None:
                return sock
        log.warning("accept(%s): out of file descriptors: not accepting until a client "
                    "disconnects", self.path)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self._paused = True
        return None

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        peer = peer_of(sock)
        refusal = self.admission.refusal(peer)
        if refusal is not None:
            self.admission.refuse(sock, peer, refusal)
            return
        conn = Connection(sock, peer)
        self.connections[conn.id] = conn
        self.admission.admitted(peer)
        self._touch(conn)
        self.selector.register(sock, selectors.EVENT_READ,
                               lambda mask, c=conn: self._on_message(c))

    def _touch(self, conn: Connection) -> None:
        if self.idle_timeout is not None:
            conn.deadline = time.monotonic() + self.idle_timeout

    def next_deadline(self) -> float | None:
        """When the first idle connection is to be closed; None without any (no wakeups)."""
        deadlines = [c.deadline for c in self.connections.values()
                     if c.deadline is not None and not c.pins]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> None:
        """Close the connections idle past their deadline (none hold a lease)."""
        for conn in [c for c in self.connections.values()
                     if c.deadline is not None and not c.pins and c.deadline <= now]:
            log.info("control: closing an idle connection of pid %d (uid %d) after %gs",
                     conn.peer.pid, conn.peer.uid, self.idle_timeout or 0)
            self._drop(conn)

    def pin(self, conn: Connection, delta: int) -> None:
        """A lease tied to `conn` began (+1) or ended (-1); the idle clock restarts at 0."""
        conn.pins = max(0, conn.pins + delta)
        self._touch(conn)

    def _drop(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        self.admission.left(conn.peer)
        for callback in self.on_disconnect:
            try:
                callback(conn)
            except Exception:
                log.exception("control: disconnect callback failed")
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        self.admission.refill()
        if self._paused and self.admission.spare >= 0:
            self._paused = False
            self.selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    # --- messages -------------------------------------------------------------------------

    def _on_message(self, conn: Connection) -> None:
        """One message in, one reply out (or a clean close): nothing here may raise."""
        fds: list[int] = []
        try:
            try:
                data, fds, flags = recv(conn.sock, MAX_MESSAGE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data and not fds:  # EOF (an empty message closes the connection too)
                self._drop(conn)
                return
            reply = dict(self._dispatch(conn, data, fds, flags))
        except Exception as e:  # OSError from recv (peer gone), or a bug: close, log a bug
            if not isinstance(e, OSError):
                log.exception("control: message from pid %d failed", conn.peer.pid)
            self._drop(conn)
            return
        finally:
            _close_all(fds)
        out_fds: list[int] = list(reply.pop(REPLY_FDS, None) or [])
        try:
            self._send(conn, reply, out_fds)
            self._touch(conn)
        except Exception:
            log.exception("control: reply to pid %d failed", conn.peer.pid)
            self._drop(conn)
        finally:
            _close_all(out_fds)

    def _dispatch(self, conn: Connection, data: bytes, fds: Sequence[int],
                  flags: int) -> Mapping[str, Any]:
        if flags & socket.MSG_TRUNC:
            return error(f"message larger than {MAX_MESSAGE} bytes")
        if flags & socket.MSG_CTRUNC:
            return error(f"more than {MAX_FDS} fds in one message")
        try:
            body = decode(data)
        except ValueError as e:
            return error(str(e))
        op = body.get("op")
        if not isinstance(op, str):
            return error('message has no "op" string')
        handler = self.handlers.get(op)
        if handler is None:
            return error(f"unknown op {op[:40]!r} (known: {', '.join(sorted(self.handlers))})")
        return self._answer(handler, Request(op, body, tuple(fds), conn.peer, conn))

    @staticmethod
    def _answer(handler: Handler, req: Request) -> Mapping[str, Any]:
        """The error boundary: whatever the handler raises becomes a refusal."""
        op, peer = req.op, req.peer
        try:
            reply = dict(handler(req))
        except RequestError as e:
            if e.code == Exit.NOPERM:
                log.event("client-refused", "control: refused %s from pid %d (uid %d): %s", op,
                          peer.pid, peer.uid, e, op=op, pid=peer.pid, uid=peer.uid,
                          status=str(e))
            out = error(str(e))
            if e.code is not None:
                out["code"] = int(e.code)
            return out
        except Failure as e:
            return error(e.message)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                log.exception("control: op %s failed", op)
                return error(f"internal error: {type(e).__name__}: {e}")
            out = error(f"{op}: the daemon is out of file descriptors: try again later")
            out["code"] = int(Exit.TEMPFAIL)
            return out
        except Exception as e:  # a bug in a handler must not take the daemon down
            log.exception("control: op %s failed", op)
            return error(f"internal error: {type(e).__name__}: {e}")
        reply.setdefault("ok", True)
        return reply

    def _send(self, conn: Connection, reply: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        data = encode(reply)
        if len(data) > MAX_REPLY:
            data, fds = encode(error(f"reply larger than {MAX_REPLY} bytes")), ()
        elif len(data) > MAX_MESSAGE:
            _make_room(conn.sock, len(data))
        try:
            fdpass.send(conn.sock, data, fds, _SEND)
        except OSError:  # peer gone or not reading its replies: drop it
            self._drop(conn)

    @staticmethod
    def _ping(_request: Request) -> Mapping[str, Any]:
        return {"ok": True, "protocol": PROTOCOL, "version": __version__}


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _make_room(sock: socket.socket, size: int) -> None:
    """A SOCK_SEQPACKET message must fit the sender's buffer whole: grow it for a big reply
    (root may exceed net.core.wmem_max with SO_SNDBUFFORCE)."""
    want = 2 * size + 65536
    for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, want)
            return
        except OSError:
            continue
