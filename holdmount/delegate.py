"""The client side of delegated holds: ask the holdmount daemon to hold paths for us.

autofs is not mount-namespace aware: a hold taken inside a private mount namespace does not keep
the host's automount alive, and a process in a namespace made before the mount that then
triggers it hangs. So a client never triggers anything itself: it opens each path `O_PATH`
(never a trigger, no read permission needed on the directory itself) and sends those fds with
the request; the daemon, in the host namespace, compares them with its own view, triggers and
holds the path, and checks that the client's credentials could have opened it
(holdmount.authorize). The lease ends when the client exits, its connection closes, or — with
`until_pid` — when that process exits (the client passes a pidfd of it, so no pid can be
reused under us).

Paths are sent as the bytes they are: one that is not UTF-8 goes as surrogate escapes
(control.encode_request), so `holdmount hold` and `run --delegate` take any path the kernel
does.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence

from holdmount import control
from holdmount.errors import Exit, Failure, os_failure
from holdmount.hold import Hold, HoldInfo
from holdmount.paths import control_socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any


def open_proof(path: str) -> int:
    """An O_PATH fd of `path`: proves we can reach it; never triggers an automount."""
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise os_failure("open", path, e, hint="a delegated hold needs a path this user can "
                         "reach (search permission on every directory above it)"
                         if e.errno in (errno.EACCES, errno.EPERM) else None) from e


class Delegation:
    """One connection to the daemon; the holds asked for on it (without until_pid) end when
    it closes. Use as a context manager."""

    def __init__(self, path: str | None = None) -> None:
        self.path = control_socket(path)
        self.client = control.Client(self.path)

    def __enter__(self) -> Delegation:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def hold(self, paths: Sequence[str], *, protect: bool = False,
             until_pid: int | None = None, want_fds: bool = False) -> tuple[dict[str, Any],
                                                                            list[Hold]]:
        """Ask for holds; returns the reply and (want_fds) a Hold per path whose fd is the
        daemon's held directory (usable from any namespace: work through it, not the path)."""
        abspaths = [os.path.abspath(p) for p in paths]
        fds: list[int] = []
        try:
            for p in abspaths:
                fds.append(open_proof(p))
            fields: dict[str, Any] = {"paths": abspaths, "with_fds": True,
                                      "protect": protect, "want_fds": want_fds}
            if until_pid is not None:
                try:
                    fds.append(os.pidfd_open(until_pid))
                except OSError as e:
                    raise Failure(f"pidfd_open({until_pid}): {os.strerror(e.errno or 0)}",
                                  hint="--until-pid names a running process",
                                  code=Exit.NOINPUT) from None
                fields.update(until_pid=until_pid, pidfd=True)
            reply, received = self.client.call_fds("hold", fds=fds, **fields)
        finally:
            for fd in fds:
                os.close(fd)
        if reply.get("ok") is not True:
            for fd in received:
                os.close(fd)
            raise control.refusal("hold", reply)
        holds: list[Hold] = []
        if want_fds:
            held = reply.get("held", [])
            if len(received) != len(abspaths) or len(held) != len(abspaths):
                for fd in received:
                    os.close(fd)
                raise Failure(f"hold: the daemon sent {len(received)} fds for "
                              f"{len(abspaths)} paths", code=Exit.PROTOCOL)
            holds = [Hold(fd, _info(h, p))
                     for fd, h, p in zip(received, held, abspaths, strict=True)]
        else:
            for fd in received:
                os.close(fd)
        return reply, holds

    def release(self, paths: Sequence[str]) -> dict[str, Any]:
        reply = self.client.call("release", paths=[os.path.abspath(p) for p in paths])
        if reply.get("ok") is not True:
            raise control.refusal("release", reply)
        return reply


def connect(path: str | None, mode: str) -> Delegation | None:
    """For `run --delegate MODE`: a connection, or None when MODE is auto and nobody answers."""
    if mode == "never":
        return None
    try:
        d = Delegation(path)
    except Failure as e:
        if mode == "auto":
            return None
        raise Failure(e.message.replace("the holdmount daemon is not running",
                                        "--delegate always needs the holdmount daemon"),
                      hint="start holdmount.service (or point HOLDMOUNT_SOCKET at its socket), "
                      "or use --delegate auto/never to hold in this process",
                      code=Exit.UNAVAILABLE) from None
    try:
        d.client.call("ping")
    except Failure:
        d.close()
        if mode == "auto":
            return None
        raise
    return d


def _info(h: dict[str, Any], path: str) -> HoldInfo:
    """The daemon's details of a hold; the path is ours (a reply shows a byte that is not
    UTF-8 as \\xNN: control/wire.py)."""
    with contextlib.suppress(TypeError, KeyError):
        return HoldInfo(**{**h["info"], "path": path})
    raise Failure(f"hold: the daemon's reply lacks the hold's details: {str(h)[:80]}",
                  code=Exit.PROTOCOL)
