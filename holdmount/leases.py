"""Delegated holds (docs/delegation.md): the "hold" and "release" ops of the control socket.

Each "hold" request becomes a lease that ends when the client's process exits (its pidfd is in
the daemon's selector), when its connection closes (unless it named a pid to outlive), or on
"release". A path is held once for all leases (a `HeldPath` whose `owners` are lease ids) and
released when the last one ends. A non-root client proves each path with an O_PATH fd and may
hold only what it could open itself (holdmount.authorize); what one uid may pin is bounded by
`[control] leases_per_uid` and `paths_per_uid` (docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Callable, Mapping

from holdmount import authorize, hold, record, syscalls
from holdmount.config import Config
from holdmount.control import REPLY_FDS, Connection, Peer, Request, RequestError, Server
from holdmount.errors import Exit, Failure
from holdmount.held import HeldPath
from holdmount.log import log
from holdmount.mounts import MountTable
from holdmount.paths import normal
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

PID_MAX = 2**22  # the kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit)
MAX_PATHS = 15  # per hold request: one fd per path plus a pidfd fit in control.MAX_FDS
MAX_PATH_LEN = 4096


class Lease(Record, frozen=False):
    """One client's hold request: ends when `pid` exits, `connection` closes, or on release."""

    id: int
    peer: Peer
    pid: int  # whose exit ends the lease (the client, or --until-pid)
    pidfd: int
    connection: Connection | None  # None: outlives the connection (until_pid)
    paths: set[str]
    since: float

    def as_dict(self) -> dict[str, Any]:
        return {"lease": self.id, "pid": self.peer.pid, "uid": self.peer.uid,
                "until": f"pid {self.pid} exits" + ("" if self.connection is None
                                                    else " or its connection closes"),
                "since": self.since}


class HoldRequest(Record):
    """A "hold" request's fields, checked."""

    paths: list[str]
    protect: bool
    path_fds: tuple[int, ...]  # a client's O_PATH proof of each path (empty: none sent)
    want_fds: bool
    until_pid: int | None
    pidfd: int | None  # a pidfd of until_pid the client passed


class Leases:
    """The leases and the paths held for them; `register` puts the ops on a control server."""

    def __init__(self, config: Config, selector: selectors.BaseSelector, *,
                 state: Callable[[], str], configured: Callable[[str], bool],
                 changed: Callable[[], None]) -> None:
        self.control = config.control
        self.timeout = config.daemon.trigger_timeout
        self.selector = selector
        self.state = state  # the daemon's state: new holds only while "running"
        self.configured = configured  # is a path held by the configuration?
        self.changed = changed  # send a fresh STATUS=
        self.leases: dict[int, Lease] = {}
        self.held: dict[str, HeldPath] = {}
        self.server: Server | None = None
        self._next = 1

    def register(self, server: Server) -> None:
        server.register("hold", self._op_hold)
        server.register("release", self._op_release)
        server.on_disconnect.append(self._on_disconnect)
        self.server = server

    # --- hold -----------------------------------------------------------------------------

    def _op_hold(self, req: Request) -> Mapping[str, Any]:
        state = self.state()
        if state != "running":
            raise RequestError(f"the daemon is {state}: no new holds", code=Exit.TEMPFAIL)
        ask = _hold_request(req)
        root = req.peer.uid == 0
        if not root:
            self._check_quota(req.peer.uid, ask.paths)
        pidfd, pid = _lease_pidfd(req, ask.until_pid, ask.pidfd)
        lease = Lease(self._next, req.peer, pid, pidfd,
                      None if ask.until_pid is not None else req.connection, set(), time.time())
        taken: list[str] = []
        try:
            for i, path in enumerate(ask.paths):
                self._claim(path, lease, ask.protect,
                            None if root else ask.path_fds[i] if ask.path_fds else None)
                taken.append(path)
        except BaseException:
            for path in taken:
                self._unclaim(path, lease.id, "request failed")
            os.close(pidfd)
            raise
        self._next += 1
        self.leases[lease.id] = lease
        if lease.connection is not None and self.server is not None:
            self.server.pin(lease.connection, +1)
        self.selector.register(pidfd, selectors.EVENT_READ,
                               lambda _mask, lid=lease.id: self.end(lid, "pid exited"))
        until = lease.as_dict()["until"]
        log.info("lease %d: holding %s for pid %d (uid %d) until %s", lease.id,
                 ", ".join(ask.paths), req.peer.pid, req.peer.uid, until)
        self.changed()
        reply: dict[str, Any] = {"lease": lease.id, "until": until,
                                 "held": [{**self.as_dict(self.held[p]),
                                           "info": self._hold(p).info.as_dict()}
                                          for p in ask.paths]}
        if ask.want_fds:
            reply[REPLY_FDS] = [os.dup(self._hold(p).fd) for p in ask.paths]
        return reply

    def _hold(self, path: str) -> hold.Hold:
        h = self.held[path].hold
        assert h is not None
        return h

    def _check_quota(self, uid: int, paths: list[str]) -> None:
        """Refuse a non-root request past its uid's lease or path ceiling ([control])."""
        control = self.control
        mine = [x for x in self.leases.values() if x.peer.uid == uid]
        if len(mine) >= control.leases_per_uid:
            raise RequestError(f"uid {uid} has {len(mine)} leases (control.leases_per_uid = "
                               f"{control.leases_per_uid}): release some first",
                               code=Exit.TEMPFAIL)
        held = set().union(*(x.paths for x in mine), paths)
        if len(held) > control.paths_per_uid:
            raise RequestError(f"uid {uid} would hold {len(held)} paths (control.paths_per_uid "
                               f"= {control.paths_per_uid}): release some first",
                               code=Exit.TEMPFAIL)

    def _claim(self, path: str, lease: Lease, protect: bool, client_fd: int | None) -> None:
        """Hold `path` for `lease` (authorized first when client_fd is given: non-root)."""
        d = self.held.get(path)
        try:
            was_trigger = client_fd is not None and \
                authorize.check_identity(path, client_fd, MountTable.read())
            new = d is None or d.hold is None
            if new:
                taken = hold.take([path], timeout=self.timeout, protect=protect)[0]
                if d is None:
                    d = HeldPath(path, protect, set(), hold=taken, state=hold.HoldState.HELD)
                    self.held[path] = d
                else:
                    d.took(taken)
        except Failure as e:
            raise RequestError(e.message, code=e.code) from None
        assert d is not None and d.hold is not None
        try:
            self._authorize_and_lock(d, lease.peer, client_fd, was_trigger, protect)
        except BaseException:
            if new and not d.owners:
                self._forget(d, "not authorized")
            raise
        d.owners.add(lease.id)
        lease.paths.add(path)

    @staticmethod
    def _authorize_and_lock(d: HeldPath, peer: Peer, client_fd: int | None,
                            was_trigger: bool, protect: bool) -> None:
        assert d.hold is not None
        try:
            if client_fd is not None:
                if not was_trigger:
                    authorize.check_mounted_root(d.path, client_fd, d.hold.fd)
                authorize.check_may_read(d.path, d.hold.fd, peer)
            if protect and not d.hold.info.protected:
                hold.lock(d.hold.fd, d.path)
                d.hold = hold.Hold(d.hold.fd, record.replace(d.hold.info, protected=True))
                d.protect = True
        except Failure as e:
            raise RequestError(e.message, code=e.code) from None

    # --- release and the end of a lease ---------------------------------------------------

    def _unclaim(self, path: str, lease_id: int, why: str) -> None:
        d = self.held.get(path)
        if d is None:
            return
        d.owners.discard(lease_id)
        if not d.owners:
            self._forget(d, why)

    def _forget(self, d: HeldPath, why: str) -> None:
        if d.hold is not None:
            d.hold.release()
            d.hold = None
            log.info("released delegated hold %s (%s)", d.path, why)
        self.held.pop(d.path, None)

    def end(self, lease_id: int, why: str, *, quiet: bool = False) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(lease.pidfd)
        os.close(lease.pidfd)
        if lease.connection is not None and self.server is not None:
            self.server.pin(lease.connection, -1)
        for path in sorted(lease.paths):
            self._unclaim(path, lease.id, f"lease {lease.id}: {why}")
        log.info("lease %d ended: %s", lease.id, why)
        if not quiet:
            self.changed()

    def end_all(self, why: str) -> None:
        """At the end: no STATUS= per lease (a slow manager would stall each send)."""
        for lease_id in list(self.leases):
            self.end(lease_id, why, quiet=True)
        for d in list(self.held.values()):
            self._forget(d, why)

    def _on_disconnect(self, conn: Connection) -> None:
        for lease in [x for x in self.leases.values() if x.connection is conn]:
            self.end(lease.id, "connection closed")

    def _op_release(self, req: Request) -> Mapping[str, Any]:
        paths = _paths(req.body)
        if req.fds:
            raise RequestError("release takes no fds", code=Exit.USAGE)
        released: list[str] = []
        for path in paths:
            mine = [x for x in self.leases.values() if path in x.paths
                    and (req.peer.uid == 0 or x.peer.uid == req.peer.uid)]
            if not mine:
                raise RequestError(
                    f"release {path}: " + ("held by the configuration, not by a client; "
                                           "it is not released over the socket"
                                           if self.configured(path)
                                           else "no delegated hold of yours on it"),
                    code=Exit.NOINPUT)
            for lease in mine:
                lease.paths.discard(path)
                self._unclaim(path, lease.id, f"released by pid {req.peer.pid}")
                if not lease.paths:
                    self.end(lease.id, "released")
            released.append(path)
        self.changed()
        return {"released": released}

    # --- the mount table and status -------------------------------------------------------

    def items(self) -> list[HeldPath]:
        return list(self.held.values())

    def lost(self, d: HeldPath) -> None:
        assert d.hold is not None
        d.hold.release()
        d.hold = None

    def retake(self, d: HeldPath) -> bool:
        """Take a lost delegated hold again; True when it was (status changed)."""
        try:
            taken = hold.take([d.path], timeout=self.timeout, protect=d.protect)[0]
        except Failure as e:
            d.error = f"lost, and taking it again failed: {e.message}"
            log.event("hold-failed", "hold %s: %s", d.path, d.error, path=d.path,
                      status=d.error)
            return False
        d.took(taken)
        log.event("hold-retaken", "hold %s: taken again", d.path, path=d.path)
        return True

    def as_dict(self, d: HeldPath) -> dict[str, Any]:
        return {**d.fields(), "holders": [self.leases[i].as_dict() for i in sorted(d.owners)
                                          if i in self.leases]}


def _hold_request(req: Request) -> HoldRequest:
    body = req.body
    paths = _paths(body)
    protect = _flag(body, "protect")
    with_fds = _flag(body, "with_fds")
    want_fds = _flag(body, "want_fds")
    until_pid = body.get("until_pid")
    if until_pid is not None and (not isinstance(until_pid, int)
                                  or isinstance(until_pid, bool)
                                  or not 0 < until_pid <= PID_MAX):
        raise RequestError(f'"until_pid" must be a pid (1..{PID_MAX})', code=Exit.USAGE)
    has_pidfd = _flag(body, "pidfd")
    if has_pidfd and until_pid is None:
        raise RequestError('"pidfd" needs "until_pid"', code=Exit.USAGE)
    expected = (len(paths) if with_fds else 0) + (1 if has_pidfd else 0)
    if len(req.fds) != expected:
        raise RequestError(f"expected {expected} fds with this request, got "
                           f"{len(req.fds)}", code=Exit.USAGE)
    if req.peer.uid != 0 and not with_fds:
        raise RequestError(
            "a non-root client must pass an fd of each path (open it O_PATH and send it "
            "with SCM_RIGHTS; `holdmount hold` does)", code=Exit.NOPERM)
    return HoldRequest(paths, protect, req.fds[:len(paths)] if with_fds else (), want_fds,
                       until_pid, req.fds[-1] if has_pidfd else None)


def _lease_pidfd(req: Request, until_pid: int | None, passed: int | None) -> tuple[int, int]:
    if passed is not None:
        assert until_pid is not None
        got = syscalls.pidfd_pid(passed)
        if got != until_pid:
            raise RequestError(f"the pidfd passed is not one of pid {until_pid}"
                               + (f" (it is pid {got})" if got else ""), code=Exit.USAGE)
        return os.dup(passed), until_pid
    pid = until_pid if until_pid is not None else req.peer.pid
    try:
        return os.pidfd_open(pid), pid
    except OSError as e:
        raise RequestError(f"pidfd_open({pid}): {os.strerror(e.errno or 0)}",
                           code=Exit.NOINPUT) from None


def _paths(body: Mapping[str, Any]) -> list[str]:
    paths = body.get("paths")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS:
        raise RequestError(f'"paths" must be a list of 1 to {MAX_PATHS} absolute paths',
                           code=Exit.USAGE)
    out: list[str] = []
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/") or "\0" in p \
                or len(p) > MAX_PATH_LEN:
            raise RequestError(f"not an absolute path: {str(p)[:80]!r}", code=Exit.USAGE)
        try:  # a byte that is not UTF-8 arrives as \udc80..\udcff (control/wire.py): keep it
            p.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise RequestError(f"not a path: {p[:80]!r} has a lone surrogate that stands "
                               "for no byte", code=Exit.DATAERR) from None
        norm = normal(p)
        if norm not in out:
            out.append(norm)
    return out


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f'"{key}" must be true or false', code=Exit.USAGE)
    return value

