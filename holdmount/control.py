"""The control socket: one JSON object per SOCK_SEQPACKET message, daemon side and client side.

Protocol (version 1):

- transport: AF_UNIX SOCK_SEQPACKET at /run/holdmount/control ($HOLDMOUNT_SOCKET overrides it
  for the daemon and for clients). Message boundaries are kept by the kernel; one message is one
  UTF-8 JSON object of at most 64 KiB. A connection may carry any number of requests; each gets
  exactly one reply, in order. The daemon knows each connection's peer from SO_PEERCRED (pid, uid,
  gid at connect time).
- request: {"op": NAME, ...fields}; fds may ride along as SCM_RIGHTS (at most 16 per message).
- reply: {"ok": true, ...fields} or {"ok": false, "error": "one line"}.
- ops now: "ping" -> {"ok": true, "protocol": 1, "version": "..."}; "status" -> {"ok": true,
  "status": {...}} (see holdmount.daemon.Daemon.status_dict); "hold" / "release" (delegated
  holds, docs/delegation.md). A refusal may carry "code" (a sysexits number for the client).
- replies may carry fds too (a handler returns them under REPLY_FDS; the server sends and then
  closes them); `Client.call_fds` receives them close-on-exec.

Handlers register by op name (`Server.register`), receive a `Request` (body, fds, peer,
connection) and return the reply fields; raising `RequestError` answers {"ok": false}. The server
closes every fd that arrived with a request after the handler returns: a handler that keeps one
must dup it. `Server.on_disconnect` callbacks run when a connection closes (for holds tied to a
client's connection).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import grp
import json
import os
import selectors
import socket
import stat
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from holdmount import __version__
from holdmount.errors import Exit, Failure
from holdmount.log import log

PROTOCOL = 1
MAX_MESSAGE = 64 * 1024  # a request (what anyone may send us)
MAX_REPLY = 16 * 1024 * 1024  # a reply: `status` with thousands of holds outgrows 64 KiB
MAX_FDS = 16
MAX_CONNECTIONS = 128
CLIENT_TIMEOUT = 60.0  # the daemon answers from its loop; a trigger may hold it up to 30 s
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not in Python 3.11
MAX_GROUPS = 65536
REPLY_FDS = "_fds"  # key of a handler's reply: fds to send with it (the server closes them)


class RequestError(Exception):
    """A request the daemon refuses: becomes {"ok": false, "error": str(e)} (+ "code")."""

    def __init__(self, message: str, *, code: Exit | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups at connect time (SO_PEERGROUPS)


class Connection:
    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.id = sock.fileno()

    def fileno(self) -> int:
        return self.sock.fileno()


@dataclasses.dataclass(frozen=True)
class Request:
    op: str
    body: Mapping[str, Any]
    fds: tuple[int, ...]
    peer: Peer
    connection: Connection


Handler = Callable[[Request], Mapping[str, Any]]


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
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """Parse one message; ValueError with a one-line reason when it is not a JSON object."""
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


def _recv(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One message and its fds (received close-on-exec); flags tell truncation."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4),
                                           socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags


# --- daemon side --------------------------------------------------------------------------------

class Server:
    def __init__(self, path: str, selector: selectors.BaseSelector, *, mode: int = 0o666,
                 group: str | None = None) -> None:
        self.path = path
        self.selector = selector
        self.handlers: dict[str, Handler] = {"ping": self._ping}
        self.connections: dict[int, Connection] = {}
        self.on_disconnect: list[Callable[[Connection], None]] = []
        self.sock = self._bind(path, mode, group)
        self._bound_ino = os.stat(path).st_ino
        selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    def _bind(self, path: str, mode: int, group: str | None) -> socket.socket:
        gid = -1
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise Failure(f"getgrnam({group}): no such group (control.group)",
                              code=Exit.CONFIG) from None
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        except OSError as e:
            raise _os("mkdir", os.path.dirname(path), e) from e
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chown(path, -1, gid)
            os.chmod(path, mode)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise _os("bind", path, e) from e
        return sock

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise Failure(f"bind({path}): exists and is not a socket",
                          hint="remove it or point HOLDMOUNT_SOCKET / control.path elsewhere",
                          code=Exit.CONFIG)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left behind by a daemon that died
            return
        finally:
            probe.close()
        raise Failure(f"bind({path}): another holdmount daemon is listening there",
                      hint="stop it first, or give this one its own HOLDMOUNT_SOCKET",
                      code=Exit.UNAVAILABLE)

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(OSError):
            # only our own socket: a successor may have bound a new one meanwhile
            if os.stat(self.path).st_ino == self._bound_ino:
                os.unlink(self.path)

    def _on_accept(self, _mask: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, keep serving the others
                log.warning("accept(%s): %s", self.path, os.strerror(e.errno or 0))
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                log.event("client-refused", "control: too many connections, refusing one",
                          status="too many connections")
                sock.close()
                continue
            sock.setblocking(False)
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            conn = Connection(sock, peer)
            self.connections[conn.id] = conn
            self.selector.register(sock, selectors.EVENT_READ,
                                   lambda mask, c=conn: self._on_message(c))

    def _on_message(self, conn: Connection) -> None:
        try:
            data, fds, flags = _recv(conn.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        try:
            if not data and not fds:  # EOF (an empty message closes the connection too)
                self._drop(conn)
                return
            reply = dict(self._dispatch(conn, data, fds, flags))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        out_fds: list[int] = list(reply.pop(REPLY_FDS, None) or [])
        try:
            self._send(conn, reply, out_fds)
        finally:
            for fd in out_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _dispatch(self, conn: Connection, data: bytes, fds: Sequence[int],
                  flags: int) -> Mapping[str, Any]:
        if flags & socket.MSG_TRUNC:
            return _error(f"message larger than {MAX_MESSAGE} bytes")
        if flags & socket.MSG_CTRUNC:
            return _error(f"more than {MAX_FDS} fds in one message")
        try:
            body = decode(data)
        except ValueError as e:
            return _error(str(e))
        op = body.get("op")
        if not isinstance(op, str):
            return _error('message has no "op" string')
        handler = self.handlers.get(op)
        if handler is None:
            return _error(f"unknown op {op[:40]!r} (known: {', '.join(sorted(self.handlers))})")
        try:
            reply = dict(handler(Request(op, body, tuple(fds), conn.peer, conn)))
        except RequestError as e:
            if e.code == Exit.NOPERM:
                log.event("client-refused", "control: refused %s from pid %d (uid %d): %s", op,
                          conn.peer.pid, conn.peer.uid, e, op=op, pid=conn.peer.pid,
                          uid=conn.peer.uid, status=str(e))
            out = _error(str(e))
            if e.code is not None:
                out["code"] = int(e.code)
            return out
        except Failure as e:
            return _error(e.message)
        except Exception as e:  # a bug in a handler must not take the daemon down
            log.exception("control: op %s failed", op)
            return _error(f"internal error: {type(e).__name__}: {e}")
        reply.setdefault("ok", True)
        return reply

    def _send(self, conn: Connection, reply: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        data = encode(reply)
        if len(data) > MAX_REPLY:
            data, fds = encode(_error(f"reply larger than {MAX_REPLY} bytes")), ()
        elif len(data) > MAX_MESSAGE:
            _make_room(conn.sock, len(data))
        try:
            if fds:
                conn.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds).tobytes())],
                                  socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            else:
                conn.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:  # peer gone or not reading its replies: drop it
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        for callback in self.on_disconnect:
            try:
                callback(conn)
            except Exception:
                log.exception("control: disconnect callback failed")
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()

    @staticmethod
    def _ping(_request: Request) -> Mapping[str, Any]:
        return {"ok": True, "protocol": PROTOCOL, "version": __version__}


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _os(call: str, path: str, e: OSError) -> Failure:
    return Failure(f"{call}({path}): {os.strerror(e.errno or 0) if e.errno else e}",
                   code=Exit.OSERR if e.errno not in (errno.EACCES, errno.EPERM)
                   else Exit.NOPERM)


# --- client side --------------------------------------------------------------------------------

class Client:
    """A connection to the daemon; use as a context manager. `call` returns the reply dict."""

    def __init__(self, path: str, *, timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise Failure(
                f"connect({path}): {os.strerror(e.errno or 0) if e.errno else e}: the holdmount "
                "daemon is not running",
                hint="start it (systemctl start holdmount.service) or point HOLDMOUNT_SOCKET at "
                "its socket",
                code=Exit.UNAVAILABLE) from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(self, op: str, *, fds: Sequence[int] = (), **fields: Any) -> dict[str, Any]:
        reply, received = self.call_fds(op, fds=fds, **fields)
        for fd in received:
            os.close(fd)
        return reply

    def call_fds(self, op: str, *, fds: Sequence[int] = (),
                 **fields: Any) -> tuple[dict[str, Any], list[int]]:
        """`call`, also returning the fds that came with the reply (close-on-exec; yours)."""
        data = encode({"op": op, **fields})
        if len(data) > MAX_MESSAGE:
            raise Failure(f"{op}: request larger than {MAX_MESSAGE} bytes", code=Exit.USAGE)
        try:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds).tobytes())])
            else:
                self.sock.send(data)
            reply, received, flags = _recv_blocking(self.sock)
        except TimeoutError:
            raise Failure(f"recv({self.path}): the daemon did not answer {op!r} in time",
                          hint="it may be triggering a hung automount; see journalctl -u "
                          "holdmount", code=Exit.TEMPFAIL) from None
        except OSError as e:
            raise Failure(f"send({self.path}): {os.strerror(e.errno or 0)}",
                          code=Exit.UNAVAILABLE) from None
        try:
            if not reply:
                raise Failure(f"recv({self.path}): the daemon closed the connection",
                              code=Exit.UNAVAILABLE)
            if flags & socket.MSG_TRUNC:
                raise Failure(f"recv({self.path}): reply too large", code=Exit.PROTOCOL)
            try:
                return decode(reply), received
            except ValueError as e:
                raise Failure(f"recv({self.path}): {e}", code=Exit.PROTOCOL) from None
        except Failure:
            for fd in received:
                os.close(fd)
            raise


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


def _recv_blocking(sock: socket.socket) -> tuple[bytes, list[int], int]:
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(MAX_REPLY + 1, socket.CMSG_SPACE(MAX_FDS * 4),
                                           socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags


def request(path: str, op: str, **fields: Any) -> dict[str, Any]:
    """One request on a fresh connection; a reply with ok=false becomes a Failure."""
    with Client(path) as client:
        reply = client.call(op, **fields)
    if reply.get("ok") is not True:
        raise refusal(op, reply)
    return reply


def refusal(op: str, reply: Mapping[str, Any]) -> Failure:
    """The Failure for a reply with ok=false (its "code" when the daemon gave a known one)."""
    code = Exit.FAILURE
    with contextlib.suppress(ValueError, TypeError):
        code = Exit(reply.get("code", Exit.FAILURE))
    return Failure(f"{op}: {reply.get('error', 'the daemon refused')}", code=code)
