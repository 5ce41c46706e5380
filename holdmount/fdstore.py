"""The service manager's fd store: names for held fds, and the fds handed back at a restart.

systemd keeps fds a service sends with `FDSTORE=1` (up to FileDescriptorStoreMax=) while the
service is restarted after a crash, and passes them to the next instance as LISTEN_FDS (from fd
3 on) with their names in LISTEN_FDNAMES, colon-separated. A held fd kept there keeps its mount
busy while no daemon runs: the automount cannot expire across `kill -9` + RestartSec=.

Names: an FDNAME is at most 255 printable ASCII characters without ':' — a path is not (any
length, any bytes, ':' allowed). So a hold's name is `hold-` + the path with '%', ':' and every
byte outside printable ASCII (space included) percent-escaped (`hold-/boot`,
`hold-/srv/a%3Ab`), readable in `systemd-analyze fdstore`; a path whose escaped form is longer
than 255 characters is named `hold-` + the first 32 hex digits of its SHA-256. Earlier
versions named every hold that way (`legacy_name`): such names are still matched, so fds stored
before an upgrade are adopted. hashlib maps OpenSSL's libcrypto (~3.5 MiB of RSS), so it is
imported only for those. Both forms depend on the path alone: the configuration, read again at
start, maps names back to paths. The name says nothing about *what* is held: every adopted fd
is verified before it is used (`Adopted.adopt`); the ones no hold claims are dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping

from holdmount import hold, record
from holdmount.errors import Failure
from holdmount.hold import HoldState
from holdmount.log import log
from holdmount.mounts import MountTable
from holdmount.notify import Notifier
from holdmount.record import Record

PREFIX = "hold-"
FDNAME_MAX = 255  # systemd's limit
SD_LISTEN_FDS_START = 3
_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("%"), ord(":")}
_HEX = frozenset("0123456789abcdef")


def name_for(path: str) -> str:
    """The FDNAME of the hold on `path`: the escaped path, or its hash when that is too long."""
    raw = path.encode("utf-8", "surrogateescape")
    escaped = "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in raw)
    name = PREFIX + escaped
    # an escaped absolute path starts with '/': it never looks like a hashed name
    if escaped.startswith("/") and len(name) <= FDNAME_MAX:
        return name
    return legacy_name(path)


def legacy_name(path: str) -> str:
    """`hold-` + 32 hex digits of the path's SHA-256: long paths' names, and every name before
    escaped paths (kept so fds stored by an older daemon are still adopted)."""
    import hashlib  # lazily: it loads libcrypto

    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{PREFIX}{digest[:32]}"


def is_legacy(name: str) -> bool:
    """`hold-` + 32 lowercase hex digits (checked by hand: `re` costs the daemon ~1 MiB)."""
    digits = name[len(PREFIX):]
    return name.startswith(PREFIX) and len(digits) == 32 and _HEX.issuperset(digits)


class Stored(Record):
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


class Adopted:
    """The fds the service manager handed back at this start, until each is adopted by the hold
    it was stored for or dropped. `keep` is `[daemon] fdstore`: without it every one is
    dropped and nothing new is stored."""

    def __init__(self, notifier: Notifier, *, keep: bool) -> None:
        self.notifier = notifier
        self.keep = keep
        self.stored: dict[str, Stored] = {}

    def collect(self, environ: Mapping[str, str]) -> None:
        """Take the fds passed to this process (at start, before any hold is taken)."""
        for s in listen_fds(environ):
            if not self.keep:
                log.info("fd store: dropping %s (fdstore = false)", s.name)
                self._forget(s)
            elif s.name in self.stored:
                log.warning("fd store: %s passed twice: dropping one", s.name)
                self._forget(s)
            else:
                self.stored[s.name] = s

    def _forget(self, s: Stored) -> None:
        with contextlib.suppress(OSError):
            os.close(s.fd)
        self.notifier.fdstore_remove(s.name)

    def drop_unclaimed(self) -> None:
        """Stored fds no hold claimed (a path gone from the config, a disarmed staged hold)."""
        for s in self.stored.values():
            log.info("fd store: %s is not held any more: dropped", s.name)
            self._forget(s)
        self.stored.clear()

    def close(self) -> None:
        for s in self.stored.values():
            with contextlib.suppress(OSError):
                os.close(s.fd)

    def claim(self, path: str) -> Stored | None:
        """The stored fd named for `path`: by its name, or by the hashed name older versions
        gave every hold (hashlib is imported only when such a name was passed in)."""
        if not self.stored:
            return None
        stored = self.stored.pop(name_for(path), None)
        if stored is None and any(is_legacy(name) for name in self.stored):
            stored = self.stored.pop(legacy_name(path), None)
        return stored

    def adopt(self, path: str, protect: bool, s: Stored,
              table: MountTable) -> hold.Hold | None:
        """A hold of `path` on a stored fd — only if it is still what the path shows; else the
        fd is dropped and None returned."""
        try:
            info = hold.verify(path, s.fd, table)
            st = hold.state(info, table)
            if st is not HoldState.HELD:
                raise Failure(f"{path}: the stored fd's mount is {st}")
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # never triggers
            try:
                now = os.fstat(pfd)
            finally:
                os.close(pfd)
            if (now.st_dev, now.st_ino) != (info.dev, info.ino):
                raise Failure(f"{path}: now names another directory than the stored fd")
            if protect:
                hold.lock(s.fd, path)
                info = record.replace(info, protected=True)
        except (Failure, OSError) as e:
            reason = e.message if isinstance(e, Failure) else \
                f"{os.strerror(e.errno or 0) if e.errno else e}"
            log.warning("fd store: not adopting %s: %s", path, reason)
            self._forget(s)
            return None
        log.info("holding %s: adopted from the fd store (%s from %s on %s)", path, info.fstype,
                 info.source, info.mount_point)
        if s.name != name_for(path) and self.keep:  # stored by an older version
            self.notifier.fdstore_remove(s.name)
            self.notifier.fdstore(s.fd, name_for(path))
        return hold.Hold(s.fd, info)
