"""The service manager's fd store: names for held fds, and the fds handed back at a restart.

systemd keeps fds a service sends with `FDSTORE=1` (up to FileDescriptorStoreMax=) while the
service is restarted after a crash, and passes them to the next instance as LISTEN_FDS (from fd
3 on) with their names in LISTEN_FDNAMES, colon-separated. A held fd kept there keeps its mount
busy while no daemon runs: the automount cannot expire across `kill -9` + RestartSec=.

Names: an FDNAME is at most 255 printable ASCII characters without ':' — a path is not (any
length, any bytes, ':' allowed). So a hold's name is `hold-` + the first 32 hex digits of the
SHA-256 of the path; the configuration, read again at start, maps names back to paths. The
name says nothing about *what* is held: every adopted fd is verified before it is used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from collections.abc import Mapping

from holdmount.log import log

PREFIX = "hold-"
SD_LISTEN_FDS_START = 3


def name_for(path: str) -> str:
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{PREFIX}{digest[:32]}"


@dataclasses.dataclass(frozen=True)
class Stored:
    fd: int
    name: str


def listen_fds(environ: Mapping[str, str], pid: int | None = None) -> list[Stored]:
    """The fds passed to this process (LISTEN_PID must be ours), made close-on-exec."""
    if environ.get("LISTEN_PID", "") != str(pid if pid is not None else os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        log.warning("LISTEN_FDS=%r is not a number: ignoring passed fds",
                    environ.get("LISTEN_FDS"))
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":") if count > 0 else []
    out: list[Stored] = []
    for i in range(max(0, count)):
        fd = SD_LISTEN_FDS_START + i
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            log.warning("LISTEN_FDS: fd %d is not open", fd)
            continue
        out.append(Stored(fd, names[i] if i < len(names) and names[i] else "unknown"))
    return out
