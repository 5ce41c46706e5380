"""Finalize actions: run each as a child in its own process group, with a timeout.

`Finalizer` is driven by the daemon's loop (no threads, no blocking waits): it registers the
running action's pidfd and output pipe in the loop's selector and exposes the next deadline.
Before each action it sends EXTEND_TIMEOUT_USEC covering the action's timeout plus the kill
grace periods, so systemd's stop timeout never fires under a well-behaved action. An action that
outlives its timeout gets SIGTERM (its whole process group), then SIGKILL, then is abandoned (a
process stuck in the kernel, e.g. in autofs_wait, survives SIGKILL). Output lines go to our log
(the journal), prefixed with the action's name; the last lines are kept for the failure stamp
(holdmount.stamp). How a child is started (environment, session, signal mask, fd limit):
holdmount.spawn.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import sys
import time

from holdmount import spawn
from holdmount.log import log
from holdmount.record import Record, asdict

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from holdmount.config import ActionConfig
    from holdmount.log import EventName
    from holdmount.notify import Notifier

KILL_GRACE = 5.0  # after SIGTERM to the group, before SIGKILL
ABANDON_GRACE = 5.0  # after SIGKILL, before giving up on a process stuck in the kernel
EXTEND_MARGIN = 10.0  # on top of timeout + graces: our own bookkeeping, stamp, release
KEEP_LINES = 20  # output lines kept for the stamp
MAX_LINE = 4096


class Result(Record):
    name: str
    ok: bool
    status: str  # "exit status 0", "timed out after 5s, killed by SIGTERM", "exec(...): ..."
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    started: float = 0.0  # time.time()
    ended: float = 0.0
    output: tuple[str, ...] = ()  # the last lines

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        d["output"] = list(self.output)
        return d


def action_argv(action: ActionConfig) -> list[str]:
    if action.merge is not None:  # merge runs in a child like any action: killable, timed
        return [sys.executable, "-m", "holdmount", "merge", action.merge.source,
                action.merge.dest]
    assert action.exec is not None
    return list(action.exec)


class _Running:
    """One action's child: its pidfd, its output pipe and where it is in the kill sequence."""

    def __init__(self, action: ActionConfig, child: spawn.Child, pidfd: int) -> None:
        self.action = action
        self.pid = child.pid
        self.pidfd = pidfd
        self.pipe = child.output
        os.set_blocking(self.pipe, False)
        self.started = time.time()
        self.deadline = time.monotonic() + action.timeout
        self.phase = "running"  # -> "terminating" -> "killing"
        self.partial = b""
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)


class Finalizer:
    """Runs actions one after another inside the caller's selector loop."""

    def __init__(self, selector: selectors.BaseSelector, notifier: Notifier,
                 on_done: Callable[[list[Result]], None],
                 environ: Mapping[str, str] | None = None) -> None:
        self.selector = selector
        self.notifier = notifier
        self.on_done = on_done
        self.environ = environ
        self.queue: list[ActionConfig] = []
        self.results: list[Result] = []
        self.current: _Running | None = None
        self.total = 0

    def start(self, actions: Sequence[ActionConfig]) -> None:
        self.queue = list(actions)
        self.total = len(actions)
        self._next()

    @property
    def running(self) -> str | None:
        return self.current.action.name if self.current else None

    def deadline(self) -> float | None:
        return self.current.deadline if self.current else None

    # --- the sequence ---------------------------------------------------------------------

    def _next(self) -> None:
        while self.queue:
            action = self.queue.pop(0)
            budget = action.timeout + KILL_GRACE + ABANDON_GRACE + EXTEND_MARGIN
            self.notifier.extend_timeout(budget)
            index = self.total - len(self.queue)
            self.notifier.status(f"finalizing: action {action.name} ({index}/{self.total})")
            command = " ".join(action_argv(action))
            log.event("action-started", "action %s: starting (%d/%d, timeout %gs): %s",
                      action.name, index, self.total, action.timeout, command,
                      action=action.name, command=command, timeout=f"{action.timeout:g}")
            try:
                self._spawn(action)
                return
            except OSError as e:
                now = time.time()
                result = Result(action.name, False,
                                f"exec({action_argv(action)[0]}): {os.strerror(e.errno or 0)}",
                                exit_code=None, started=now, ended=now)
                _log_result(result)
                self.results.append(result)
        self.on_done(self.results)

    def _spawn(self, action: ActionConfig) -> None:
        env = spawn.child_environ(self.environ if self.environ is not None else os.environ)
        env["HOLDMOUNT_ACTION"] = action.name
        child = spawn.session(action_argv(action), env)
        try:
            pidfd = os.pidfd_open(child.pid)
        except OSError:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            os.close(child.output)
            raise
        run = _Running(action, child, pidfd)
        self.current = run
        self.selector.register(run.pipe, selectors.EVENT_READ, self._on_output)
        self.selector.register(pidfd, selectors.EVENT_READ, self._on_exit)

    def _on_output(self, _mask: int) -> None:
        run = self.current
        if run is None:
            return
        self._read(run)

    def _read(self, run: _Running) -> None:
        while True:
            try:
                chunk = os.read(run.pipe, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the pipe stays out of the selector from now on
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(run.pipe)
                self._emit(run, flush=True)
                return
            run.partial += chunk
            self._emit(run, flush=False)

    def _emit(self, run: _Running, *, flush: bool) -> None:
        *lines, rest = run.partial.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if flush and rest:
            lines.append(rest)
            rest = b""
        run.partial = rest
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            run.lines.append(text)
            log.info("%s: %s", run.action.name, text)

    def _on_exit(self, _mask: int) -> None:
        run = self.current
        if run is None:
            return
        # The leader is a zombie now, so its pid (our process group id) cannot be reused yet:
        # end whatever it left behind in its group — leftovers would keep held mounts busy.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
        _, status = os.waitpid(run.pid, 0)
        self._read(run)  # what is still in the pipe
        self._finish(run, self._describe(run, os.waitstatus_to_exitcode(status)))

    def _describe(self, run: _Running, code: int) -> Result:
        timed_out = run.phase != "running"
        sig = -code if code < 0 else None
        what = f"killed by {_signame(sig)}" if sig is not None else f"exit status {code}"
        if timed_out:
            what = f"timed out after {run.action.timeout:g}s, {what}"
        return Result(run.action.name, ok=code == 0 and not timed_out, status=what,
                      exit_code=code if code >= 0 else None, signal=sig, timed_out=timed_out,
                      started=run.started, ended=time.time(), output=tuple(run.lines))

    def _finish(self, run: _Running, result: Result) -> None:
        for fd in (run.pipe, run.pidfd):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        os.close(run.pidfd)
        os.close(run.pipe)
        self.current = None
        _log_result(result)
        self.results.append(result)
        self._next()

    def timer(self, now: float) -> None:
        """Called by the loop whenever it wakes; acts when the current deadline has passed."""
        run = self.current
        if run is None or now < run.deadline:
            return
        if run.phase == "running":
            log.error("action %s: still running after its timeout of %gs: sending SIGTERM to "
                      "its process group", run.action.name, run.action.timeout)
            self._killpg(run, signal.SIGTERM)
            run.phase, run.deadline = "terminating", now + KILL_GRACE
        elif run.phase == "terminating":
            log.error("action %s: still running %gs after SIGTERM: sending SIGKILL",
                      run.action.name, KILL_GRACE)
            self._killpg(run, signal.SIGKILL)
            run.phase, run.deadline = "killing", now + ABANDON_GRACE
        else:
            log.error("action %s: pid %d did not die %gs after SIGKILL (stuck in the kernel?): "
                      "giving up on it", run.action.name, run.pid, ABANDON_GRACE)
            self._read(run)
            self._finish(run, Result(
                run.action.name, False,
                f"timed out after {run.action.timeout:g}s, did not die after SIGKILL",
                timed_out=True, started=run.started, ended=time.time(),
                output=tuple(run.lines)))

    @staticmethod
    def _killpg(run: _Running, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, sig)


def _log_result(result: Result) -> None:
    """action-finished, -failed or -timed-out, with the status and the exit code or signal."""
    name: EventName = "action-finished" if result.ok else \
        "action-timed-out" if result.timed_out else "action-failed"
    log.event(name, "action %s: %s", result.name, result.status, action=result.name,
              status=result.status, exit_code=result.exit_code,
              signal=None if result.signal is None else _signame(result.signal))


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
