"""The control socket: one JSON object per SOCK_SEQPACKET message, daemon side and client side.

Protocol (version 1):

- transport: AF_UNIX SOCK_SEQPACKET at /run/holdmount/control ($HOLDMOUNT_SOCKET overrides it
  for the daemon and for clients). Message boundaries are kept by the kernel; one message is one
  UTF-8 JSON object of at most 64 KiB. A connection may carry any number of requests; each gets
  exactly one reply, in order. The daemon knows each connection's peer from SO_PEERCRED (pid, uid,
  gid at connect time).
- request: {"op": NAME, ...fields}; fds may ride along as SCM_RIGHTS (at most 16 per message).
  A path that is not UTF-8 travels as Python's surrogateescape spells it: each byte that is not
  part of a UTF-8 sequence is the escape \\udc80..\\udcff (os.fsdecode); the daemon turns those
  back into the bytes. No other lone surrogate is a path.
- reply: {"ok": true, ...fields} or {"ok": false, "error": "one line"}, always strict UTF-8
  JSON: in a reply such a byte is written as the four characters \\xNN (for display; the
  client keeps its own copy of the paths it asked for).
- cost: connections per uid (`[control] connections_per_uid`) and idle connections
  (`idle_timeout`) are bounded here, leases and paths per uid by the daemon; a refusal is a
  reply with a "code", then the connection is closed (docs/security.md).
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
import time
from collections.abc import Callable, Mapping, Sequence

from holdmount import __version__
from holdmount.errors import Exit, Failure
from holdmount.log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

    Handler = Callable[["Request"], Mapping[str, Any]]

PROTOCOL = 1
MAX_MESSAGE = 64 * 1024  # a request (what anyone may send us)
MAX_REPLY = 16 * 1024 * 1024  # a reply: `status` with thousands of holds outgrows 64 KiB
MAX_FDS = 16
MAX_CONNECTIONS = 256  # from non-root clients, all uids together (root is never refused)
DEFAULT_PER_UID = 16  # connections of one non-root uid at once
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
        self.deadline: float | None = None  # closed when idle past it (None: no timeout)
        self.pins = 0  # leases tied to it: a connection that holds something is not idle

    def fileno(self) -> int:
        return self.sock.fileno()


@dataclasses.dataclass(frozen=True)
class Request:
    op: str
    body: Mapping[str, Any]
    fds: tuple[int, ...]
    peer: Peer
    connection: Connection



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
    """A reply: strict UTF-8 JSON, whatever strings it holds (see `text`)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a path that is not UTF-8
        return json.dumps(_texts(obj), separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")


def encode_request(obj: Mapping[str, Any]) -> bytes:
    """A request: as `encode`, but a path that is not UTF-8 keeps its bytes (\\udcXX escapes)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def text(value: str) -> str:
    """`value` as valid Unicode: a surrogate-escaped byte becomes the characters \\xNN, any
    other lone surrogate \\uXXXX (display only: not reversible)."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


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
                 group: str | None = None, per_uid: int = DEFAULT_PER_UID,
                 idle_timeout: float | None = None) -> None:
        self.path = path
        self.selector = selector
        self.handlers: dict[str, Handler] = {"ping": self._ping}
        self.connections: dict[int, Connection] = {}
        self.on_disconnect: list[Callable[[Connection], None]] = []
        self.per_uid = per_uid
        self.idle_timeout = idle_timeout
        self.by_uid: dict[int, int] = {}  # open connections per non-root uid
        self.root_only = False  # set while finalizing: only root is served
        self._spare = _open_spare()  # closed to accept (and refuse) one client at EMFILE
        self._paused = False  # not accepting: out of fds, even the spare one
        self.refused = 0  # connections refused so far (logged at powers of two)
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
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1
        with contextlib.suppress(OSError):
            # only our own socket: a successor may have bound a new one meanwhile
            if os.stat(self.path).st_ino == self._bound_ino:
                os.unlink(self.path)

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
            sock = got
            try:
                self._admit(sock)
            except OSError:
                sock.close()

    def _accept_spare(self) -> socket.socket | None:
        """Out of fds: accept one client on the spare fd to refuse it (root is served), or,
        without a spare, stop accepting until a connection closes (no busy loop on EMFILE)."""
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1
            try:
                sock, _ = self.sock.accept()
            except OSError:
                sock = None
            self._spare = _open_spare()
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
        refusal = self._refusal(peer)
        if refusal is not None:
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, ...: no log flood
                log.event("client-refused", "control: refused connection %d from pid %d: %s",
                          self.refused, peer.pid, refusal, pid=peer.pid, uid=peer.uid,
                          status=refusal)
            _refuse(sock, refusal)
            if self._spare < 0:
                self._spare = _open_spare()
            return
        conn = Connection(sock, peer)
        self.connections[conn.id] = conn
        if peer.uid != 0:
            self.by_uid[peer.uid] = self.by_uid.get(peer.uid, 0) + 1
        self._touch(conn)
        self.selector.register(sock, selectors.EVENT_READ,
                               lambda mask, c=conn: self._on_message(c))

    def _refusal(self, peer: Peer) -> str | None:
        """Why a new connection from `peer` is refused, or None. Root is never refused."""
        if peer.uid == 0:
            return None
        if self.root_only:
            return "the daemon is finalizing: it serves only root now"
        if self._spare < 0:
            return "the daemon is out of file descriptors: try again later"
        mine = self.by_uid.get(peer.uid, 0)
        if mine >= self.per_uid:
            return (f"uid {peer.uid} has {mine} connections open "
                    f"(control.connections_per_uid = {self.per_uid}): close some first")
        if sum(self.by_uid.values()) >= MAX_CONNECTIONS:
            return (f"{MAX_CONNECTIONS} connections from users are open (the daemon's "
                    "limit): try again later")
        return None

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

    def _on_message(self, conn: Connection) -> None:
        """One message in, one reply out (or a clean close): nothing here may raise."""
        fds: list[int] = []
        try:
            try:
                data, fds, flags = _recv(conn.sock)
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
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        out_fds: list[int] = list(reply.pop(REPLY_FDS, None) or [])
        try:
            self._send(conn, reply, out_fds)
            self._touch(conn)
        except Exception:
            log.exception("control: reply to pid %d failed", conn.peer.pid)
            self._drop(conn)
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
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                log.exception("control: op %s failed", op)
                return _error(f"internal error: {type(e).__name__}: {e}")
            out = _error(f"{op}: the daemon is out of file descriptors: try again later")
            out["code"] = int(Exit.TEMPFAIL)
            return out
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
        if conn.peer.uid in self.by_uid:
            self.by_uid[conn.peer.uid] -= 1
            if not self.by_uid[conn.peer.uid]:
                del self.by_uid[conn.peer.uid]
        for callback in self.on_disconnect:
            try:
                callback(conn)
            except Exception:
                log.exception("control: disconnect callback failed")
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        if self._spare < 0:
            self._spare = _open_spare()
        if self._paused and self._spare >= 0:
            self._paused = False
            self.selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    @staticmethod
    def _ping(_request: Request) -> Mapping[str, Any]:
        return {"ok": True, "protocol": PROTOCOL, "version": __version__}


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


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
        data = encode_request({"op": op, **fields})
        if len(data) > MAX_MESSAGE:
            raise Failure(f"{op}: request larger than {MAX_MESSAGE} bytes", code=Exit.USAGE)
        try:
            try:
                if fds:
                    self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", fds).tobytes())])
                else:
                    self.sock.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at connect: the daemon's refusal waits to be read
            try:
                reply, received, flags = _recv_blocking(self.sock)
            except ConnectionResetError:  # reported before what is queued: a refusal may be
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
