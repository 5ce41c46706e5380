"""A real systemd as PID 1 in systemd-nspawn, for tests: 252 on the host's Debian 12 root, 257 on
a cached Debian 13 root (tests/helpers/debian13.py); `OsRoot` says which (`root_container_factory`).

Layout of one `Container` (see docs/nspawn.md):

    host /tmp/holdmount-nspawn-XXXX/            base dir on the host (console logs live here)
      ns/                                       tmpfs, mounted only in the keeper's namespace
        upper/ work/                            the overlay's upper layer: persists across boots
        root/                                   overlay(lowerdir=/ or the Debian 13 root)

A *keeper* process (`unshare -m --propagation private sh -c ...`, ending in `exec cat`) owns a
private mount namespace holding the tmpfs, the overlay and a tmpfs over /run/systemd (so nspawn's
lock and propagation dirs never touch the host's /run). systemd-nspawn is started into that
namespace with `nsenter -t KEEPER -m`, once per boot, so one root can be booted again and again.
The host reaches the root through `/proc/KEEPER/root/...` (`Container.root`). The keeper reads
its stdin, a pipe from the test process: when the test process dies, the keeper sees EOF, exits,
and the namespace with every mount in it goes away — a crash cannot leave mounts on the host.

Every process (keeper, nspawn, the container, every `exec`) is started in the Container's own
cgroup (`sandbox.Cgroup`, in the unified and the name=systemd hierarchy), so `--keep-unit` puts
the container into "<our cgroup>/payload" and cleanup SIGKILLs exactly what this object started.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from sandbox import Cgroup, wait_for

from holdmount.mounts import MountTable

TEST_TARGET = "holdmount-test.target"
UNIT_DIR = "/etc/systemd/system"
REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
# The checkout (and its venv) is bound in at its own path: the overlay of / would show it too,
# but not when it lives under /tmp (nspawn mounts a tmpfs there) or on another filesystem.
REPO_BIND = f"--bind-ro={REPO}:{REPO}"

# A file's content, or (content, mode) for another mode than 0644 (e.g. 0o755 for a script).
FileSpec = str | bytes | tuple[str | bytes, int]

_KEEPER_SCRIPT = r"""
set -eu
ns=$1   # $2: our cgroup2 directory (with cgroup.kill), or empty; $3: the lower layer
mount -t tmpfs -o size=1g,mode=0755 holdmount-nspawn "$ns"
mkdir "$ns/upper" "$ns/work" "$ns/root"
mount -t overlay -o "lowerdir=$3,upperdir=$ns/upper,workdir=$ns/work" holdmount-nspawn "$ns/root"
# nspawn keeps lock files and a propagation dir under /run/systemd/nspawn: private ones.
[ -d /run/systemd ] || mkdir -p /run/systemd
mount -t tmpfs -o size=4m,mode=0755 holdmount-nspawn-run /run/systemd
echo ready
# Wait for EOF on stdin: the test process closed the pipe (cleanup) or died (crash). Then end
# every process of our cgroup (nspawn, the container, execs, this shell): the namespace and
# every mount in it go away with the last of them.
# (the shell's own `read`: a single process, nothing else of ours to spare from a kill)
while IFS= read -r _; do :; done
[ -z "${2:-}" ] || echo 1 > "$2/cgroup.kill"
"""



@dataclasses.dataclass(frozen=True)
class OsRoot:
    """What a container boots: the overlay's lower layer and where holdmount is in it."""

    name: str  # "debian12" (the host's own root) or "debian13"
    lower: Path  # host path of the root filesystem
    holdmount: str  # the holdmount CLI inside the container
    python: str  # a Python with holdmount importable, inside the container
    binds: tuple[str, ...] = ()  # extra systemd-nspawn --bind/--bind-ro options
    env: tuple[tuple[str, str], ...] = ()  # extra environment for systemd-nspawn

    def host_path(self, path: str) -> Path:
        """Host path of a file of the (unchanged) root."""
        return self.lower / path.lstrip("/")


HOST_ROOT = OsRoot("debian12", Path("/"), str(REPO / ".venv" / "bin" / "holdmount"), VENV_PYTHON)
ROOT_NAMES = ("debian12", "debian13")
ROOTS_RAN: set[str] = set()  # names of the roots booted in this session (conftest reports them)


def debian13_root() -> OsRoot:
    from debian13 import VENV_IN_ROOT, ensure_root  # builds it on first use (minutes)
    lower, venv = ensure_root()
    return OsRoot("debian13", lower, "/usr/bin/holdmount",
                  f"{VENV_IN_ROOT}/bin/python", binds=(f"--bind-ro={venv}:{VENV_IN_ROOT}",),
                  # the host's nspawn 252 on a hybrid cgroup host: systemd 257 needs cgroup v2
                  env=(("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1"),))


def os_root(name: str) -> OsRoot:
    if name == "debian12":
        return HOST_ROOT
    if name == "debian13":
        return debian13_root()
    raise ValueError(f"unknown root {name!r}")


_STATES_UP = ("running", "degraded")
_STATES_FAILED = ("maintenance", "stopping")


class ContainerError(RuntimeError):
    """Booting, controlling or stopping the container failed; the message has the console log."""


def _machine_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "c"
    return f"hm-{clean}-{uuid.uuid4().hex[:6]}"


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_])")  # CSI sequences and ESC M etc.


def _clean_console(raw: str) -> str:
    """Console text without colour codes and the pty's CR (and the blank lines they make)."""
    text = _ANSI.sub("", raw).replace("\r", "")
    return re.sub(r"\n{2,}", "\n", text)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = _clean_console(path.read_text(errors="replace"))
    except OSError as e:
        return f"(no console log: {e})"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "WATCHDOG_PID",
                "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"):
        env.pop(var, None)
    return env


class Container:
    """One systemd-nspawn container whose root is an overlay of the host's `/`.

    units: unit name -> text, written to /etc/systemd/system in the root.
    files: absolute container path -> content (mode 0644) or (content, mode); parents created.
    wants: units pulled in (Wants=) by the test target that default.target points at.
    binds: extra `--bind=` specs ("SRC[:DST[:OPTS]]", host paths as seen at construction).
    extra_args: appended to the systemd-nspawn command line.
    os_root: the root to boot (default: the host's own Debian 12).
    """

    def __init__(self, name: str, *, units: Mapping[str, str] = {},
                 files: Mapping[str, FileSpec] = {},
                 wants: Sequence[str] = (), binds: Sequence[str] = (),
                 extra_args: Sequence[str] = (), os_root: OsRoot = HOST_ROOT) -> None:
        self.name = name
        self.os = os_root
        self.machine = _machine_name(name)
        self.binds = list(binds)
        self.extra_args = list(extra_args)  # options only: init_args follow them
        # read-only, not the recipe's pipe: with pipe the container has no /dev/console and
        # systemd's stdio is /dev/null, so the console log would hold nspawn's own errors only.
        self.console_mode = "read-only"
        self.init_args = ["systemd.show_status=yes"]
        self.cgroup = Cgroup(f"nspawn-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)[:40]}")
        self.base = Path(tempfile.mkdtemp(prefix="holdmount-nspawn-"))
        self.base.chmod(0o755)
        self.ns_dir = self.base / "ns"
        self.ns_dir.mkdir()
        self.boots = 0
        self.console_log: Path | None = None
        self.boot_seconds: list[float] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._init_pid: int | None = None
        self._keeper: subprocess.Popen[str] | None = None
        self._cleaned = False
        try:
            self._start_keeper()
            self._prepare(units, files, wants)
        except BaseException:
            self.cleanup()
            raise

    # --- the root ------------------------------------------------------------------------------
    def _start_keeper(self) -> None:
        self._keeper = self.cgroup.popen(
            ["unshare", "-m", "--propagation", "private",
             "sh", "-c", _KEEPER_SCRIPT, "keeper", str(self.ns_dir), self._cgroup_kill_dir(),
             str(self.os.lower)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env=_env())
        assert self._keeper.stdout is not None
        line = self._keeper.stdout.readline()  # "ready", or EOF when the script failed
        if line.strip() != "ready":
            err = ""
            if self._keeper.stderr is not None:
                try:
                    self._keeper.wait(10)
                    err = self._keeper.stderr.read()
                except subprocess.TimeoutExpired:
                    pass
            raise ContainerError(f"mount tmpfs+overlay for {self.base}: {err.strip() or line!r}")

    def _cgroup_kill_dir(self) -> str:
        for d in self.cgroup.dirs:
            if (d / "cgroup.kill").exists():
                return str(d)
        return ""

    @property
    def keeper_pid(self) -> int:
        if self._keeper is None or self._keeper.poll() is not None:
            raise ContainerError(f"container {self.name}: its mount namespace is gone")
        return self._keeper.pid

    @property
    def root(self) -> Path:
        """Host path of the container's root (the overlay's merged dir, via the keeper)."""
        return Path(f"/proc/{self.keeper_pid}/root") / str(self.ns_dir / "root").lstrip("/")

    @property
    def upper(self) -> Path:
        """Host path of the overlay's upper layer: everything the container changed."""
        return Path(f"/proc/{self.keeper_pid}/root") / str(self.ns_dir / "upper").lstrip("/")

    def path(self, container_path: str) -> Path:
        """Host path of an absolute path inside the container's root."""
        if not container_path.startswith("/"):
            raise ValueError(f"container path must be absolute: {container_path!r}")
        return self.root / container_path.lstrip("/")

    def write_file(self, container_path: str, spec: FileSpec) -> None:
        """Write a file into the root (works before a boot, while running and after poweroff)."""
        content, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
        p = self.path(container_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        tmp = p.with_name(f".{p.name}.hm-tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        os.replace(tmp, p)

    def add_unit(self, name: str, text: str) -> None:
        self.write_file(f"{UNIT_DIR}/{name}", text)

    def _symlink(self, container_path: str, target: str) -> None:
        p = self.path(container_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(target)

    def _prepare(self, units: Mapping[str, str], files: Mapping[str, FileSpec],
                 wants: Sequence[str]) -> None:
        # A fresh machine-id ("host and machine ids are equal" otherwise) and a persistent journal
        # that stays readable in the upper layer after the container is gone.
        mid = subprocess.run(["systemd-id128", "new"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        self.write_file("/etc/machine-id", mid + "\n")
        # the host's /etc/hostname would name the container like the host in every journal line
        self.write_file("/etc/hostname", self.machine + "\n")
        self.path("/var/log/journal").mkdir(parents=True, exist_ok=True)
        # The host's own enabled timers (apt-daily, fstrim, man-db, ...) must not run in here.
        host_timers = self.os.host_path(UNIT_DIR) / "timers.target.wants"
        if host_timers.is_dir():
            for t in sorted(host_timers.iterdir()):
                self._symlink(f"{UNIT_DIR}/{t.name}", "/dev/null")
        wants_line = "".join(f"Wants={u}\n" for u in wants)
        self.add_unit(TEST_TARGET, (
            "[Unit]\n"
            "Description=holdmount test target\n"
            "Requires=basic.target\n"
            "After=basic.target\n"
            f"{wants_line}"
            "AllowIsolate=yes\n"))
        self._symlink(f"{UNIT_DIR}/default.target", f"{UNIT_DIR}/{TEST_TARGET}")
        for unit, text in units.items():
            self.add_unit(unit, text)
        for path, spec in files.items():
            self.write_file(path, spec)

    # --- running -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def init_pid(self) -> int:
        """Host pid of the container's PID 1 (systemd)."""
        if self._init_pid is None or not self.running:
            raise ContainerError(f"container {self.name} is not running")
        return self._init_pid

    @property
    def nspawn_pid(self) -> int:
        if self._proc is None:
            raise ContainerError(f"container {self.name} was never booted")
        return self._proc.pid

    def _find_init(self) -> int | None:
        """The process of our cgroup that is PID 1 of a child pid namespace."""
        for pid in sorted(self.cgroup.pids()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if m and len(m.group(1).split()) >= 2 and m.group(1).split()[-1] == "1":
                return pid
        return None

    def boot(self, timeout: float = 60) -> None:
        """Start systemd-nspawn; return when `systemctl is-system-running` is running/degraded."""
        if self.running:
            raise ContainerError(f"container {self.name} is already running")
        self.boots += 1
        self.console_log = self.base / f"console-{self.boots}.log"
        self._console = open(self.console_log, "wb")  # noqa: SIM115 - closed in _reap()
        args = ["nsenter", "-t", str(self.keeper_pid), "-m", "--",
                "systemd-nspawn", "-D", str(self.ns_dir / "root"), "-M", self.machine,
                "--boot", "--register=no", "--keep-unit", f"--console={self.console_mode}",
                "--link-journal=no", "--bind=/dev/autofs",
                *([] if REPO_BIND in self.extra_args else [REPO_BIND]),
                *(f"--bind={b}" for b in self.binds), *self.os.binds, *self.extra_args,
                # arguments for the container's systemd (parsed like a kernel command line):
                # "[  OK  ] ..." status lines on the console, which boot errors include
                *self.init_args]
        t0 = time.monotonic()
        self._init_pid = None
        ROOTS_RAN.add(self.os.name)
        self._proc = self.cgroup.popen(args, stdin=subprocess.DEVNULL, stdout=self._console,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**_env(), **dict(self.os.env)})
        deadline = t0 + timeout
        state = "(no init yet)"
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.kill()  # nspawn's helpers may outlive it for a moment
                raise ContainerError(self._msg(f"systemd-nspawn exited with {rc} during boot"))
            if self._init_pid is None:
                self._init_pid = self._find_init()
            if self._init_pid is not None:
                r = self._run_in(["systemctl", "is-system-running"], timeout=10, check=False)
                state = r.stdout.strip() or r.stderr.strip()
                if state in _STATES_UP:
                    break
                if state in _STATES_FAILED:
                    self.kill()
                    raise ContainerError(self._msg(f"boot ended in state {state!r}"))
            if time.monotonic() > deadline:
                self.kill()
                raise ContainerError(self._msg(
                    f"boot did not finish within {timeout}s (last state: {state!r})"))
            time.sleep(0.05)
        self.boot_seconds.append(time.monotonic() - t0)

    def _msg(self, what: str) -> str:
        log = self.console_log
        return (f"container {self.name} (boot {self.boots}, {self.machine}): {what}\n"
                f"--- console {log} ---\n{_tail(log) if log else ''}")

    def _nsenter(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init_pid), "-m", "-p", "-u", "-i", "--", *args]

    def _run_in(self, args: Sequence[str], *, input: str | None = None, timeout: float = 60,
                check: bool = False, capture_output: bool = True,
                **kw: Any) -> subprocess.CompletedProcess[str]:
        """subprocess.run for nsenter + ARGS, in our cgroup and a session of its own.

        nsenter -p forks: on a timeout, killing nsenter alone would leave its child running in
        the container, so the whole process group is killed.
        """
        if capture_output:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("env", _env())
        kw["stdin"] = subprocess.PIPE if input is not None else kw.get("stdin", subprocess.DEVNULL)
        cmd = self._nsenter(args)
        with self.cgroup.popen(cmd, text=True, start_new_session=True, **kw) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                out, err = p.communicate()
                raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
        r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        if check:
            r.check_returncode()
        return r

    def exec(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (nsenter -m -p -u -i into PID 1's namespaces).

        Text, output captured, stdin /dev/null, timeout=60 unless given (on timeout the command is
        SIGKILLed and subprocess.TimeoutExpired raised); keywords: input=, timeout=, check=,
        capture_output=, and Popen's (env=, stdout=, ...). The process runs in our cgroup (not in
        the container's) and in a session of its own.
        """
        return self._run_in(args, **kw)

    def py(self, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet with the project's venv (holdmount importable) in the container."""
        return self._run_in([self.os.python, "-c", code, *args], **kw)

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self._run_in(["systemctl", *args], check=check)

    def mountinfo(self) -> MountTable:
        """The container's mount table (from /proc/INIT/mountinfo)."""
        return MountTable.read(self.init_pid)

    def wait_for(self, pred: Callable[[], bool], limit: float, step: float = 0.1) -> bool:
        return wait_for(pred, limit, step)

    # --- stopping ------------------------------------------------------------------------------
    def poweroff(self, timeout: float = 120) -> int:
        """Power off (bypassing logind), wait for systemd-nspawn to exit, return its exit code.

        On timeout the container is left running (inspect it, then `kill()` or `cleanup()`) and
        ContainerError is raised.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ContainerError(f"container {self.name} is not running")
        self._run_in(["systemctl", "start", "poweroff.target",
                      "--job-mode=replace-irreversibly", "--no-block"], timeout=30, check=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(self._msg(f"poweroff did not finish within {timeout}s")) from None
        self._reap()
        return rc

    def kill(self) -> None:
        """SIGKILL the container and nspawn (not the keeper: the root stays readable)."""
        survivors = self._kill_cgroup(
            spare={self._keeper.pid} if self._keeper is not None else set())
        self._reap()
        if survivors:
            raise ContainerError(self._msg(f"pids {survivors} survived SIGKILL (D state?)"))

    def _kill_cgroup(self, spare: set[int], limit: float = 20) -> list[int]:
        """SIGKILL every process of our cgroup but `spare`; return when all of them have exited.

        Through pidfds: a pid is checked to be in our cgroup after its pidfd is open, so a reused
        pid is never signalled; and a killed pid-namespace init that already left its cgroup
        (it waits for its namespace to empty) is still waited for.
        """
        fds: dict[int, int] = {}
        deadline = time.monotonic() + limit
        try:
            while time.monotonic() < deadline:
                new = self.cgroup.pids() - spare - fds.keys()
                if self._proc is not None and self._proc.poll() is None:
                    new.add(self._proc.pid)
                new -= fds.keys()
                if not new and self._all_exited(fds, 0):
                    return []
                for pid in new:
                    try:
                        fd = os.pidfd_open(pid)
                    except OSError:
                        continue
                    try:
                        ours = self.cgroup.name in Path(f"/proc/{pid}/cgroup").read_text()
                    except OSError:
                        ours = False
                    if ours or (self._proc is not None and pid == self._proc.pid):
                        fds[pid] = fd
                        try:
                            signal.pidfd_send_signal(fd, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    else:
                        os.close(fd)
                if self._proc is not None:
                    self._proc.poll()  # reap nspawn (our child) as soon as it is gone
                self._all_exited(fds, 0.05)
            return sorted(pid for pid, fd in fds.items() if not self._all_exited({pid: fd}, 0))
        finally:
            for fd in fds.values():
                os.close(fd)

    @staticmethod
    def _all_exited(fds: Mapping[int, int], wait: float) -> bool:
        if not fds:
            if wait:
                time.sleep(wait)
            return True
        poller = select.poll()
        for fd in fds.values():
            poller.register(fd, select.POLLIN)
        ready = poller.poll(int(wait * 1000))
        return len(ready) == len(fds)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._init_pid = None
        if self._console is not None:
            self._console.close()
            self._console = None

    # --- reading after the fact ----------------------------------------------------------------
    def journal(self, *args: str) -> str:
        """journalctl -D ROOT/var/log/journal --no-pager ARGS (works after poweroff too)."""
        r = subprocess.run(["journalctl", "-D", str(self.root / "var/log/journal"),
                            "--no-pager", *args],
                           capture_output=True, text=True, timeout=60, env=_env())
        if r.returncode != 0 and not r.stdout:
            raise ContainerError(f"journalctl {' '.join(args)}: rc={r.returncode}: {r.stderr}")
        return r.stdout

    def console(self) -> str:
        """The console output of the current (or last) boot (colour codes and CRs removed)."""
        if self.console_log is None:
            return ""
        return _clean_console(self.console_log.read_text(errors="replace"))

    def cleanup(self) -> None:
        """Stop the container if running (SIGKILL, our cgroup only), drop the mounts, remove.

        Idempotent. Raises ContainerError if a process survives SIGKILL for 20 s.
        """
        if self._cleaned:
            return
        if self._proc is not None:
            self.kill()  # raises if something survives: then nothing more can be done here
        if self._keeper is not None:
            if self._keeper.poll() is None and self._keeper.stdin is not None:
                try:
                    self._keeper.stdin.close()  # EOF: the keeper ends, the namespace goes
                except OSError:
                    pass
            try:
                self._keeper.wait(10)
            except subprocess.TimeoutExpired:
                pass  # _kill_cgroup below
        # stragglers (e.g. the child of an nsenter whose exec timed out), keeper included
        survivors = self._kill_cgroup(spare=set())
        if self._keeper is not None:
            try:
                self._keeper.wait(5)  # reap it
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._keeper.stdout, self._keeper.stderr):
                if stream is not None:
                    stream.close()
        if survivors:
            raise ContainerError(f"container {self.name}: pids {survivors} survived SIGKILL "
                                 f"(D state?); cgroup {self.cgroup.dirs} left in place")
        self.cgroup.remove()
        shutil.rmtree(self.base, ignore_errors=True)
        self._cleaned = True

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def nspawn_available() -> bool:
    return shutil.which("systemd-nspawn") is not None


def _factory(root: OsRoot) -> Iterator[Callable[..., Container]]:
    if not nspawn_available():
        pytest.skip("systemd-nspawn not installed (run scripts/setup)")
    made: list[Container] = []

    def make(name: str, **kw: Any) -> Container:
        kw.setdefault("os_root", root)
        c = Container(name, **kw)
        made.append(c)
        return c

    yield make
    errors: list[BaseException] = []
    for c in made:
        try:
            c.cleanup()
        except Exception as e:  # clean up the others anyway
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture(name="container_factory")
def container_factory() -> Iterator[Callable[..., Container]]:
    """Make containers: `c = container_factory("name", units={...}, wants=[...]); c.boot()`.

    Every container is cleaned up after the test (container killed, mounts gone, cgroup removed).
    """
    yield from _factory(HOST_ROOT)


@pytest.fixture(name="os_root", scope="session", params=ROOT_NAMES)
def os_root_fixture(request: pytest.FixtureRequest) -> OsRoot:
    """Each root in turn (the Debian 13 one is built on first use; tests/helpers/debian13.py)."""
    return os_root(request.param)


@pytest.fixture(name="debian13_container_factory")
def debian13_container_factory() -> Iterator[Callable[..., Container]]:
    """`container_factory` on the Debian 13 root only (systemd 257: e.g. soft-reboot)."""
    yield from _factory(debian13_root())


@pytest.fixture(name="root_container_factory")
def root_container_factory(os_root: OsRoot) -> Iterator[Callable[..., Container]]:
    """`container_factory` for the test's root (`os_root`): the test runs once per root."""
    yield from _factory(os_root)
