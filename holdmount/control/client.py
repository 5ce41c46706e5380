"""The client side of the control socket: `Client` (a connection), `request` (one call)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, Sequence

from holdmount import fdpass
from holdmount.control.wire import MAX_MESSAGE, MAX_REPLY, decode, encode_request, recv
from holdmount.errors import Exit, Failure

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

CLIENT_TIMEOUT = 60.0  # the daemon answers from its loop; a trigger may hold it up to 30 s


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
                fdpass.send(self.sock, data, fds)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at connect: the daemon's refusal waits to be read
            try:
                reply, received, flags = recv(self.sock, MAX_REPLY)
            except ConnectionResetError:  # reported before what is queued: a refusal may be
                reply, received, flags = recv(self.sock, MAX_REPLY)
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
