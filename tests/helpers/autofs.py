"""A real autofs automount for tests: Debian's `automount` in a private mount namespace.

`AutofsLab` writes a master map and a direct map (tmpfs entries, short idle timeout), starts
`automount -f` inside `unshare -m --propagation private` in the test's own cgroup and session
(processes in the daemon's process group are in "oz mode" and never trigger mounts), and tears it
all down afterwards. The mounts exist only in that namespace: commands that should see them run
through `lab.cmd(...)` (nsenter into the namespace); the test reads the namespace's mount table
from /proc/PID/mountinfo.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from sandbox import Cgroup, wait_for

from holdmount.mounts import MountTable

DEFAULT_ENTRY = "-fstype=tmpfs,size=4m,mode=0755 :tmpfs"


class AutofsLab:
    def __init__(self, base: Path, entries: Mapping[str, str], timeout: int = 2) -> None:
        self.base = base
        self.timeout = timeout
        self.mp = {name: str(base / "mnt" / name) for name in entries}
        self.cgroup = Cgroup("autofs")
        master = base / "auto.master"
        direct = base / "auto.direct"
        master.write_text(f"/- {direct} --timeout={timeout}\n")
        direct.write_text("".join(f"{self.mp[n]} {opts}\n" for n, opts in entries.items()))
        self.log = open(base / "automount.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = self.cgroup.popen(
            ["unshare", "-m", "--propagation", "private",
             "automount", "-f", "-d", "-C", "-t", str(timeout), "-p", str(base / "am.pid"),
             str(master)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid  # the automount daemon
        self.ns_pid = self.pid  # a process inside the namespace (see keep_namespace)
        if not wait_for(lambda: all(self.trigger_present(n) for n in self.mp), 15):
            self.stop()
            raise RuntimeError(f"automount did not set up its triggers: {self.log_text()}")

    # --- looking at the namespace ----------------------------------------------------------
    def table(self) -> MountTable:
        return MountTable.read(self.ns_pid)

    def trigger_present(self, name: str) -> bool:
        return any(m.is_autofs for m in self.table().at(self.mp[name]))

    def mounted(self, name: str) -> bool:
        """The real filesystem (not just the trigger) is mounted on the point."""
        return self.table().is_real_mounted(self.mp[name])

    def wait_expired(self, name: str, limit: float) -> float | None:
        t0 = time.monotonic()
        return (time.monotonic() - t0) if wait_for(lambda: not self.mounted(name), limit) \
            else None

    def log_text(self) -> str:
        try:
            return (self.base / "automount.log").read_text()[-2000:]
        except OSError:
            return ""

    # --- running things inside it ------------------------------------------------------------
    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.ns_pid), "-m", "--", *args]

    def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return self.cgroup.run(self.cmd(args), **kw)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return self.cgroup.popen(self.cmd(args), **kw)

    def py(self, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a Python snippet (with holdmount importable) inside the namespace."""
        import sys

        return self.run([sys.executable, "-c", code, *args], **kw)

    def keep_namespace(self) -> None:
        """Start a process that keeps the namespace alive even if the daemon dies."""
        keeper = self.popen(["sleep", "3600"])
        # nsenter execs sleep in place once it has joined the namespace
        assert wait_for(lambda: os.readlink(f"/proc/{keeper.pid}/ns/mnt")
                        == os.readlink(f"/proc/{self.pid}/ns/mnt"), 5)
        self.keeper = keeper
        self.ns_pid = keeper.pid

    # --- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.cgroup.remove()
        self.log.close()


def lab_base() -> Path:
    """A directory every user can traverse (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="holdmount-autofs-"))
    base.chmod(0o755)
    return base


@pytest.fixture
def autofs_factory() -> Iterator[Callable[..., AutofsLab]]:
    """Make labs with custom entries: autofs_factory({"a": DEFAULT_ENTRY}, timeout=2)."""
    if shutil.which("automount") is None:
        pytest.skip("automount not installed (run scripts/setup)")
    labs: list[AutofsLab] = []
    bases: list[Path] = []

    def make(entries: Mapping[str, str] | None = None, timeout: int = 2) -> AutofsLab:
        base = lab_base()
        bases.append(base)
        lab = AutofsLab(base, entries or {"a": DEFAULT_ENTRY}, timeout)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def autofs(autofs_factory: Callable[..., AutofsLab]) -> AutofsLab:
    """One direct-map tmpfs automount "a" with a 2 s idle timeout."""
    return autofs_factory()
