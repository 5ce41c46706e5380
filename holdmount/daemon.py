"""`holdmount daemon`: hold mounts, watch the marker, finalize on SIGTERM while still holding.

One loop (`Daemon.loop`) sleeps in one selector over every event source: the signal wakeup fd,
the marker's inotify fd, the control socket and its connections, and while finalizing the
running action's pidfd and output pipe. The only timeouts are the running action's deadline and,
when systemd asked for one (WATCHDOG_USEC), the watchdog: idle, the daemon never wakes up.

Signal handlers only record the signal; `signal.set_wakeup_fd` wakes the loop, which does the
work. SIGTERM (or SIGINT) starts the finalize exactly once: STOPPING=1, the marker checked on the
filesystem *now*, the staged holds taken if they are missing, the actions run in order, holds
kept until the last action ends, then released; later SIGTERMs are logged and ignored.

Delegated holds (docs/delegation.md): clients ask over the control socket ("hold"/"release");
each request becomes a lease that ends when the client's process exits (its pidfd is in the
selector), when its connection closes (unless it named a pid to outlive), or on "release". A
path is held once for all leases and released when the last one ends; config holds keep their
own fd, so neither kind releases what the other still wants.

Every held fd of a config hold goes to the service manager's fd store (FDSTORE=1); after a
crash and restart they come back as LISTEN_FDS and are adopted, verified, before READY.
The mount table is watched (POLLPRI on mountinfo): a held mount that is detached or covered is
logged, shown in status, and a lost hold is taken again when the path can be mounted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import selectors
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType

from holdmount import __version__, authorize, fdstore, hold, limits, record, syscalls
from holdmount.config import ActionConfig, Config, HoldConfig, When
from holdmount.control import REPLY_FDS, Connection, Peer, Request, RequestError, Server
from holdmount.errors import Exit, Failure, die
from holdmount.finalize import Finalizer, Result, clear_stamp, read_stamp, write_stamp
from holdmount.hold import HoldState
from holdmount.log import log
from holdmount.marker import MarkerWatch
from holdmount.mounts import MountTable, MountWatcher
from holdmount.notify import Notifier

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

PID_MAX = 2**22  # the kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit)

TERMINATE = (signal.SIGTERM, signal.SIGINT)
MAX_PATHS = 15  # per hold request: one fd per path plus a pidfd fit in control.MAX_FDS
MAX_PATH_LEN = 4096
HANDLED = (*TERMINATE, signal.SIGHUP)
SUMMARY_PATHS = 3  # paths named in STATUS= per list
SUMMARY_PATH_LEN = 200  # characters of each


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FINALIZING = "finalizing"
    DONE = "done"


class Signals:
    """Handlers that only record; set_wakeup_fd wakes the loop. Restores what it replaced."""

    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = tuple(signums)
        self.pending: list[int] = []
        self.rfd = self.wfd = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def __enter__(self) -> Signals:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        for signum in self.signums:
            self._old_handlers[signum] = signal.signal(signum, self._record)
        # __main__ blocked them before its imports: one that came meanwhile is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums)
        return self

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def drain(self) -> list[int]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.rfd, 4096):
                pass
        got, self.pending = self.pending, []
        return got

    def __exit__(self, *_exc: object) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.rfd)
        os.close(self.wfd)


def _hold_fields(h: hold.Hold | None) -> dict[str, Any]:
    if h is None:
        return {}
    info = h.info
    return {"fstype": info.fstype, "source": info.source, "mount_point": info.mount_point,
            "automount": info.automount, "since": info.since, "protected": info.protected,
            "resolved": info.resolved}


@dataclasses.dataclass
class HeldPath:
    config: HoldConfig
    hold: hold.Hold | None = None
    error: str | None = None
    state: HoldState | None = None  # from the mount table; LOST also while not held again
    lost_mount: str | None = None  # the mount point it was lost from (to take it again)
    adopted: bool = False

    @property
    def path(self) -> str:
        return self.config.path

    @property
    def fdname(self) -> str:
        return fdstore.name_for(self.config.path)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.config.path, "when": str(self.config.when),
                             "protect": self.config.protect, "held": self.hold is not None,
                             "error": self.error,
                             "state": str(self.state) if self.state else None,
                             "adopted": self.adopted}
        d.update(_hold_fields(self.hold))
        return d


@dataclasses.dataclass
class Lease:
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


@dataclasses.dataclass
class Delegated:
    """A path held for clients: one fd, however many leases want it."""

    path: str
    hold: hold.Hold | None
    leases: set[int]
    error: str | None = None
    state: HoldState | None = HoldState.HELD
    lost_mount: str | None = None
    protect: bool = False


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.notifier = notifier or Notifier(environ)
        self.environ = environ
        self.selector = selectors.DefaultSelector()
        self.signals = Signals(HANDLED)
        self.holds = [HeldPath(h) for h in config.holds]
        self.marker: MarkerWatch | None = None
        self.server: Server | None = None
        self.finalizer = Finalizer(self.selector, self.notifier, self._finished, environ)
        self.state = State.STARTING
        self.exit_code = int(Exit.OK)
        self.results: dict[str, Result] = {}
        self.previous = read_stamp(config.daemon.stamp) if os.path.exists(
            config.daemon.stamp) else None
        self.host_ns = syscalls.in_host_mount_ns()
        self.skipped: dict[str, str] = {}
        self.watchdog_interval = (self.notifier.watchdog_usec / 2e6
                                  if self.notifier.watchdog_usec else None)
        self.next_watchdog: float | None = None
        self.watcher: MountWatcher | None = None
        self.leases: dict[int, Lease] = {}
        self.delegated: dict[str, Delegated] = {}
        self._next_lease = 1
        self.stored: dict[str, fdstore.Stored] = {}  # handed back by the service manager
        self.reserve: limits.FdReserve | None = None  # fds no client can take (finalize's)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        with self.signals, contextlib.ExitStack() as cleanup:
            cleanup.callback(self._cleanup)
            limits.raise_nofile()
            self.reserve = limits.FdReserve(limits.RESERVE_BASE
                                            + limits.RESERVE_PER_HOLD * len(self.holds))
            self.selector.register(self.signals.rfd, selectors.EVENT_READ, self._on_signal)
            self.start()
            return self.loop()

    def loop(self) -> int:
        """Sleep until an event source is readable; idle, nothing here has a timeout."""
        while self.state is not State.DONE:
            for key, mask in self.selector.select(self._timeout()):
                self._event(key.data, mask)
            now = time.monotonic()
            if self.server is not None:
                self.server.expire(now)
            self.finalizer.timer(now)
            if self.next_watchdog is not None and now >= self.next_watchdog:
                self.notifier.watchdog()
                self.next_watchdog = now + (self.watchdog_interval or 0)
        return self.exit_code

    def _event(self, callback: Any, mask: int) -> None:
        """One event source's callback; a bug in one must not end the loop (the finalize
        still has to run): it is logged with its traceback and the loop goes on."""
        try:
            callback(mask)
        except Exception:
            log.exception("event handler %s failed", getattr(callback, "__name__", callback))

    def _timeout(self) -> float | None:
        idle = self.server.next_deadline() if self.server is not None else None
        deadlines = [d for d in (self.finalizer.deadline(), self.next_watchdog, idle)
                     if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    # --- start ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.host_ns is not True and not self.config.daemon.allow_foreign_namespace:
            die("setns: this process is not in PID 1's mount namespace"
                if self.host_ns is False else
                "stat(/proc/1/ns/mnt): cannot tell whether this is PID 1's mount namespace",
                hint="autofs is not namespace-aware: a hold from here does not keep the host's "
                "automount alive. Run the daemon in the host namespace (no PrivateTmp=, "
                "ProtectSystem=, ... in its unit), or pass --allow-foreign-namespace",
                code=Exit.CONFIG)
        control = self.config.control
        self.server = Server(self.config.socket_path(self.environ), self.selector,
                             mode=control.mode, group=control.group,
                             per_uid=control.connections_per_uid,
                             idle_timeout=control.idle_timeout)
        self.server.register("status", lambda _req: {"status": self.status_dict()})
        self._register_ops(self.server)
        self._collect_stored()
        if self.config.marker is not None:
            self.marker = MarkerWatch(self.config.marker.path)
            self.selector.register(self.marker.fileno(), selectors.EVENT_READ, self._on_marker)
        self._take_all([h for h in self.holds if h.config.when is When.ALWAYS], fatal=True)
        if self.marker is not None and self.marker.armed:
            self._arm()
        self._drop_stored()
        self.watcher = MountWatcher()
        self.selector.register(self.watcher.fileno(), selectors.EVENT_READ, self._on_mounts)
        if self.watchdog_interval:
            self.next_watchdog = time.monotonic() + self.watchdog_interval
        self.state = State.RUNNING
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary())

    def _register_ops(self, server: Server) -> None:
        """Ops beyond status: delegated holds (hold/release, fds by SCM_RIGHTS)."""
        server.register("hold", self._op_hold)
        server.register("release", self._op_release)
        server.on_disconnect.append(self._on_disconnect)

    def _take(self, h: HeldPath) -> None:
        self._take_all([h], fatal=False)

    def _take_all(self, holds: list[HeldPath], *, fatal: bool) -> None:
        """Take `holds` together: fds from the fd store adopted first, then the rest in one
        `hold.take_each` per protect value (one helper process opens them all, one mount-table
        read). Each failure is recorded on its hold (status shows it) and logged; one bad path
        does not keep the others from being held. With `fatal` (the `always` holds at start),
        any failure ends the start instead: every path is tried and every failure logged, the
        fresh holds are closed unstored, and the first failure in config order is raised."""
        table: MountTable | None = None
        todo: list[HeldPath] = []
        for h in holds:
            stored = self._stored_for(h)
            if stored is not None:
                table = table or MountTable.read()
                if self._adopt(h, stored, table):
                    continue
            todo.append(h)
        results: dict[int, hold.Hold | Failure] = {}
        for protect in (False, True):
            group = [h for h in todo if h.config.protect is protect]
            if group:
                taken = hold.take_each([h.config.path for h in group],
                                       timeout=self.config.daemon.trigger_timeout,
                                       protect=protect)
                results.update(zip(map(id, group), taken, strict=True))
        failed = [h for h in todo if isinstance(results[id(h)], Failure)]
        for i, h in enumerate(failed):
            failure = results[id(h)]
            assert isinstance(failure, Failure)
            h.error = failure.message
            if not (fatal and i == 0):  # the raised one is reported by whoever catches it
                log.event("hold-failed", "hold %s: %s", h.config.path, failure.message,
                          path=h.config.path, status=failure.message)
        if fatal and failed:
            hold.release_all([r for r in results.values() if isinstance(r, hold.Hold)])
            first = results[id(failed[0])]
            assert isinstance(first, Failure)
            raise first
        for h in todo:
            r = results[id(h)]
            if isinstance(r, hold.Hold):
                self._held(h, r)

    def _held(self, h: HeldPath, taken: hold.Hold) -> None:
        h.hold, h.error, h.state, h.lost_mount, h.adopted = taken, None, HoldState.HELD, \
            None, False
        info = taken.info
        log.event("hold-taken", "holding %s: %s from %s on %s%s%s", info.path, info.fstype,
                  info.source, info.mount_point, " (automount)" if info.automount else "",
                  ", locked against tmpfiles cleanup" if info.protected else "",
                  path=info.path, fstype=info.fstype, mount_point=info.mount_point)
        if self.config.daemon.fdstore:
            self.notifier.fdstore(taken.fd, h.fdname)

    def _release(self, h: HeldPath, *, stopping: bool = False) -> None:
        """Close the hold; while running also take it out of the fd store. Not while stopping:
        systemd discards a stopped service's fd store itself (sd_notify(3), unless
        FileDescriptorStorePreserve=), and one FDSTOREREMOVE per hold into a 10-datagram queue
        the manager is slow to read at shutdown could block up to SEND_TIMEOUT per hold."""
        if h.hold is not None:
            h.hold.release()
            log.event("hold-released", "released %s", h.config.path, path=h.config.path)
            if self.config.daemon.fdstore and not stopping:
                self.notifier.fdstore_remove(h.fdname)
        h.hold = None
        h.adopted = False
        if h.state is HoldState.HELD or h.state is HoldState.COVERED:
            h.state = None

    # --- the fd store ---------------------------------------------------------------------

    def _collect_stored(self) -> None:
        for s in fdstore.listen_fds(self.environ):
            if not self.config.daemon.fdstore:
                log.info("fd store: dropping %s (fdstore = false)", s.name)
                self._forget_stored(s)
            elif s.name in self.stored:
                log.warning("fd store: %s passed twice: dropping one", s.name)
                self._forget_stored(s)
            else:
                self.stored[s.name] = s

    def _forget_stored(self, s: fdstore.Stored) -> None:
        with contextlib.suppress(OSError):
            os.close(s.fd)
        self.notifier.fdstore_remove(s.name)

    def _drop_stored(self) -> None:
        """Stored fds no hold claimed (a path gone from the config, a disarmed staged hold)."""
        for s in self.stored.values():
            log.info("fd store: %s is not held any more: dropped", s.name)
            self._forget_stored(s)
        self.stored.clear()

    def _stored_for(self, h: HeldPath) -> fdstore.Stored | None:
        """The stored fd named for `h`: by its name, or by the hashed name older versions gave
        every hold (hashlib is imported only when such a name was passed in)."""
        if not self.stored:
            return None
        stored = self.stored.pop(h.fdname, None)
        if stored is None and any(fdstore.is_legacy(name) for name in self.stored):
            stored = self.stored.pop(fdstore.legacy_name(h.config.path), None)
        return stored

    def _adopt(self, h: HeldPath, s: fdstore.Stored, table: MountTable | None = None) -> bool:
        """Use a held fd from before a restart — only if it is still what the path shows."""
        path = h.config.path
        try:
            table = table or MountTable.read()
            info = hold.verify(path, s.fd, table)
            st = hold.state(info, table)
            if st is not HoldState.HELD:
                raise Failure(f"{path}: the stored fd's mount is {st}")
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # never triggers
            try:
                now = os.fstat(pfd)
            finally:
                os.close(pfd)
            if (now.st_dev, now.st_ino) != (info.dev, info.ino):
                raise Failure(f"{path}: now names another directory than the stored fd")
            if h.config.protect:
                hold.lock(s.fd, path)
                info = record.replace(info, protected=True)
        except (Failure, OSError) as e:
            reason = e.message if isinstance(e, Failure) else \
                f"{os.strerror(e.errno or 0) if e.errno else e}"
            log.warning("fd store: not adopting %s: %s", path, reason)
            self._forget_stored(s)
            return False
        h.hold, h.error, h.state, h.lost_mount, h.adopted = hold.Hold(s.fd, info), None, \
            HoldState.HELD, None, True
        log.info("holding %s: adopted from the fd store (%s from %s on %s)", path, info.fstype,
                 info.source, info.mount_point)
        if s.name != h.fdname and self.config.daemon.fdstore:  # stored by an older version
            self.notifier.fdstore_remove(s.name)
            self.notifier.fdstore(s.fd, h.fdname)
        return True

    # --- delegated holds ------------------------------------------------------------------

    def _op_hold(self, req: Request) -> Mapping[str, Any]:
        if self.state is not State.RUNNING:
            raise RequestError(f"the daemon is {self.state}: no new holds", code=Exit.TEMPFAIL)
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
        root = req.peer.uid == 0
        if not root and not with_fds:
            raise RequestError(
                "a non-root client must pass an fd of each path (open it O_PATH and send it "
                "with SCM_RIGHTS; `holdmount hold` does)", code=Exit.NOPERM)
        path_fds = req.fds[:len(paths)] if with_fds else ()
        if not root:
            self._check_quota(req.peer.uid, paths)
        pidfd, pid = self._lease_pidfd(req, until_pid, req.fds[-1] if has_pidfd else None)
        lease = Lease(self._next_lease, req.peer, pid, pidfd,
                      None if until_pid is not None else req.connection, set(), time.time())
        taken: list[str] = []
        try:
            for i, path in enumerate(paths):
                self._claim(path, lease, protect,
                            None if root else path_fds[i] if path_fds else None)
                taken.append(path)
        except BaseException:
            for path in taken:
                self._unclaim(path, lease.id, "request failed")
            os.close(pidfd)
            raise
        self._next_lease += 1
        self.leases[lease.id] = lease
        if lease.connection is not None and self.server is not None:
            self.server.pin(lease.connection, +1)
        self.selector.register(pidfd, selectors.EVENT_READ,
                               lambda _mask, lid=lease.id: self._end_lease(lid, "pid exited"))
        log.info("lease %d: holding %s for pid %d (uid %d) until %s", lease.id,
                 ", ".join(paths), req.peer.pid, req.peer.uid, lease.as_dict()["until"])
        self.notifier.status(self.summary())
        reply: dict[str, Any] = {"lease": lease.id, "until": lease.as_dict()["until"],
                                 "held": [{**self._delegated_dict(self.delegated[p]),
                                           "info": self._info(p)} for p in paths]}
        if want_fds:
            reply[REPLY_FDS] = [os.dup(self._held_fd(p)) for p in paths]
        return reply

    def _check_quota(self, uid: int, paths: list[str]) -> None:
        """Refuse a non-root request past its uid's lease or path ceiling ([control])."""
        control = self.config.control
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

    def _info(self, path: str) -> dict[str, object]:
        h = self.delegated[path].hold
        assert h is not None
        return h.info.as_dict()

    def _held_fd(self, path: str) -> int:
        h = self.delegated[path].hold
        assert h is not None
        return h.fd

    def _lease_pidfd(self, req: Request, until_pid: int | None,
                     passed: int | None) -> tuple[int, int]:
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

    def _claim(self, path: str, lease: Lease, protect: bool, client_fd: int | None) -> None:
        """Hold `path` for `lease` (authorized first when client_fd is given: non-root)."""
        d = self.delegated.get(path)
        was_trigger = False
        if client_fd is not None:
            was_trigger = authorize.check_identity(path, client_fd, MountTable.read())
        new = d is None or d.hold is None
        if new:
            try:
                taken = hold.take([path], timeout=self.config.daemon.trigger_timeout,
                                  protect=protect)[0]
            except Failure as e:
                raise RequestError(e.message, code=e.code) from None
            if d is None:
                d = Delegated(path, taken, set(), protect=protect)
                self.delegated[path] = d
            else:
                d.hold, d.error, d.state, d.lost_mount = taken, None, HoldState.HELD, None
        assert d is not None and d.hold is not None
        try:
            if client_fd is not None:
                if not was_trigger:
                    authorize.check_mounted_root(path, client_fd, d.hold.fd)
                authorize.check_may_read(path, d.hold.fd, lease.peer)
            if protect and not d.hold.info.protected:
                try:
                    hold.lock(d.hold.fd, path)
                except Failure as e:
                    raise RequestError(e.message, code=e.code) from None
                d.hold = hold.Hold(d.hold.fd, record.replace(d.hold.info, protected=True))
                d.protect = True
        except BaseException:
            if new and not d.leases:
                self._forget_delegated(d, "not authorized")
            raise
        d.leases.add(lease.id)
        lease.paths.add(path)

    def _unclaim(self, path: str, lease_id: int, why: str) -> None:
        d = self.delegated.get(path)
        if d is None:
            return
        d.leases.discard(lease_id)
        if not d.leases:
            self._forget_delegated(d, why)

    def _forget_delegated(self, d: Delegated, why: str) -> None:
        if d.hold is not None:
            d.hold.release()
            d.hold = None
            log.info("released delegated hold %s (%s)", d.path, why)
        self.delegated.pop(d.path, None)

    def _end_lease(self, lease_id: int, why: str, *, quiet: bool = False) -> None:
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
            self.notifier.status(self.summary())

    def _on_disconnect(self, conn: Connection) -> None:
        for lease in [x for x in self.leases.values() if x.connection is conn]:
            self._end_lease(lease.id, "connection closed")

    def _op_release(self, req: Request) -> Mapping[str, Any]:
        paths = _paths(req.body)
        if req.fds:
            raise RequestError("release takes no fds", code=Exit.USAGE)
        released: list[str] = []
        for path in paths:
            mine = [x for x in self.leases.values() if path in x.paths
                    and (req.peer.uid == 0 or x.peer.uid == req.peer.uid)]
            if not mine:
                config = any(h.config.path == path and h.hold is not None for h in self.holds)
                raise RequestError(
                    f"release {path}: " + ("held by the configuration, not by a client; "
                                           "it is not released over the socket" if config
                                           else "no delegated hold of yours on it"),
                    code=Exit.NOINPUT)
            for lease in mine:
                lease.paths.discard(path)
                self._unclaim(path, lease.id, f"released by pid {req.peer.pid}")
                if not lease.paths:
                    self._end_lease(lease.id, "released")
            released.append(path)
        self.notifier.status(self.summary())
        return {"released": released}

    def _delegated_dict(self, d: Delegated) -> dict[str, Any]:
        out: dict[str, Any] = {"path": d.path, "held": d.hold is not None, "error": d.error,
                               "state": str(d.state) if d.state else None,
                               "protect": d.protect,
                               "holders": [self.leases[i].as_dict() for i in sorted(d.leases)
                                           if i in self.leases]}
        out.update(_hold_fields(d.hold))
        return out

    # --- the mount table ------------------------------------------------------------------

    def _on_mounts(self, _mask: int) -> None:
        assert self.watcher is not None
        self.check_mounts(self.watcher.read())

    def check_mounts(self, table: MountTable) -> None:
        """Judge every hold against a fresh table: log changes, take lost holds again."""
        items: list[HeldPath | Delegated] = [*self.holds, *self.delegated.values()]
        for item in items:
            if item.hold is None:
                continue
            st = hold.state(item.hold.info, table)
            if st is item.state:
                continue
            info = item.hold.info
            if st is HoldState.HELD:
                log.info("hold %s: %s on %s is visible again", item.path, info.fstype,
                         info.mount_point)
            elif st is HoldState.COVERED:
                log.warning("hold %s: covered: something was mounted over %s (still held "
                            "underneath)", item.path, info.mount_point)
            else:
                log.event("hold-lost", "hold %s: lost: %s on %s was unmounted (umount -l?); "
                          "taking it again when it can be mounted", item.path, info.fstype,
                          info.mount_point, path=item.path, mount_point=info.mount_point)
            item.state = st
            if st is HoldState.LOST:
                item.lost_mount = info.mount_point
                item.error = f"lost: {info.fstype} on {info.mount_point} was unmounted"
                if isinstance(item, HeldPath):
                    self._release(item)
                    item.state = HoldState.LOST
                else:
                    item.hold.release()
                    item.hold = None
        if self.state is not State.RUNNING:
            return
        for item in items:
            if item.hold is None and item.state is HoldState.LOST and \
                    item.lost_mount is not None and table.top_at(item.lost_mount) is not None:
                self._retake(item)

    def _retake(self, item: HeldPath | Delegated) -> None:
        if isinstance(item, HeldPath):
            if item.config.when is When.STAGED and not (self.marker and self.marker.armed):
                return
            self._take(item)
            if item.hold is None:
                item.state = HoldState.LOST
            else:
                log.event("hold-retaken", "hold %s: taken again", item.path, path=item.path)
        else:
            try:
                taken = hold.take([item.path], timeout=self.config.daemon.trigger_timeout,
                                  protect=item.protect)[0]
            except Failure as e:
                item.error = f"lost, and taking it again failed: {e.message}"
                log.event("hold-failed", "hold %s: %s", item.path, item.error, path=item.path,
                          status=item.error)
                return
            item.hold, item.error, item.state, item.lost_mount = taken, None, HoldState.HELD, \
                None
            log.event("hold-retaken", "hold %s: taken again", item.path, path=item.path)
        self.notifier.status(self.summary())

    # --- events ---------------------------------------------------------------------------

    def _on_signal(self, _mask: int) -> None:
        for signum in self.signals.drain():
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP ignored: the configuration is read at start; restart the "
                         "service to apply changes")
            elif self.state is State.RUNNING:
                log.info("%s: finalizing", name)
                self.finalize()
            else:
                log.warning("%s ignored: already %s", name, self.state)

    def _on_marker(self, _mask: int) -> None:
        assert self.marker is not None
        if not self.marker.handle() or self.state is not State.RUNNING:
            return
        if self.marker.armed:
            self._arm()
        else:
            log.event("marker-disarmed", "marker %s removed: disarmed", self.marker.path,
                      marker=self.marker.path)
            for h in self.holds:
                if h.config.when is When.STAGED:
                    self._release(h)
            self.notifier.status(self.summary())

    def _arm(self) -> None:
        assert self.marker is not None
        log.event("marker-armed", "marker %s present: armed", self.marker.path,
                  marker=self.marker.path)
        with self.reserve.lent() if self.reserve is not None else contextlib.nullcontext():
            self._take_all([h for h in self.holds
                            if h.config.when is When.STAGED and h.hold is None], fatal=False)
        self.notifier.status(self.summary())

    # --- finalize -------------------------------------------------------------------------

    def finalize(self) -> None:
        self.state = State.FINALIZING
        if self.reserve is not None:  # the fds kept from clients are the finalize's now
            self.reserve.release()
        if self.server is not None:
            self.server.root_only = True
        self.notifier.stopping("finalizing")
        self.next_watchdog = None  # systemd does not watch a stopping service
        armed = self.marker.present() if self.marker is not None else False
        inhibit = self.config.marker.inhibit if self.config.marker else None
        inhibited = armed and inhibit is not None and os.path.lexists(inhibit)
        if self.marker is not None:  # decided: later marker changes must not move the holds
            self.selector.unregister(self.marker.fileno())
            self.marker.close()
        if armed and not inhibited:
            missing = [h for h in self.holds if h.config.when is When.STAGED and h.hold is None]
            if missing:
                self.notifier.extend_timeout(self.config.daemon.trigger_timeout * len(missing)
                                             + 10)
            self._take_all(missing, fatal=False)
        run: list[ActionConfig] = []
        for action in self.config.actions:
            reason = self._skip_reason(action, armed, inhibited, inhibit)
            if reason:
                self.skipped[action.name] = reason
                log.info("action %s: skipped (%s)", action.name, reason)
            else:
                run.append(action)
        self.finalizer.start(run)

    @staticmethod
    def _skip_reason(action: ActionConfig, armed: bool, inhibited: bool,
                     inhibit: str | None) -> str | None:
        if action.when is When.ALWAYS:
            return None
        if not armed:
            return "marker absent"
        if inhibited:
            return f"{inhibit} exists"
        return None

    def _finished(self, results: list[Result]) -> None:
        for r in results:
            self.results[r.name] = r
        failures = [r for r in results if not r.ok]
        stamp = self.config.daemon.stamp
        try:
            if failures:
                write_stamp(stamp, failures)
                log.event("stamp-written", "%d of %d actions failed; recorded in %s",
                          len(failures), len(results), stamp, stamp=stamp,
                          failed=" ".join(r.name for r in failures))
            elif results and clear_stamp(stamp):
                log.event("stamp-cleared", "every action succeeded: removed the failure stamp %s",
                          stamp, stamp=stamp)
        except Failure as e:
            log.error("%s", e.message)
        for h in self.holds:
            self._release(h, stopping=True)
        self._end_all_leases("finalized")
        self.exit_code = int(Exit.FAILURE) if failures else int(Exit.OK)
        self.state = State.DONE

    def _end_all_leases(self, why: str) -> None:
        """At the end: no STATUS= per lease (a slow manager would stall each send)."""
        for lease_id in list(self.leases):
            self._end_lease(lease_id, why, quiet=True)
        for d in list(self.delegated.values()):
            self._forget_delegated(d, why)

    def _cleanup(self) -> None:
        for h in self.holds:
            self._release(h, stopping=True)
        self._end_all_leases("exiting")
        for s in self.stored.values():
            with contextlib.suppress(OSError):
                os.close(s.fd)
        if self.watcher is not None:
            self.watcher.close()
        if self.server is not None:
            self.server.close()
        if self.marker is not None and self.state is not State.DONE:
            self.marker.close()
        self.selector.close()
        self.notifier.close()

    # --- status ---------------------------------------------------------------------------

    def summary(self) -> str:
        """One bounded line for STATUS=: at most SUMMARY_PATHS paths per list (`holdmount
        status` lists them all); systemd ignores a notify message of 4096 bytes or more."""
        held = [h.config.path for h in self.holds if h.hold is not None]
        failed = [h.config.path for h in self.holds if h.error is not None]
        parts = [f"holding {len(held)}: {_some(held)}" if held else "holding nothing"]
        if failed:
            parts.append(f"failed: {_some(failed)}")
        if self.delegated:
            parts.append(f"delegated {len(self.delegated)} for {len(self.leases)} clients")
        if self.marker is not None:
            parts.append("marker armed" if self.marker.armed else "marker disarmed")
        return "; ".join(parts)

    def status_dict(self) -> dict[str, Any]:
        marker: dict[str, Any] | None = None
        if self.config.marker is not None and self.marker is not None:
            inhibit = self.config.marker.inhibit
            marker = {"path": self.marker.path,
                      "state": "armed" if self.marker.armed else "disarmed",
                      "present": self.marker.present(), "watching": self.marker.watched,
                      "inhibit": inhibit,
                      "inhibited": bool(inhibit and os.path.lexists(inhibit))}
        return {
            "version": __version__, "pid": os.getpid(), "state": str(self.state),
            "host_mount_namespace": self.host_ns,
            "mount_namespace": syscalls.mount_ns_id(),
            "holds": [h.as_dict() for h in self.holds],
            "delegated": [self._delegated_dict(d) for d in self.delegated.values()],
            "fdstore": self.config.daemon.fdstore and self.notifier.enabled,
            "marker": marker,
            "actions": [self._action_dict(a) for a in self.config.actions],
            "finalizing": self.finalizer.running,
            "stamp": {"path": self.config.daemon.stamp,
                      "exists": os.path.exists(self.config.daemon.stamp)},
            "config_files": list(self.config.files),
        }

    def _action_dict(self, action: ActionConfig) -> dict[str, Any]:
        last: dict[str, Any] | None = None
        if action.name in self.results:
            last = {"when": "this shutdown", **self.results[action.name].as_dict()}
        elif action.name in self.skipped:
            last = {"when": "this shutdown", "ok": True,
                    "status": f"skipped: {self.skipped[action.name]}"}
        elif self.previous is not None:
            for f in self.previous.get("failures", []):
                if isinstance(f, dict) and f.get("name") == action.name:
                    last = {"when": f"previous shutdown ({self.previous.get('time', '?')})",
                            "ok": False, "status": f.get("status", "?")}
        return {"name": action.name, "kind": action.kind, "when": str(action.when),
                "timeout": action.timeout,
                "argv": list(action.exec) if action.exec else None,
                "merge": record.asdict(action.merge) if action.merge else None,
                "last": last}


def _some(paths: list[str]) -> str:
    """At most SUMMARY_PATHS paths (each cut to SUMMARY_PATH_LEN), then how many more."""
    shown = [p if len(p) <= SUMMARY_PATH_LEN else p[:SUMMARY_PATH_LEN - 1] + "…"
             for p in paths[:SUMMARY_PATHS]]
    more = len(paths) - len(shown)
    if more:
        return ", ".join(shown) + f", and {more} more"
    return ", ".join(shown)


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
        try:  # a byte that is not UTF-8 arrives as \udc80..\udcff (control.py): keep it
            p.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise RequestError(f"not a path: {p[:80]!r} has a lone surrogate that stands "
                               "for no byte", code=Exit.DATAERR) from None
        norm = os.path.normpath(p)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        if norm not in out:
            out.append(norm)
    return out


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f'"{key}" must be true or false', code=Exit.USAGE)
    return value


def main(config: Config) -> int:
    return Daemon(config).run()


def command(files: list[str] | None, *, no_config: bool = False, holds: Sequence[str] = (),
            allow_foreign: bool = False, check: bool = False) -> int:
    """`holdmount daemon [--config FILE]... [--no-config] [--hold DIR]...
    [--allow-foreign-namespace] [--check]`: read the configuration, then check it or run."""
    from holdmount.config import default_files, load, load_checked

    if no_config:
        files = []
    elif not files:
        files = default_files()
    cfg = (load_checked if check else load)(files, extra_holds=holds)
    if allow_foreign:
        cfg = record.replace(cfg, daemon=record.replace(
            cfg.daemon, allow_foreign_namespace=True))
    if check:
        print(f"configuration OK ({', '.join(cfg.files) or 'no files'}): {len(cfg.holds)} "
              f"holds, {len(cfg.actions)} actions, marker "
              f"{cfg.marker.path if cfg.marker else 'none'}")
        return 0
    return main(cfg)
