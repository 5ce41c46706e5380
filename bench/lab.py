"""The bench's lab: one private mount namespace, a tmpfs base, processes it started and ends.

`bench/run` execs the harness under `unshare -m --propagation private`, so every mount made here
(the tmpfs base, autofs triggers and mounts, overlays) lives and dies with this namespace. Every
process the harness starts goes through `Procs`, which gets it a parent-death signal (nothing
outlives a harness that is killed) and ends exactly those processes at the end, by pid.

Interpreter: holdmount and every Python peer run under the same binary, Debian's
`/usr/bin/python3`, with holdmount found through PYTHONPATH (the checkout and the venv's
site-packages for pystemd) — how a distribution package runs it. The venv's own
`bin/python` would add its editable-install finder (~20 ms per start) and the pyenv shim in
front of `python3` ~70 ms: neither is the product's cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PY = "/usr/bin/python3"
REPO = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


# /usr/bin/holdmount as the packages install it (#!/usr/bin/python3 -P): what the units run
LAUNCHER = REPO / "packaging/launcher/holdmount"


def holdmount(*args: str) -> list[str]:
    """holdmount's command line as the packages run it: the launcher, exec'd (its #! line
    starts PY), holdmount found through PYTHONPATH (bench/run sets it)."""
    return [str(LAUNCHER), *args]


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock the stamp program reads, comparable across processes."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def wait_for(pred: Callable[[], bool], limit: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# --- processes ------------------------------------------------------------------------------

class Procs:
    """Processes this harness started; each in its own session (pgid == pid)."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen[Any]] = {}

    def start(self, argv: Sequence[str], *, deathsig: int = signal.SIGKILL,
              env: Mapping[str, str] | None = None, log: Path | None = None,
              **kw: Any) -> subprocess.Popen[Any]:
        def child() -> None:
            _libc.prctl(_PR_SET_PDEATHSIG, deathsig, 0, 0, 0)

        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("cwd", "/")  # as systemd starts a service; and -m finds no package here
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - the child has its copy after Popen
            kw.setdefault("stdout", out)
            kw.setdefault("stderr", subprocess.STDOUT)
        try:
            proc = subprocess.Popen(list(argv), preexec_fn=child, start_new_session=True,
                                    env=dict(env) if env is not None else None, **kw)
        finally:
            if log is not None:
                out.close()
        self.live[proc.pid] = proc
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
             timeout: float = 15.0, group: bool = True) -> int:
        """Signal one of our processes (its whole process group: it has its own session)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elif group:  # the leader is gone; end what it left in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.live.pop(proc.pid, None)
        return proc.returncode

    def reap(self, proc: subprocess.Popen[Any]) -> None:
        self.live.pop(proc.pid, None)

    def close(self) -> None:
        for proc in list(self.live.values()):
            self.stop(proc, timeout=5.0)


# --- /proc -----------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages count divided by the number of their sharers."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            total += int(proc_status_task(pid, int(tid))["voluntary_ctxt_switches"])
    return total


def proc_status_task(pid: int, tid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), \
                open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def mountinfo_lines() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


# --- sd_notify listener ------------------------------------------------------------------------

# systemd (252 and later) reads notify messages into a PIPE_BUF buffer and ignores a message
# of 4096 bytes or more as a whole ("Received notify message exceeded maximum size").
SYSTEMD_NOTIFY_MAX = 4096


class Notify:
    """Stands in for systemd's notify socket; `wait(key)` blocks until a message has it.

    Messages systemd would ignore (>= 4096 bytes) are recorded in `oversize` (their sizes) and
    their fields are still returned, so the harness can both time them and flag them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(str(path))
        self.oversize: list[int] = []

    def recv(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        """One message and the CLOCK_MONOTONIC ns when the harness got it."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        data = self.sock.recv(1 << 20)
        t = now_ns()
        if len(data) >= SYSTEMD_NOTIFY_MAX:
            self.oversize.append(len(data))
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        return t, fields

    def wait(self, pred: Callable[[dict[str, str]], bool], timeout: float,
             proc: subprocess.Popen[Any] | None = None) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self.recv(min(left, 0.5))
            if got is None:
                if proc is not None and proc.poll() is not None:
                    return None
                continue
            t, fields = got
            if pred(fields):
                return t

    def drain(self) -> None:
        while self.recv(0) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


# --- the lab ----------------------------------------------------------------------------------

class Lab:
    """A tmpfs base in this (private) namespace, the process registry, and helpers."""

    def __init__(self, keep: bool = False) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="holdmount-bench-"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=8g", "bench",
                        str(self.base)], check=True)
        # A fresh /run for this namespace only: ostree's peer needs /run/ostree-booted, and
        # nothing here may touch the host's /run.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "bench-run", "/run"],
                       check=True)
        Path("/run/ostree-booted").touch()
        self.procs = Procs()
        self.keep = keep
        self._seq = 0
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "HOLDMOUNT_SOCKET"):
            env.pop(k, None)
        self.env = env

    def dir(self, name: str) -> Path:
        self._seq += 1
        d = self.base / f"{self._seq:03d}-{name}"
        d.mkdir(parents=True)
        return d

    def close(self) -> None:
        self.procs.close()
        for _ in range(3):  # autofs mounts below base are gone once automount ended
            if subprocess.run(["umount", "-R", str(self.base)],
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.5)
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def stamp_program(lab: Lab) -> str:
    """Compile the action program: writes CLOCK_MONOTONIC (ns) at its main() to argv[1].

    Static, so no dynamic loader runs between exec and the clock read."""
    src = Path(__file__).with_name("stamp.c")
    out = lab.base / "stamp"
    if not out.exists():
        r = subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:  # no static libc: dynamic is still fine, a bit later
            subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return str(out)


def read_stamp(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


# --- daemon configs ----------------------------------------------------------------------------

def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_ms(lab: Lab, argv: list[str]) -> float:
    """ms from just before the fork to waitpid's return for `argv`, which must exit 0."""
    t0 = now_ns()
    p = lab.procs.start(argv, env=lab.env)
    code = p.wait()
    took = now_ns() - t0
    lab.procs.reap(p)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}")
    return took / 1e6


def daemon_config(path: Path, *, holds: Sequence[tuple[str, str]] = (),
                  marker: str | None = None,
                  actions: Sequence[tuple[str, Sequence[str], str]] = ()) -> Path:
    """Write a daemon config: holds (path, when), actions (name, argv, when)."""
    d = path.parent
    lines = ["[daemon]", f"stamp = {toml_str(str(d / 'failure.stamp'))}",
             "allow_foreign_namespace = true", "", "[control]",
             f"path = {toml_str(str(d / 'control'))}", ""]
    if marker is not None:
        lines += ["[marker]", f"path = {toml_str(marker)}", ""]
    for p, when in holds:
        lines += ["[[hold]]", f"path = {toml_str(p)}", f'when = "{when}"', ""]
    for name, argv, when in actions:
        lines += ["[[action]]", f'name = "{name}"',
                  "exec = [" + ", ".join(toml_str(a) for a in argv) + "]",
                  f'when = "{when}"', ""]
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """`holdmount daemon --config FILE` started by the harness, with its own notify socket."""

    def __init__(self, lab: Lab, config: Path, notify: Notify,
                 cache: Path | None = None) -> None:
        self.lab = lab
        self.notify = notify
        env = dict(lab.env, NOTIFY_SOCKET=str(notify.path))
        if cache is not None:  # as the unit's CacheDirectory= gives it: the parsed-config cache
            env["CACHE_DIRECTORY"] = str(cache)
        self.log = config.parent / "daemon.log"
        self.t_exec = now_ns()
        self.proc = lab.procs.start(holdmount("daemon", "--config", str(config)), env=env,
                                    log=self.log)
        self.pid = self.proc.pid
        self.t_ready: int | None = None
        self.ready_via = ""
        self.ready_bytes = 0  # size of the READY=1 message when systemd would ignore it

    def wait_ready(self, timeout: float = 120.0) -> int:
        """ns from exec to READY=1 at the listener. When READY=1 cannot arrive (the daemon
        logged that sd_notify failed), the fallback is the first moment the daemon sits idle
        in epoll_wait() after logging "ready:" (polled every 1 ms); `ready_via` says which."""
        self.notify.oversize.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.notify.recv(0.001)
            if got is not None:
                if got[1].get("READY") == "1":
                    self.t_ready, self.ready_via = got[0], "READY=1"
                    self.ready_bytes = max(self.notify.oversize, default=0)
                    return self.t_ready - self.t_exec
                continue
            if self.proc.poll() is not None:
                break
            if self._idle() and self._logged_ready_without_notify():
                self.t_ready, self.ready_via = now_ns(), "idle in epoll_wait (READY=1 lost)"
                return self.t_ready - self.t_exec
        self.stop()
        raise RuntimeError(f"daemon not ready: {self.log_text()}")

    def _logged_ready_without_notify(self) -> bool:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return False
        return "sd_notify(" in text and "\nready:" in text

    def _idle(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/syscall", "rb") as f:
                nr = f.read(8).split(b" ", 1)[0]
        except OSError:
            return False
        return nr in (b"232", b"281")  # epoll_wait, epoll_pwait (x86_64)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and keep draining its notify socket until it exits, as systemd
        would: it sends FDSTOREREMOVE=1 per hold while it releases them, and a datagram socket
        queues only net.unix.max_dgram_qlen (10) messages before sendto() blocks."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.notify.recv(0.002)
        return self.lab.procs.stop(self.proc, signal.SIGKILL, 10)


@contextlib.contextmanager
def notify_socket(lab: Lab, name: str = "notify") -> Iterator[Notify]:
    n = Notify(lab.dir(name) / "sock")
    try:
        yield n
    finally:
        n.close()
