"""Walking a path without triggering an automount, and finding the trigger it lies behind.

The path is resolved component by component with lstat() and readlink() only, stopping before
any lookup that would happen inside an autofs trigger with nothing mounted on it (a direct
trigger's directory, an indirect map's root). Whether a path is mounted is decided from the
mount table alone.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Mapping

from holdmount.mounts import Mount, MountTable
from holdmount.paths import under

MAX_SYMLINKS = 40


@dataclasses.dataclass(frozen=True)
class Walk:
    given: str
    resolved: str  # physical path as far as known; the unwalked rest appended lexically
    st: os.stat_result | None  # of `resolved` (following the last symlink) when reached
    stopped_at: str | None  # an autofs trigger we did not look into (the lookup would trigger)
    error: OSError | None  # lstat/readlink failure
    failed_at: str | None
    seen: Mapping[str, os.stat_result]  # every directory lstat'ed on the way


def would_trigger(table: MountTable, directory: str, child: str) -> bool:
    """Looking up `child` in `directory` would ask the automounter: `directory` shows an autofs
    filesystem (a direct trigger with nothing on it, an indirect map's root) and nothing real is
    mounted on `child` yet."""
    visible = table.containing(directory)
    return visible is not None and visible.is_autofs and not table.is_real_mounted(child)


def walk(path: str, table: MountTable) -> Walk:
    """Resolve `path` like the kernel would, with lstat() and readlink() only, and stop before
    the first lookup that would trigger an automount."""
    given = path
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    parts = [p for p in full.split("/") if p]
    cur = "/"
    seen: dict[str, os.stat_result] = {}
    links = 0
    st: os.stat_result | None = None
    try:
        st = os.lstat("/")
        seen["/"] = st
    except OSError:
        pass
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            st = seen.get(cur)
            continue
        nxt = os.path.join(cur, name)
        if would_trigger(table, cur, nxt):
            return Walk(given, os.path.join(nxt, *parts), None, cur, None, None, seen)
        try:
            st = os.lstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(nxt)
                parts = [p for p in target.split("/") if p] + parts
                if target.startswith("/"):
                    cur = "/"
                continue
        except OSError as e:
            return Walk(given, os.path.join(nxt, *parts), None, None, e, nxt, seen)
        seen[nxt] = st
        cur = nxt
    return Walk(given, cur, st, None, None, None, seen)


@dataclasses.dataclass(frozen=True)
class Trigger:
    mount: Mount  # the autofs mount
    kind: str  # direct, indirect, offset, or "autofs"
    point: str | None  # where the real filesystem gets mounted (None: an indirect map root)
    mounted: Mount | None  # the real filesystem on `point`, when mounted


def find_trigger(table: MountTable, path: str) -> Trigger | None:
    """The innermost autofs trigger `path` lies behind, and what is mounted on it now."""
    best: Mount | None = None
    for m in table.mounts:
        if m.is_autofs and under(path, m.mount_point) and \
                (best is None or len(m.mount_point) > len(best.mount_point)):
            best = m
    if best is None:
        return None
    kind = best.autofs_kind or "autofs"
    point: str | None = best.mount_point
    if kind == "indirect":
        rest = path[len(best.mount_point):].lstrip("/")
        point = os.path.join(best.mount_point, rest.split("/")[0]) if rest else None
    mounted = None
    if point is not None:
        mounted = next((m for m in reversed(table.at(point)) if not m.is_autofs), None)
    return Trigger(best, kind, point, mounted)
