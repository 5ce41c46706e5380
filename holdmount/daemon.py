"""`holdmount daemon`: hold mounts, watch the marker, finalize on SIGTERM while still holding.

One loop (`Daemon.loop`) sleeps in one selector over every event source: the signal wakeup fd
(holdmount.signals), the marker's inotify fd, the mount table, the control socket and its
connections, each lease's pidfd, and while finalizing the running action's pidfd and output
pipe. The only timeouts are the running action's deadline, an idle control connection's and,
when systemd asked for one (WATCHDOG_USEC), the watchdog: idle, the daemon never wakes up.

The parts around the loop: `configured` (the `[[hold]]`s, the fd store, adoption after a
restart via `fdstore.Adopted`), `leases` (delegated holds, the "hold"/"release" ops registered
on the control server), `held` (one held-path type for both), `outcomes` (the actions' results
and the failure stamp), `snapshot` (STATUS= and the `status` reply). Every event source's
callback runs inside one error boundary (`_event`): a bug in one is logged and the loop goes on.

SIGTERM (or SIGINT) starts the finalize exactly once: STOPPING=1, the marker checked on the
filesystem *now*, the staged holds taken if they are missing, the actions run in order, holds
kept until the last action ends, then released; later SIGTERMs are logged and ignored. The
mount table is watched (POLLPRI on mountinfo): a held mount that is detached or covered is
logged, shown in status, and a lost hold is taken again when the path can be mounted again.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import selectors
import signal
import time
from collections.abc import Mapping, Sequence

from holdmount import __version__, fdstore, limits, record, snapshot, syscalls
from holdmount.config import ActionConfig, Config, When
from holdmount.configured import ConfiguredHolds
from holdmount.control import Server
from holdmount.errors import Exit, die
from holdmount.finalize import Finalizer, Result
from holdmount.leases import Leases
from holdmount.log import log
from holdmount.marker import MarkerWatch
from holdmount.mounts import MountTable, MountWatcher
from holdmount.notify import Notifier
from holdmount.outcomes import Outcomes
from holdmount.signals import HANDLED, Signals

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FINALIZING = "finalizing"
    DONE = "done"


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.notifier = notifier or Notifier(environ)
        self.environ = environ
        self.selector = selectors.DefaultSelector()
        self.signals = Signals(HANDLED)
        self.state = State.STARTING
        self.exit_code = int(Exit.OK)
        self.marker: MarkerWatch | None = None
        self.stored = fdstore.Adopted(self.notifier, keep=config.daemon.fdstore)
        self.configured = ConfiguredHolds(config, self.notifier, self.stored, self._armed)
        self.leases = Leases(config, self.selector, state=lambda: self.state,
                             configured=self.configured.held, changed=self._status)
        self.server: Server | None = None
        self.watcher: MountWatcher | None = None
        self.finalizer = Finalizer(self.selector, self.notifier, self._finished, environ)
        self.outcomes = Outcomes(config.daemon.stamp)
        self.host_ns = syscalls.in_host_mount_ns()
        self.watchdog_interval = (self.notifier.watchdog_usec / 2e6
                                  if self.notifier.watchdog_usec else None)
        self.next_watchdog: float | None = None
        self.reserve: limits.FdReserve | None = None  # fds no client can take (finalize's)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        with self.signals, contextlib.ExitStack() as cleanup:
            cleanup.callback(self._cleanup)
            limits.raise_nofile()
            self.selector.register(self.signals.rfd, selectors.EVENT_READ, self._on_signal)
            self.start()
            return self.loop()

    def _take_from_boot(self) -> None:
        holds = [h for h in self.configured.holds if h.when is When.ALWAYS]
        try:
            self.configured.take_all(holds, fatal=True)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            soft, hard = limits.raise_nofile()
            die(f"open(): {os.strerror(e.errno)} taking {len(holds)} holds (RLIMIT_NOFILE "
                f"{soft}/{hard})",
                hint="the daemon keeps one fd per held path: raise LimitNOFILE= in a drop-in "
                "for its unit, or hold fewer paths", code=Exit.CONFIG)

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
        self.leases.register(self.server)
        self.stored.collect(self.environ)
        if self.config.marker is not None:
            self.marker = MarkerWatch(self.config.marker.path)
            self.selector.register(self.marker.fileno(), selectors.EVENT_READ, self._on_marker)
        self._take_from_boot()
        if self._armed():
            self._arm()
        self.stored.drop_unclaimed()
        self.watcher = MountWatcher()
        self.selector.register(self.watcher.fileno(), selectors.EVENT_READ, self._on_mounts)
        if self.watchdog_interval:
            self.next_watchdog = time.monotonic() + self.watchdog_interval
        # The finalize's fds, taken after the holds held from boot (they are open already) and
        # before the loop serves any client: the staged holds and the actions need them at SIGTERM.
        staged = sum(1 for h in self.configured.holds if h.when is When.STAGED)
        self.reserve = limits.FdReserve(limits.RESERVE_BASE + limits.RESERVE_PER_HOLD * staged)
        self.state = State.RUNNING
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary())

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
            for h in self.configured.staged():
                self.configured.release(h)
            self._status()

    def _armed(self) -> bool:
        return self.marker is not None and self.marker.armed

    def _arm(self) -> None:
        assert self.marker is not None
        log.event("marker-armed", "marker %s present: armed", self.marker.path,
                  marker=self.marker.path)
        with self.reserve.lent() if self.reserve is not None else contextlib.nullcontext():
            self.configured.take_all(self.configured.staged(missing=True), fatal=False)
        self._status()

    def _on_mounts(self, _mask: int) -> None:
        assert self.watcher is not None
        self.check_mounts(self.watcher.read())

    def check_mounts(self, table: MountTable) -> None:
        """Judge every hold against a fresh table: log changes, take lost holds again."""
        kept = [(keeper, item) for keeper in (self.configured, self.leases)
                for item in keeper.items()]
        for keeper, item in kept:
            if item.observe(table):
                keeper.lost(item)
        if self.state is not State.RUNNING:
            return
        for keeper, item in kept:
            if item.mountable_again(table) and keeper.retake(item):
                self._status()

    # --- finalize -------------------------------------------------------------------------

    def finalize(self) -> None:
        self.state = State.FINALIZING
        if self.reserve is not None:  # the fds kept from clients are the finalize's now
            self.reserve.release()
        if self.server is not None:
            self.server.admission.root_only = True
        self.notifier.stopping("finalizing")
        self.next_watchdog = None  # systemd does not watch a stopping service
        armed = self.marker.present() if self.marker is not None else False
        inhibit = self.config.marker.inhibit if self.config.marker else None
        inhibited = armed and inhibit is not None and os.path.lexists(inhibit)
        if self.marker is not None:  # decided: later marker changes must not move the holds
            self.selector.unregister(self.marker.fileno())
            self.marker.close()
        if armed and not inhibited:
            missing = self.configured.staged(missing=True)
            if missing:
                self.notifier.extend_timeout(self.config.daemon.trigger_timeout * len(missing)
                                             + 10)
            self.configured.take_all(missing, fatal=False)
        run: list[ActionConfig] = []
        for action in self.config.actions:
            reason = _skip_reason(action, armed, inhibited, inhibit)
            if reason:
                self.outcomes.skip(action, reason)
            else:
                run.append(action)
        self.finalizer.start(run)

    def _finished(self, results: list[Result]) -> None:
        ok = self.outcomes.record(results)
        self.configured.release_all(stopping=True)
        self.leases.end_all("finalized")
        self.exit_code = int(Exit.OK) if ok else int(Exit.FAILURE)
        self.state = State.DONE

    def _cleanup(self) -> None:
        self.configured.release_all(stopping=True)
        self.leases.end_all("exiting")
        self.stored.close()
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
        return snapshot.summary(self.configured.holds, len(self.leases.held),
                                len(self.leases.leases), self.marker)

    def _status(self) -> None:
        self.notifier.status(self.summary())

    def status_dict(self) -> dict[str, Any]:
        return {
            "version": __version__, "pid": os.getpid(), "state": str(self.state),
            "host_mount_namespace": self.host_ns,
            "mount_namespace": syscalls.mount_ns_id(),
            "holds": [snapshot.configured_dict(h) for h in self.configured.holds],
            "delegated": [self.leases.as_dict(d) for d in self.leases.held.values()],
            "fdstore": self.config.daemon.fdstore and self.notifier.enabled,
            "marker": snapshot.marker_dict(self.config.marker, self.marker),
            "actions": [self.outcomes.as_dict(a) for a in self.config.actions],
            "finalizing": self.finalizer.running,
            "stamp": self.outcomes.stamp_dict(),
            "config_files": list(self.config.files),
        }


def _skip_reason(action: ActionConfig, armed: bool, inhibited: bool,
                 inhibit: str | None) -> str | None:
    if action.when is When.ALWAYS:
        return None
    if not armed:
        return "marker absent"
    if inhibited:
        return f"{inhibit} exists"
    return None


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
