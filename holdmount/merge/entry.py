"""One entry's temp copy: a regular file, a symlink or a node made as `tmp` in a DEST directory
fd from the planned entry `name` of a STAGED directory fd. The STAGED entry is checked to be the
one planned (type and inode); the new entry's metadata is set through an fd of the entry itself
(a symlink, which has none, by name without following it). Batching, renames and directories
are the writer's (write.py)."""

from __future__ import annotations

import errno
import os
import stat

from holdmount.errors import Failure, os_failure
from holdmount.merge.model import Ident, Item, ident
from holdmount.merge.tree import (
    PATH_FLAGS,
    RERUN_HINT,
    Tree,
    changed,
    entry_path,
    set_xattrs,
    xattrs,
)

_CHUNK = 1 << 20


def fail(call: str, path: str, exc: OSError) -> Failure:
    f = os_failure(call, path, exc)
    return Failure(f.message, hint=f"{f.hint}; {RERUN_HINT}" if f.hint else RERUN_HINT,
                   code=f.code)


def copy_data(src_fd: int, dst_fd: int) -> None:
    try:
        while os.copy_file_range(src_fd, dst_fd, _CHUNK * 64):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                           errno.ENOTSUP, errno.EBADF):
            raise
    # the kernel cannot: copy by hand from wherever copy_file_range stopped
    os.lseek(dst_fd, os.lseek(src_fd, 0, os.SEEK_CUR), os.SEEK_SET)
    while True:
        buf = os.read(src_fd, _CHUNK)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            view = view[os.write(dst_fd, view):]


def set_meta(fd: int, st: os.stat_result, want_xattrs: dict[str, bytes]) -> None:
    """Owner, then mode (chown drops set-id bits), then xattrs (chown drops
    security.capability), then times, all through `fd`."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    set_xattrs(fd, want_xattrs)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def write_temp(staged: Tree, sfd: int, dfd: int, item: Item, name: str, tmp: str, *,
               where: str, sync: bool) -> Ident | None:
    """Make `tmp` in `dfd` as a copy of `item` (`name` in `sfd`); `where` names `tmp` in
    errors, `sync` fsyncs a regular file. The copy's identity when the item has other names
    (hardlinks are linked to it later), else None."""
    if stat.S_ISREG(item.st.st_mode):
        return _regular(staged, sfd, dfd, item, name, tmp, where, sync)
    if stat.S_ISLNK(item.st.st_mode):
        return _symlink(staged, sfd, dfd, item, name, tmp, where)
    return _node(staged, sfd, dfd, item, name, tmp, where)


def _regular(staged: Tree, sfd: int, dfd: int, item: Item, name: str, tmp: str, where: str,
             sync: bool) -> Ident | None:
    src = staged.open_entry(sfd, item.rel, name, item.st)
    step = "create"
    got = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            step = "copy_file_range"
            copy_data(src, fd)
            step = "set metadata of"
            set_meta(fd, item.st, xattrs(src))
            if sync:
                step = "fsync"
                os.fsync(fd)
            if item.st.st_nlink > 1:
                got = ident(os.fstat(fd))
        finally:
            os.close(fd)
    except OSError as e:
        raise fail(step, where, e) from e
    finally:
        os.close(src)
    return got


def _symlink(staged: Tree, sfd: int, dfd: int, item: Item, name: str, tmp: str,
             where: str) -> Ident | None:
    staged.lstat_entry(sfd, item.rel, name, item.st)
    try:
        link = os.readlink(name, dir_fd=sfd)
        want = xattrs(entry_path(sfd, name))
    except OSError as e:
        raise fail("readlink", staged.at(item.rel), e) from e
    st = item.st
    try:
        os.symlink(link, tmp, dir_fd=dfd)
        # a symlink has no fd to set metadata through: by name, never following it
        os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        set_xattrs(entry_path(dfd, tmp), want)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        if st.st_nlink > 1:
            return ident(os.stat(tmp, dir_fd=dfd, follow_symlinks=False))
        return None
    except OSError as e:
        raise fail("symlink", where, e) from e


def _node(staged: Tree, sfd: int, dfd: int, item: Item, name: str, tmp: str,
          where: str) -> Ident | None:
    """A fifo or a device node: made with mknod, its metadata set through an O_PATH fd of the
    node made (its /proc/self/fd link reaches that inode, never what the name holds)."""
    staged.lstat_entry(sfd, item.rel, name, item.st)
    try:
        want = xattrs(entry_path(sfd, name))
    except OSError as e:
        raise fail("listxattr", staged.at(item.rel), e) from e
    st = item.st
    try:
        os.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dfd)
        fd = os.open(tmp, PATH_FLAGS, dir_fd=dfd)
    except OSError as e:
        raise fail("mknod", where, e) from e
    try:
        got = os.fstat(fd)
        if stat.S_IFMT(got.st_mode) != stat.S_IFMT(st.st_mode) or got.st_uid != os.geteuid():
            raise changed(where, "not the node just made")
        proc = f"/proc/self/fd/{fd}"
        os.chown(proc, st.st_uid, st.st_gid)
        os.chmod(proc, stat.S_IMODE(st.st_mode))
        set_xattrs(proc, want)
        os.utime(proc, ns=(st.st_atime_ns, st.st_mtime_ns))
        return ident(got) if st.st_nlink > 1 else None
    except OSError as e:
        raise fail("set metadata of", where, e) from e
    finally:
        os.close(fd)
