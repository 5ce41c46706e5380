"""The only module that talks to the kernel through ctypes or reads fd metadata from /proc.

Everything here is a thin, typed wrapper: fstatfs (Python's statvfs has no f_type), the mount id of
an fd (from /proc/self/fdinfo), mount-namespace identity, pidfds, syncfs, and the kernel magic
numbers we care about.
"""

from __future__ import annotations

import ctypes
import errno
import os

from holdmount.record import Record

# --- kernel magic numbers (the one place for them) ----------------------------------------------
# statfs.f_type values (linux/magic.h)
AUTOFS_SUPER_MAGIC = 0x0187
FUSE_SUPER_MAGIC = 0x65735546
# statfs.f_flags bits (linux/statfs.h ST_*)
ST_RDONLY = 0x0001
ST_NOEXEC = 0x0008


def _load_libc() -> ctypes.CDLL:
    # glibc's soname directly: ctypes.util costs ~10 ms of start-up (it may run ldconfig);
    # only a libc with another name (musl) pays for the search.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()


def _errno_failure(filename: str | None = None) -> OSError:
    """The OSError of the libc call that just failed (its errno), naming `filename` if given."""
    err = ctypes.get_errno()
    if filename is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), filename)


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux (all fields are words except f_fsid)
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


class StatFs(Record):
    f_type: int
    bsize: int
    blocks: int
    bavail: int
    files: int
    ffree: int
    flags: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & ST_RDONLY)

    @property
    def noexec(self) -> bool:
        return bool(self.flags & ST_NOEXEC)


def fstatfs(fd: int) -> StatFs:
    """fstatfs(2); raises OSError with errno."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        raise _errno_failure()
    return StatFs(
        f_type=buf.f_type & 0xFFFFFFFF,
        bsize=buf.f_bsize,
        blocks=buf.f_blocks,
        bavail=buf.f_bavail,
        files=buf.f_files,
        ffree=buf.f_ffree,
        flags=buf.f_flags,
    )


def fdinfo_field(fd: int, key: str, pid: int | str = "self") -> str | None:
    """One `key:` field of /proc/PID/fdinfo/FD, or None when the fd has no such field."""
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            name, sep, value = line.partition(":")
            if sep and name == key:
                return value.strip()
    return None


def fd_mnt_id(fd: int, pid: int | str = "self") -> int:
    """The mount id of the mount `fd` lives on (mnt_id: in /proc/PID/fdinfo/FD)."""
    value = fdinfo_field(fd, "mnt_id", pid)
    if value is None:
        raise OSError(f"no mnt_id in /proc/{pid}/fdinfo/{fd}")
    return int(value)


def pidfd_pid(fd: int) -> int | None:
    """The pid a pidfd refers to (None: not a pidfd, or the process is gone)."""
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[pidfd]":
            return None
        value = fdinfo_field(fd, "Pid")
        pid = int(value) if value is not None else 0
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def mount_ns_id(pid: int | str = "self") -> int:
    """Inode number of the mount namespace of `pid` (comparable across processes)."""
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def in_host_mount_ns() -> bool | None:
    """True when we share PID 1's mount namespace; None when that cannot be told (no access)."""
    try:
        return mount_ns_id("self") == mount_ns_id(1)
    except PermissionError:
        return None


def syncfs(fd: int) -> None:
    """syncfs(2): write back and commit the whole filesystem `fd` is on (os has no syncfs).

    Since Linux 5.8 it also reports writeback errors of that filesystem seen since `fd` was
    opened (sync(2) reports none). Raises OSError with errno."""
    if _libc.syncfs(fd) != 0:
        raise _errno_failure()


# --- resolving below a directory fd without following symlinks (merge) ------------------------

RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_openat2_works = True


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) (Linux 5.6+; no O_CREAT here, so no mode). Raises OSError with errno."""
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise _errno_failure(path)
    return int(fd)


def open_beneath(dir_fd: int, path: str, flags: int) -> int:
    """Open `path` (relative) below `dir_fd`, following no symlink in any component and never
    leaving `dir_fd` (ELOOP / ENOTDIR / EXDEV otherwise): openat2(RESOLVE_BENEATH |
    RESOLVE_NO_SYMLINKS) where the kernel has it, else one openat(O_NOFOLLOW) per component."""
    global _openat2_works
    if _openat2_works:
        try:
            return openat2(dir_fd, path, flags | os.O_NOFOLLOW,
                           RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            _openat2_works = False
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
    cur = dir_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=cur)
            if cur != dir_fd:
                os.close(cur)
            cur = nxt
        return os.open(parts[-1] if parts else ".", flags | os.O_NOFOLLOW, dir_fd=cur)
    finally:
        if cur != dir_fd:
            os.close(cur)


# --- inotify(7) ----------------------------------------------------------------------------
# On the libc already loaded above: the inotify_simple package finds libc through ctypes.util,
# which costs ~2.9 MiB and forks /sbin/ldconfig at every start.

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_INOTIFY_HEADER = 16  # struct inotify_event: int wd; u32 mask, cookie, len; char name[len]
_INOTIFY_READ = 65536  # room for 240+ events with NAME_MAX names


def inotify_init() -> int:
    """inotify_init1(IN_NONBLOCK|IN_CLOEXEC): a non-blocking inotify fd."""
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise _errno_failure("inotify_init1")
    return fd


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """inotify_add_watch(2): the watch descriptor; raises OSError (ENOENT, ENOTDIR, ...)."""
    wd = int(_libc.inotify_add_watch(fd, os.fsencode(path), ctypes.c_uint32(mask)))
    if wd < 0:
        raise _errno_failure(path)
    return wd


def inotify_rm_watch(fd: int, wd: int) -> None:
    """inotify_rm_watch(2); EINVAL when the kernel dropped the watch already."""
    if _libc.inotify_rm_watch(fd, wd) != 0:
        raise _errno_failure("inotify_rm_watch")


def inotify_read(fd: int) -> list[tuple[int, int, str]]:
    """Every pending event as (wd, mask, name), without blocking ([] when none is pending).
    Names are decoded like os.listdir's (surrogateescape): any byte string is accepted."""
    events: list[tuple[int, int, str]] = []
    while True:
        try:
            data = os.read(fd, _INOTIFY_READ)
        except BlockingIOError:
            return events
        offset = 0
        while offset + _INOTIFY_HEADER <= len(data):
            wd, mask, _cookie, size = memoryview(data)[offset:offset + _INOTIFY_HEADER].cast("i")
            start = offset + _INOTIFY_HEADER
            name = os.fsdecode(data[start:start + size].rstrip(b"\0"))
            events.append((wd, mask & 0xFFFFFFFF, name))
            offset = start + size
