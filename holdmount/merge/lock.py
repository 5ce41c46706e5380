"""One merge into a DEST at a time, by a lock no other user can take.

Root's merges lock `/run/holdmount/merge/<st_dev>-<st_ino>.lock` (DEST's identity), in
directories that must be root's and writable by no one else: a user's `flock DEST` or a
delegated `hold --protect DEST` (a shared flock on DEST, for systemd-tmpfiles) cannot block
them. The lock file is removed when the merge ends; a taker checks that the file it locked is
still the one at that name. An unprivileged merge (into a tree of its own) locks DEST itself.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from holdmount.errors import Exit, die, os_failure

LOCK_DIR = "/run/holdmount/merge"


def _own_dir(parent_fd: int, name: str, path: str, mode: int) -> int:
    """mkdir (if missing) and open a directory, checked to be root's and writable by no one
    else (the lock is only as private as the directories above it)."""
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise os_failure("mkdir", path, e) from e
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except OSError as e:
        raise os_failure("open", path, e) from e
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        die(f"merge({path}): the merge lock directory is not root's alone "
            f"(owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"remove {path} (holdmount recreates it) or make it root's, mode 0755",
            code=Exit.NOPERM)
    return fd


def _busy(dest: str) -> None:
    die(f"flock({dest}): another merge into DEST is running",
        hint="wait for it to end, then rerun", code=Exit.TEMPFAIL)


def _flock(fd: int, dest: str, where: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            _busy(dest)
        raise os_failure("flock", where, e) from e


class Lock:
    """Held from take() to release(): the locked fd, and the lock file by its directory fd and
    name (dir_fd -1: the lock is on DEST itself, nothing to remove)."""

    def __init__(self, fd: int, dir_fd: int, name: str) -> None:
        self.fd, self.dir_fd, self.name = fd, dir_fd, name

    def release(self) -> None:
        if self.dir_fd >= 0:
            try:
                os.unlink(self.name, dir_fd=self.dir_fd)  # still ours: we hold the lock
            except OSError:
                pass
            os.close(self.dir_fd)
        os.close(self.fd)


def take(dest_fd: int, dest: str) -> Lock:
    """Lock DEST (open as `dest_fd`) for a merge, or fail with 75 when another merge has it."""
    if os.geteuid() != 0:
        fd = os.dup(dest_fd)
        _flock(fd, dest, dest)
        return Lock(fd, -1, "")
    st = os.fstat(dest_fd)
    name = f"{st.st_dev}-{st.st_ino}.lock"
    path = os.path.join(LOCK_DIR, name)
    top = os.path.dirname(LOCK_DIR)
    try:
        run_fd = os.open(os.path.dirname(top), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_failure("open", os.path.dirname(top), e) from e
    try:
        top_fd = _own_dir(run_fd, os.path.basename(top), top, 0o755)
    finally:
        os.close(run_fd)
    try:
        dir_fd = _own_dir(top_fd, os.path.basename(LOCK_DIR), LOCK_DIR, 0o700)
    finally:
        os.close(top_fd)
    while True:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        except OSError as e:
            os.close(dir_fd)
            raise os_failure("open", path, e) from e
        try:
            _flock(fd, dest, path)
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (os.fstat(fd).st_dev,
                                                            os.fstat(fd).st_ino):
            return Lock(fd, dir_fd, name)
        os.close(fd)  # the merge that had it removed it meanwhile: lock the new file
