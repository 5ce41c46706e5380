"""STAGED and DEST reached only through directory fds.

Each tree's root is opened once (the one path the user named). Every other directory is opened
below it with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) (or openat(O_NOFOLLOW) component by
component) and must be the very directory (st_dev, st_ino) the plan saw; every entry is opened
O_NOFOLLOW | O_NONBLOCK and must have the planned type and inode. So a symlink, a fifo or another
directory swapped in while the merge runs is an error naming it: never followed, never waited
on, never copied in place of what was planned.
"""

from __future__ import annotations

import errno
import os
import stat

from holdmount import syscalls
from holdmount.errors import Exit, Failure, os_failure
from holdmount.merge.model import Ident, at, ident

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
# what resolving a planned name gives when something else was put there
_SWAPPED = (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EXDEV, errno.ENXIO, errno.EISDIR)

RERUN_HINT = ("every DEST file is still either the old or the new one: fix the cause and rerun "
              "the same merge; it completes the merge and removes leftover "
              ".holdmount-merge.* temp files")


def changed(path: str, what: str) -> Failure:
    return Failure(f"merge({path}): changed while the merge ran ({what})",
                   hint="something else changes STAGED or DEST during the merge: stop it, then "
                   "rerun the same merge (every DEST file is still the old or the new one)",
                   code=Exit.TEMPFAIL)


def kind(mode: int) -> str:
    names = {stat.S_IFREG: "a file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink",
             stat.S_IFIFO: "a fifo", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
    return names.get(stat.S_IFMT(mode), "something else")


def check(path: str, got: os.stat_result, want: os.stat_result | Ident) -> None:
    """Fail unless `got` is the planned inode (and, given a stat, of the planned type)."""
    if isinstance(want, os.stat_result):
        if stat.S_IFMT(got.st_mode) != stat.S_IFMT(want.st_mode):
            raise changed(path, f"now {kind(got.st_mode)}, planned {kind(want.st_mode)}")
        want = ident(want)
    if ident(got) != want:
        raise changed(path, "another inode than planned")


class Tree:
    """A tree (STAGED or DEST) by its root fd; `path` only names things in messages."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def at(self, rel: str) -> str:
        return at(self.path, rel)

    def open_dir(self, rel: str, want: Ident | None) -> int:
        """The directory `rel` below the root, checked to be `want` (when given)."""
        try:
            fd = (os.open(".", DIR_FLAGS, dir_fd=self.fd) if rel == "."
                  else syscalls.open_beneath(self.fd, rel, DIR_FLAGS))
        except OSError as e:
            if e.errno in _SWAPPED:
                raise changed(self.at(rel), f"planned a directory: {os.strerror(e.errno or 0)}"
                              ) from e
            raise os_failure("open", self.at(rel), e) from e
        try:
            if want is not None:
                check(self.at(rel), os.fstat(fd), want)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_entry(self, dir_fd: int, rel: str, name: str, want: os.stat_result,
                   flags: int = FILE_FLAGS) -> int:
        """Entry `name` of the directory `dir_fd` (which is `rel`'s parent), checked to be the
        planned inode and type; O_NONBLOCK, so a fifo swapped in never blocks the open."""
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in _SWAPPED:
                raise changed(self.at(rel), f"planned {kind(want.st_mode)}: "
                              f"{os.strerror(e.errno or 0)}") from e
            raise os_failure("open", self.at(rel), e) from e
        try:
            check(self.at(rel), os.fstat(fd), want)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat_entry(self, dir_fd: int, rel: str, name: str, want: os.stat_result) -> None:
        """Check, without opening it, that entry `name` is still the planned one."""
        try:
            got = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno in _SWAPPED:
                raise changed(self.at(rel), os.strerror(e.errno or 0)) from e
            raise os_failure("lstat", self.at(rel), e) from e
        check(self.at(rel), got, want)


def entry_path(dir_fd: int, name: str) -> str:
    """A path to entry `name` of an open directory: the fd's magic link, then `name` (use it
    with follow_symlinks=False, for the calls that take no dir_fd: the xattr ones)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def xattrs(target: int | str) -> dict[str, bytes]:
    """Extended attributes of an fd, or of a path without following a final symlink."""
    out: dict[str, bytes] = {}
    try:
        names = (os.listxattr(target) if isinstance(target, int)
                 else os.listxattr(target, follow_symlinks=False))
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for name in names:
        try:
            out[name] = (os.getxattr(target, name) if isinstance(target, int)
                         else os.getxattr(target, name, follow_symlinks=False))
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out


def set_xattrs(target: int | str, values: dict[str, bytes]) -> None:
    for name, value in values.items():
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)


def same_bytes(a: int, b: int) -> bool:
    off = 0
    while True:
        ca = os.pread(a, _CHUNK, off)
        if ca != os.pread(b, _CHUNK, off):
            return False
        if not ca:
            return True
        off += len(ca)
