"""The marker: a path whose existence arms the `staged` holds and actions, watched by inotify.

One inotify watch (syscalls.inotify_*) on the marker's parent directory catches creation (also by
rename into place) and deletion. When the parent does not exist yet (`/run/ostree` before the
first deployment is staged), the watch sits on the nearest existing ancestor and moves down as the
missing directories appear, and back up when they are removed.

Events only wake us: the state is always recomputed from the filesystem (lstat), so a lost or
coalesced event, or a queue overflow, cannot leave a stale state. At SIGTERM the daemon asks
`present()` directly and does not trust the watched state at all.
"""

from __future__ import annotations

import errno
import os

from holdmount import syscalls
from holdmount.errors import Failure, os_failure

# Names appearing/disappearing in the watched directory, and the directory itself going away.
_MASK = (syscalls.IN_CREATE | syscalls.IN_MOVED_TO | syscalls.IN_DELETE | syscalls.IN_MOVED_FROM
         | syscalls.IN_DELETE_SELF | syscalls.IN_MOVE_SELF | syscalls.IN_ONLYDIR)
_GONE = syscalls.IN_IGNORED | syscalls.IN_DELETE_SELF | syscalls.IN_MOVE_SELF


class MarkerWatch:
    def __init__(self, path: str) -> None:
        self.path = path
        self.parent = os.path.dirname(path) or "/"
        try:
            self._fd = syscalls.inotify_init()
        except OSError as e:
            raise os_failure("inotify_init", path, e) from e
        self._wd: int | None = None
        self.watched: str | None = None  # the directory the watch is on
        self._rewatch()
        self.armed = self.present()

    def fileno(self) -> int:
        return self._fd

    def present(self) -> bool:
        """Whether the marker exists right now (a dangling symlink counts: lstat)."""
        return os.path.lexists(self.path)

    def handle(self) -> bool:
        """Read pending events, follow directory changes; True when armed/disarmed changed."""
        try:
            events = syscalls.inotify_read(self._fd)
        except OSError as e:
            raise os_failure("read(inotify)", self.parent, e) from e
        for wd, mask, _name in events:
            if wd == self._wd and mask & _GONE:
                self._drop_watch()
        self._rewatch()
        armed = self.present()
        changed = armed != self.armed
        self.armed = armed
        return changed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- keeping the watch on the nearest existing ancestor --------------------------------

    def _drop_watch(self) -> None:
        if self._wd is not None:
            try:
                syscalls.inotify_rm_watch(self._fd, self._wd)
            except OSError:  # EINVAL: the kernel removed it already (directory deleted)
                pass
        self._wd = None
        self.watched = None

    def _rewatch(self) -> None:
        # Loop until the watch sits on the deepest existing directory on the way to the parent;
        # a directory created between the check and the watch is caught by the re-check.
        for _ in range(64):
            target = _nearest_existing_dir(self.parent)
            if target != self.watched or self._wd is None:
                self._drop_watch()
                try:
                    self._wd = syscalls.inotify_add_watch(self._fd, target, _MASK)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue  # it went away meanwhile: look again
                    raise os_failure("inotify_add_watch", target, e) from e
                self.watched = target
            if _nearest_existing_dir(self.parent) == target:
                return
        raise Failure(f"inotify_add_watch({self.parent}): the directories keep changing")


def _nearest_existing_dir(path: str) -> str:
    while path != "/" and not os.path.isdir(path):
        path = os.path.dirname(path)
    return path
