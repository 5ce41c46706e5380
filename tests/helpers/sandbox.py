"""Isolation for real-component tests: an own cgroup per test, processes started into it.

Every process a real-component test starts goes into the test's own cgroup (in every hierarchy
systemd-nspawn looks at), so cleanup ends exactly the processes the test started — never anything
else on the machine — and two nspawn runs never share ".../payload".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
PARENT = "holdmount-tests"


def _hierarchies() -> list[Path]:
    out: list[Path] = []
    for h in HIERARCHIES:
        p = Path(h)
        if (p / "cgroup.procs").exists():
            out.append(p)
            if h == "/sys/fs/cgroup":  # pure cgroup2 host: one hierarchy only
                break
    return out


class Cgroup:
    """A fresh cgroup (one per hierarchy). Use `spawn`/`popen_args` to start processes in it."""

    def __init__(self, name: str) -> None:
        self.name = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.dirs = [h / PARENT / self.name for h in _hierarchies()]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def enter_self(self) -> None:
        """Move the calling process in (use from a preexec_fn: child side only)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(list(args), preexec_fn=self.enter_self, **kw)

    def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(list(args), preexec_fn=self.enter_self, **kw)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            for sub in [d, *[p for p in d.rglob("*") if p.is_dir()]]:
                try:
                    out.update(int(x) for x in (sub / "cgroup.procs").read_text().split())
                except OSError:
                    pass
        return out

    def kill_all(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
        """End every process that is still in the cgroup (only ours can be there)."""
        deadline = time.monotonic() + wait
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass


def wait_for(pred: Callable[[], bool], limit: float, step: float = 0.05) -> bool:
    """Poll `pred` every `step` seconds until it is true (True) or `limit` passes (False)."""
    deadline = time.monotonic() + limit
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
