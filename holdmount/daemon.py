"""`holdmount daemon`: hold mounts, watch the marker, finalize on SIGTERM while still holding.

One loop (`Daemon.loop`) sleeps in one selector over every event source: the signal wakeup fd,
the marker's inotify fd, the control socket and its connections, and while finalizing the
running action's pidfd and output pipe. The only timeouts are the running action's deadline and,
when systemd asked for one (WATCHDOG_USEC), the watchdog: idle, the daemon never wakes up.

Signal handlers only record the signal; `signal.set_wakeup_fd` wakes the loop, which does the
work. SIGTERM (or SIGINT) starts the finalize exactly once: STOPPING=1, the marker checked on the
filesystem *now*, the staged holds taken if they are missing, the actions run in order, holds
kept until the last action ends, then released; later SIGTERMs are logged and ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import selectors
import signal
import time
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from holdmount import __version__, hold, syscalls
from holdmount.config import ActionConfig, Config, HoldConfig, When
from holdmount.control import Server
from holdmount.errors import Exit, Failure, die
from holdmount.finalize import Finalizer, Result, clear_stamp, read_stamp, write_stamp
from holdmount.log import log
from holdmount.marker import MarkerWatch
from holdmount.notify import Notifier

TERMINATE = (signal.SIGTERM, signal.SIGINT)
HANDLED = (*TERMINATE, signal.SIGHUP)


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


@dataclasses.dataclass
class HeldPath:
    config: HoldConfig
    hold: hold.Hold | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.config.path, "when": str(self.config.when),
                             "protect": self.config.protect, "held": self.hold is not None,
                             "error": self.error}
        if self.hold is not None:
            info = self.hold.info
            d.update(fstype=info.fstype, source=info.source, mount_point=info.mount_point,
                     automount=info.automount, since=info.since, protected=info.protected,
                     resolved=info.resolved)
        return d


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

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        with self.signals, contextlib.ExitStack() as cleanup:
            cleanup.callback(self._cleanup)
            self.selector.register(self.signals.rfd, selectors.EVENT_READ, self._on_signal)
            self.start()
            return self.loop()

    def loop(self) -> int:
        """Sleep until an event source is readable; idle, nothing here has a timeout."""
        while self.state is not State.DONE:
            for key, mask in self.selector.select(self._timeout()):
                key.data(mask)
            now = time.monotonic()
            self.finalizer.timer(now)
            if self.next_watchdog is not None and now >= self.next_watchdog:
                self.notifier.watchdog()
                self.next_watchdog = now + (self.watchdog_interval or 0)
        return self.exit_code

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self.finalizer.deadline(), self.next_watchdog) if d is not None]
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
        self.server = Server(self.config.socket_path(self.environ), self.selector,
                             mode=self.config.control.mode, group=self.config.control.group)
        self.server.register("status", lambda _req: {"status": self.status_dict()})
        self._register_ops(self.server)
        if self.config.marker is not None:
            self.marker = MarkerWatch(self.config.marker.path)
            self.selector.register(self.marker.fileno(), selectors.EVENT_READ, self._on_marker)
        for h in self.holds:
            if h.config.when is When.ALWAYS:
                self._take(h, fatal=True)
        if self.marker is not None and self.marker.armed:
            self._arm()
        if self.watchdog_interval:
            self.next_watchdog = time.monotonic() + self.watchdog_interval
        self.state = State.RUNNING
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary())

    def _register_ops(self, server: Server) -> None:
        """Hook for ops beyond status (issue 4: hold/release with SCM_RIGHTS fds)."""

    def _take(self, h: HeldPath, *, fatal: bool) -> None:
        try:
            taken = hold.take([h.config.path], timeout=self.config.daemon.trigger_timeout,
                              protect=h.config.protect)
        except Failure as e:
            h.error = e.message
            if fatal:
                raise
            log.error("hold %s: %s", h.config.path, e.message)
            return
        h.hold, h.error = taken[0], None
        info = taken[0].info
        log.info("holding %s: %s from %s on %s%s%s", info.path, info.fstype, info.source,
                 info.mount_point, " (automount)" if info.automount else "",
                 ", locked against tmpfiles cleanup" if info.protected else "")

    def _release(self, h: HeldPath) -> None:
        if h.hold is not None:
            h.hold.release()
            log.info("released %s", h.config.path)
        h.hold = None

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
            log.info("marker %s removed: disarmed", self.marker.path)
            for h in self.holds:
                if h.config.when is When.STAGED:
                    self._release(h)
            self.notifier.status(self.summary())

    def _arm(self) -> None:
        assert self.marker is not None
        log.info("marker %s present: armed", self.marker.path)
        for h in self.holds:
            if h.config.when is When.STAGED and h.hold is None:
                self._take(h, fatal=False)
        self.notifier.status(self.summary())

    # --- finalize -------------------------------------------------------------------------

    def finalize(self) -> None:
        self.state = State.FINALIZING
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
            for h in missing:
                self._take(h, fatal=False)
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
                log.error("%d of %d actions failed; recorded in %s", len(failures),
                          len(results), stamp)
            elif results and clear_stamp(stamp):
                log.info("every action succeeded: removed the failure stamp %s", stamp)
        except Failure as e:
            log.error("%s", e.message)
        for h in self.holds:
            self._release(h)
        self.exit_code = int(Exit.FAILURE) if failures else int(Exit.OK)
        self.state = State.DONE

    def _cleanup(self) -> None:
        for h in self.holds:
            self._release(h)
        if self.server is not None:
            self.server.close()
        if self.marker is not None and self.state is not State.DONE:
            self.marker.close()
        self.selector.close()
        self.notifier.close()

    # --- status ---------------------------------------------------------------------------

    def summary(self) -> str:
        held = [h.config.path for h in self.holds if h.hold is not None]
        failed = [h.config.path for h in self.holds if h.error is not None]
        parts = [f"holding {len(held)}: {', '.join(held)}" if held else "holding nothing"]
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
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
                "merge": dataclasses.asdict(action.merge) if action.merge else None,
                "last": last}


def main(config: Config) -> int:
    return Daemon(config).run()
