"""What doctor reads from /proc: which processes keep a mount busy, whether an automount
daemon is alive, stopped or gone, and which mount namespace to compare ours with."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from holdmount import syscalls
from holdmount.mounts import Mount
from holdmount.paths import under


def pids() -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[2])
    except (IndexError, ValueError):
        return None


def ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def automount_daemon_state(trigger: Mount) -> tuple[str, int | None]:
    """alive / stopped / dead / unknown, from the trigger's pgrp= (the daemon's process group,
    in the daemon's pid namespace — "unknown" when it is not ours)."""
    value = trigger.options.get("pgrp", "")
    if not value.isdigit():
        return "unknown", None
    pgrp = int(value)
    try:
        os.killpg(pgrp, 0)
    except ProcessLookupError:
        return "dead", pgrp
    except PermissionError:
        return "alive", pgrp
    states = [s for s in (proc_stat(p) for p in pids()) if s is not None and s[1] == pgrp]
    if states and all(letter in "Tt" for letter, _ in states):
        return "stopped", pgrp
    return "alive", pgrp


@dataclasses.dataclass(frozen=True)
class User:
    pid: int
    comm: str
    how: str  # "cwd", "root", "fd N"


def users_of(mount: Mount, *, skip: Iterable[int] = ()) -> tuple[list[User], int]:
    """Processes with their cwd, root or an open fd on `mount` (by mount id for fds; by
    path and device for cwd/root). Returns (users, processes we could not look into)."""
    skip_set = set(skip) | {os.getpid()}
    try:
        dev = os.stat(mount.mount_point).st_dev if mount.dev else None
    except OSError:
        dev = None
    users: list[User] = []
    hidden = 0
    for pid in pids():
        if pid in skip_set:
            continue
        found, denied = _users_in(pid, mount, dev)
        users += found
        hidden += denied
    return users, hidden


def _users_in(pid: int, mount: Mount, dev: int | None) -> tuple[list[User], bool]:
    """How one process uses `mount` (cwd, root, fds), and whether /proc denied us a look."""
    mp = mount.mount_point
    hows: list[str] = []
    denied = False
    for how in ("cwd", "root"):
        try:
            link = os.readlink(f"/proc/{pid}/{how}")
            if under(link, mp) and (how != "root" or link != "/") and \
                    (dev is None or os.stat(f"/proc/{pid}/{how}").st_dev == dev):
                hows.append(how)
        except PermissionError:
            denied = True
        except OSError:
            pass
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        denied, fds = True, []
    except OSError:
        fds = []
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if under(link, mp) and syscalls.fd_mnt_id(int(fd), pid) == mount.mnt_id:
                hows.append(f"fd {fd}")
        except (OSError, ValueError):
            continue
    name = comm(pid) if hows else ""
    return [User(pid, name, how) for how in hows], denied


def reference_namespace() -> tuple[int, str, int] | None:
    """(pid, comm, mnt ns) to compare ours with: PID 1's, or — where /proc/1/ns/mnt cannot be
    read (some sandboxes deny it even to root) — the oldest ancestor of ours whose namespace can
    be read."""
    try:
        return 1, comm(1), syscalls.mount_ns_id(1)
    except OSError:
        pass
    best: tuple[int, str, int] | None = None
    pid: int | None = os.getppid()
    seen = 0
    while pid and pid > 1 and seen < 64:
        try:
            best = (pid, comm(pid), syscalls.mount_ns_id(pid))
        except OSError:
            pass
        pid = ppid(pid)
        seen += 1
    return best
