"""Durability of a merge: which filesystems it wrote to, and syncfs() (or fsync() where syncfs
is not enough) before temp files are renamed in and once more at the end.

Temp files are written in batches: a batch is made durable by one syncfs() per filesystem it
wrote to, then renamed over its targets. The batch is bounded, so a huge merge never has more
than BATCH_FILES temp files, or BATCH_BYTES waiting for the disk, at once.
"""

from __future__ import annotations

import os

from holdmount import syscalls

BATCH_FILES = 1000
BATCH_BYTES = 256 << 20


class Filesystems:
    """The filesystems (by st_dev) a merge writes to, each with an fd opened before the first
    write, so syncfs() reports every writeback error from there on (Linux 5.8+)."""

    def __init__(self) -> None:
        self.sync_fds: dict[int, int] = {}
        # FUSE: syncfs() flushes the server's files only when it implements FUSE_SYNCFS, so
        # there every file and changed directory is fsync'ed instead (the per-file way)
        self.fsync_devs: set[int] = set()

    def register(self, fd: int) -> int:
        """The device of `fd` (a DEST directory); the first time: keep an fd for syncfs()."""
        dev = os.fstat(fd).st_dev
        if dev not in self.sync_fds:
            self.sync_fds[dev] = os.dup(fd)
            if syscalls.fstatfs(fd).f_type == syscalls.FUSE_SUPER_MAGIC:
                self.fsync_devs.add(dev)
        return dev

    def per_file(self, dev: int) -> bool:
        """Whether files on `dev` are fsync'ed one by one (syncfs() would not do)."""
        return dev in self.fsync_devs

    def sync(self, devs: set[int] | None = None) -> None:
        """syncfs() each filesystem in `devs` (all, by default) that syncfs() serves."""
        for dev, fd in self.sync_fds.items():
            if (devs is None or dev in devs) and dev not in self.fsync_devs:
                syscalls.syncfs(fd)

    def close(self) -> None:
        for fd in self.sync_fds.values():
            os.close(fd)
        self.sync_fds.clear()
