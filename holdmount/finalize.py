"""Finalize actions: run each as a child in its own process group, with a timeout; the stamp.

`Finalizer` is driven by the daemon's loop (no threads, no blocking waits): it registers the
running action's pidfd and output pipe in the loop's selector and exposes the next deadline.
Before each action it sends EXTEND_TIMEOUT_USEC covering the action's timeout plus the kill
grace periods, so systemd's stop timeout never fires under a well-behaved action. An action that
outlives its timeout gets SIGTERM (its whole process group), then SIGKILL, then is abandoned (a
process stuck in the kernel, e.g. in autofs_wait, survives SIGKILL). Output lines go to our log
(the journal), prefixed with the action's name; the last lines are kept for the stamp.

The stamp (ostree's finalize-failure.stamp pattern): when an action fails, a JSON file records
the action, its status and its last output lines; `holdmount report` (holdmount-report.service)
shows it at the next boot and fails. A later finalize in which every action succeeds removes it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from holdmount.config import ActionConfig
from holdmount.errors import Exit, Failure, os_failure
from holdmount.log import log
from holdmount.notify import Notifier, child_environ

if TYPE_CHECKING:
    from holdmount.log import EventName

KILL_GRACE = 5.0  # after SIGTERM to the group, before SIGKILL
ABANDON_GRACE = 5.0  # after SIGKILL, before giving up on a process stuck in the kernel
EXTEND_MARGIN = 10.0  # on top of timeout + graces: our own bookkeeping, stamp, release
KEEP_LINES = 20  # output lines kept for the stamp
MAX_LINE = 4096
STAMP_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Result:
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
        d = dataclasses.asdict(self)
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

    def __init__(self, action: ActionConfig, proc: subprocess.Popen[bytes], pidfd: int) -> None:
        self.action = action
        self.proc = proc
        self.pidfd = pidfd
        assert proc.stdout is not None
        self.pipe = proc.stdout.fileno()
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
        env = child_environ(self.environ if self.environ is not None else os.environ)
        env["HOLDMOUNT_ACTION"] = action.name
        proc = subprocess.Popen(
            action_argv(action), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd="/", env=env, close_fds=True,
            start_new_session=True,  # own session and process group: we kill the whole group
        )
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            proc.kill()
            proc.wait()
            raise
        run = _Running(action, proc, pidfd)
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
            os.killpg(run.proc.pid, signal.SIGKILL)
        status = run.proc.wait()
        self._read(run)  # what is still in the pipe
        self._finish(run, self._describe(run, status))

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
        if run.proc.stdout is not None:
            run.proc.stdout.close()
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
                      "giving up on it", run.action.name, run.proc.pid, ABANDON_GRACE)
            self._read(run)
            self._finish(run, Result(
                run.action.name, False,
                f"timed out after {run.action.timeout:g}s, did not die after SIGKILL",
                timed_out=True, started=run.started, ended=time.time(),
                output=tuple(run.lines)))

    @staticmethod
    def _killpg(run: _Running, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)


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


# --- the stamp ----------------------------------------------------------------------------------

def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def write_stamp(path: str, failures: Sequence[Result]) -> None:
    """Atomically write the failure stamp (tmp file + rename in the same directory)."""
    data = {
        "holdmount_stamp": STAMP_FORMAT,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "boot_id": _boot_id(),
        "failures": [r.as_dict() for r in failures],
    }
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _stamp_failure("write", path, e) from e


def clear_stamp(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _stamp_failure("unlink", path, e) from e
    return True


# The stamp is a file the daemon writes as root: the generic hints (about held directories) do
# not fit it.
_STAMP_HINTS = {
    errno.EACCES: "the daemon writes the stamp as root: run this as root",
    errno.EPERM: "the daemon writes the stamp as root: run this as root",
    errno.ENOTDIR: "a part of the stamp's path is a file, not a directory: --stamp / "
    "daemon.stamp name the file itself",
    errno.EISDIR: "--stamp / daemon.stamp name the stamp file itself, not its directory",
    errno.EROFS: "the stamp's filesystem is read-only at that moment: put daemon.stamp on a "
    "filesystem that is writable at shutdown (e.g. /var/lib/holdmount)",
}


def _stamp_failure(call: str, path: str, exc: OSError) -> Failure:
    code = Exit.DATAERR if exc.errno in (errno.ENOTDIR, errno.EISDIR) else None
    return os_failure(call, path, exc, hint=_STAMP_HINTS.get(exc.errno or 0), code=code)


def read_stamp(path: str, *, strict: bool = False) -> dict[str, Any] | None:
    """The stamp's content, None when there is none. A file that is not a stamp raises a
    Failure (65) when `strict` (`holdmount report`); otherwise (the daemon's status) it still
    counts as a failure, "unreadable stamp", without repeating the file's content."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _stamp_failure("open", path, e) from e
    try:
        data = json.loads(text)
        why = "" if isinstance(data, dict) and isinstance(data.get("holdmount_stamp"), int) \
            and isinstance(data.get("failures"), list) else "JSON, but not a holdmount stamp"
    except ValueError:
        why = "not JSON"
    if not why:
        return dict(data)
    if strict:
        raise Failure(f"read({path}): not a holdmount failure stamp ({why})",
                      hint="--stamp names the file the daemon writes when an action fails "
                      "(daemon.stamp in holdmount.toml); a damaged stamp can be removed",
                      code=Exit.DATAERR)
    return {"holdmount_stamp": 0, "time": "", "failures": [
        {"name": "?", "status": f"unreadable stamp ({why})", "output": []}]}


def render_stamp(path: str, data: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for `holdmount report` and status."""
    out = []
    for f in data.get("failures", []):
        if not isinstance(f, dict):
            continue
        out.append(f"action {f.get('name', '?')} failed at shutdown ({data.get('time') or '?'}):"
                   f" {f.get('status', '?')}")
        for line in f.get("output", []) or []:
            out.append(f"  | {line}")
    out.append(f"(stamp {path}; removed by the next finalize in which every action succeeds)")
    return out


REPORT_FORMAT = 1  # `report --json`: docs/json.md; bump only for an incompatible change


def report(path: str, *, as_json: bool = False) -> int:
    """`holdmount report`: print the stamp and fail when it exists."""
    data = read_stamp(path, strict=True)
    if as_json:
        failures = data.get("failures", []) if data else []
        print(json.dumps({
            "holdmount_report": REPORT_FORMAT, "stamp": path, "failed": data is not None,
            "time": data.get("time") if data else None,
            "boot_id": data.get("boot_id") if data else None,
            "failures": [f for f in failures if isinstance(f, dict)],
        }, indent=2, sort_keys=True))
        return int(Exit.FAILURE if data is not None else Exit.OK)
    if data is None:
        log.info("no finalize failure recorded (%s does not exist)", path)
        return int(Exit.OK)
    lines = render_stamp(path, data)
    for line in lines:
        log.error("%s", line)
    return int(Exit.FAILURE)
