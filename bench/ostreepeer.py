"""ostree's own hold as a peer: `ostree admin finalize-staged --hold` (Debian's ostree 2022.7).

A throw-away sysroot (`ostree admin init-fs SR`, `ostree admin os-init --sysroot=SR debian`)
whose SR/boot is one more entry of the bench's direct automount map, so ostree holds a real
automount like holdmount does. ostree decides it runs on a booted ostree system from
/run/ostree-booted: the harness mounts a tmpfs on /run in its private namespace (`Lab`) and
creates that file there. ostree then opens SR/boot, sleeps in pause() and dies of SIGTERM.

ostree's unit is Type=exec, so there is no READY=1: for start-up the harness watches
/proc/PID/syscall and takes the first moment ostree sits in pause() (syscall 34) with SR/boot
open — polled every ~0.1 ms, so the number is late by at most about that much.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lab import Lab, now_ns

SYS_PAUSE = 34  # x86_64


def available() -> str | None:
    """None when the peer can run here, else why not."""
    if shutil.which("ostree") is None:
        return "ostree is not installed (scripts/setup installs it)"
    if os.uname().machine != "x86_64":
        return "the pause() syscall number used to spot ostree's idle state is x86_64's"
    return None


def sysroot(lab: Lab) -> Path:
    sr = lab.dir("ostree") / "SR"
    sr.mkdir()
    subprocess.run(["ostree", "admin", "init-fs", str(sr)], check=True, capture_output=True)
    subprocess.run(["ostree", "admin", "os-init", f"--sysroot={sr}", "debian"], check=True,
                   capture_output=True)
    return sr


def start(lab: Lab, sr: Path) -> subprocess.Popen[Any]:
    return lab.procs.start(["ostree", "admin", "finalize-staged", "--hold", f"--sysroot={sr}"],
                           env=lab.env, log=sr.parent / "ostree.log")


def holds_boot(pid: int, sr: Path) -> bool:
    boot = str(sr / "boot")
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == boot
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def wait_paused(proc: subprocess.Popen[Any], sr: Path, limit: float = 30.0) -> int | None:
    """CLOCK_MONOTONIC ns when ostree first sat in pause() holding SR/boot (busy poll)."""
    deadline = time.monotonic() + limit
    path = f"/proc/{proc.pid}/syscall"
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                first = f.read(8).split(b" ", 1)[0]
        except OSError:
            return None
        if first == str(SYS_PAUSE).encode():
            t = now_ns()
            return t if holds_boot(proc.pid, sr) else None
        if proc.poll() is not None:
            return None
    return None
