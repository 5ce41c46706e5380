"""The mount table: /proc/PID/mountinfo parsed into frozen entries, and questions about it.

No libmount: the format is documented in proc(5) and stable. Paths are unescaped (\\040 etc.).
"""

from __future__ import annotations

import os
import select

from holdmount.paths import under
from holdmount.record import Record

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_OCTAL = frozenset("01234567")


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes (\\040 space, \\134 backslash); any other backslash
    stays (the kernel escapes every backslash, so a split on it is exact)."""
    if "\\" not in field:
        return field
    first, *rest = field.split("\\")
    out = [first]
    for part in rest:
        if len(part) >= 3 and _OCTAL.issuperset(part[:3]):
            out.append(chr(int(part[:3], 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def _options(text: str) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for opt in text.split(","):
        key, _, value = opt.partition("=")
        if key:
            out[key] = value
    return out


class Mount(Record):
    mnt_id: int
    parent_id: int
    dev: str  # "major:minor"
    root: str  # the path inside the filesystem that is mounted here
    mount_point: str
    mount_options: str
    propagation: tuple[str, ...]  # optional fields: shared:N, master:N, ...
    fstype: str
    source: str
    super_options: str

    @property
    def options(self) -> Mapping[str, str]:
        """Per-mount and superblock options merged (superblock wins)."""
        return {**_options(self.mount_options), **_options(self.super_options)}

    @property
    def is_autofs(self) -> bool:
        return self.fstype == "autofs"

    @property
    def autofs_timeout(self) -> int | None:
        """Idle timeout in seconds of an autofs trigger (0 = never expires), from timeout=."""
        if not self.is_autofs:
            return None
        value = _options(self.super_options).get("timeout")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def autofs_kind(self) -> str | None:
        """direct, indirect or offset (from the super options) for an autofs trigger."""
        if not self.is_autofs:
            return None
        opts = _options(self.super_options)
        for kind in ("direct", "indirect", "offset"):
            if kind in opts:
                return kind
        return None


def parse_line(line: str) -> Mount:
    left, sep, right = line.rstrip("\n").partition(" - ")
    if not sep:
        raise ValueError(f"mountinfo line without separator: {line!r}")
    a = left.split(" ")
    b = right.split(" ")
    return Mount(
        mnt_id=int(a[0]),
        parent_id=int(a[1]),
        dev=a[2],
        root=_unescape(a[3]),
        mount_point=_unescape(a[4]),
        mount_options=a[5],
        propagation=tuple(a[6:]),
        fstype=b[0],
        source=_unescape(b[1]) if len(b) > 1 else "",
        super_options=b[2] if len(b) > 2 else "",
    )


class MountTable:
    """An immutable snapshot of the mount table, with indexes built on first use."""

    __slots__ = ("_ids", "_points", "mounts")

    def __init__(self, mounts: tuple[Mount, ...]) -> None:
        self.mounts = mounts
        self._ids: dict[int, Mount] | None = None
        self._points: dict[str, list[Mount]] | None = None

    @classmethod
    def read(cls, pid: int | str = "self") -> MountTable:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return cls.parse(f)

    @classmethod
    def parse(cls, lines: Iterable[str]) -> MountTable:
        return cls(tuple(parse_line(line) for line in lines if line.strip()))

    def by_id(self, mnt_id: int) -> Mount | None:
        if self._ids is None:
            self._ids = {}
            for m in self.mounts:
                self._ids.setdefault(m.mnt_id, m)  # the first, as a scan would find it
        return self._ids.get(mnt_id)

    def at(self, mount_point: str) -> list[Mount]:
        """Every mount stacked on `mount_point`, bottom first (mountinfo order)."""
        if self._points is None:
            self._points = {}
            for m in self.mounts:
                self._points.setdefault(m.mount_point, []).append(m)
        return list(self._points.get(mount_point, ()))

    def top_at(self, mount_point: str) -> Mount | None:
        """The visible (topmost) mount on `mount_point`."""
        stack = self.at(mount_point)
        if not stack:
            return None
        ids = {m.mnt_id for m in stack}
        # the top is the one no other mount on this point has as parent
        for m in reversed(stack):
            if not any(o.parent_id == m.mnt_id for o in stack if o.mnt_id in ids):
                return m
        return stack[-1]

    def containing(self, path: str) -> Mount | None:
        """The visible mount that `path` (absolute, normalised, no symlinks resolved) lives on."""
        path = os.path.normpath(path)
        best: Mount | None = None
        best_len = -1
        for m in self.mounts:
            mp = m.mount_point
            if under(path, mp) and len(mp) > best_len:
                best = self.top_at(mp)
                best_len = len(mp)
        return best

    def is_real_mounted(self, mount_point: str) -> bool:
        """True when something other than an autofs trigger is mounted on `mount_point`."""
        return any(not m.is_autofs for m in self.at(mount_point))

    def parent(self, m: Mount) -> Mount | None:
        return self.by_id(m.parent_id)

    def is_automounted(self, m: Mount) -> bool:
        """`m` was mounted by an automounter: it sits on an autofs trigger (direct: same mount
        point; indirect: inside the autofs directory)."""
        parent = self.parent(m)
        return parent is not None and parent.is_autofs and not m.is_autofs

    def overlays(self) -> list[Mount]:
        return [m for m in self.mounts if m.fstype == "overlay"]


class MountWatcher:
    """Wakes up when the mount table changes — no polling.

    The kernel flags /proc/PID/mountinfo with POLLPRI|POLLERR when the mount namespace's table
    changes. `selectors` only knows read/write readiness, so the mountinfo fd is registered for
    EPOLLPRI in a private epoll instance, whose own fd becomes *readable* when that happens:
    register `watcher` (it has fileno()) with any selector for EVENT_READ, then call `read()`.
    """

    def __init__(self, pid: int | str = "self") -> None:
        self._file = open(f"/proc/{pid}/mountinfo", "rb", buffering=0)  # noqa: SIM115
        self._epoll = select.epoll()
        self._epoll.register(self._file.fileno(), select.EPOLLPRI | select.EPOLLERR)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def pending(self) -> bool:
        """True when the table changed since the last read() (does not block)."""
        return bool(self._epoll.poll(0))

    def read(self) -> MountTable:
        """The current table; also acknowledges the change so the fd goes quiet again."""
        self._epoll.poll(0)
        self._file.seek(0)
        chunks = []
        while chunk := self._file.read(65536):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        return MountTable.parse(text.splitlines())

    def close(self) -> None:
        self._epoll.close()
        self._file.close()
