"""Usability checks on a held directory, done for real through its fd — never access().

access() and stat() on an automount point read the autofs placeholder (Gentoo bug 890812), so
"writable" is decided by creating, writing and unlinking a probe file inside the held directory.
"""

from __future__ import annotations

import errno
import os

from holdmount import syscalls
from holdmount.errors import Exit, Failure, os_failure

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from holdmount.hold import Hold

PROBE_PREFIX = ".holdmount-probe."

_WRITE_HINTS = {
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write or pick "
    "another directory",
    errno.EACCES: "this user may not create files there: check the owner, mode and ACLs of "
    "the mounted filesystem (not of the autofs placeholder)",
    errno.EPERM: "this user may not create files there (immutable attribute, LSM policy?)",
    errno.ENOSPC: "the filesystem is full (blocks or inodes): free space or enlarge it",
    errno.EDQUOT: "this user is over quota on that filesystem",
    # creating a new name in a directory that exists: the filesystem makes no files (proc, sysfs)
    errno.ENOENT: "this filesystem does not let anyone create files (proc, sysfs and the like): "
    "hold a directory on a writable filesystem, or drop --require-writable",
}


def require_writable(hold: Hold) -> None:
    """Create, write one page and unlink a probe file through the held fd."""
    name = f"{PROBE_PREFIX}{os.getpid()}.{os.urandom(4).hex()}"  # not secrets: it loads OpenSSL
    shown = os.path.join(hold.info.path, name)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=hold.fd)
    except OSError as e:
        raise _fail("open", shown, e) from e
    try:
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        except OSError as e:
            raise _fail("write", shown, e) from e
    finally:
        os.close(fd)
        try:
            os.unlink(name, dir_fd=hold.fd)
        except OSError:
            pass


def require_exec(hold: Hold) -> None:
    try:
        statfs = syscalls.fstatfs(hold.fd)
    except OSError as e:
        raise os_failure("fstatfs", hold.info.path, e) from e
    if statfs.noexec:
        raise Failure(
            f"fstatfs({hold.info.path}): mounted noexec ({hold.info.fstype} on "
            f"{hold.info.mount_point}), programs there cannot be executed",
            hint="remount without noexec (or fix the automount map / .mount Options=), or "
            "drop --require-exec",
            code=Exit.CANTCREAT,
        )


def _fail(call: str, path: str, exc: OSError) -> Failure:
    code = None
    if exc.errno in _WRITE_HINTS:
        code = Exit.NOPERM if exc.errno in (errno.EACCES, errno.EPERM) else Exit.CANTCREAT
    return os_failure(call, path, exc, hint=_WRITE_HINTS.get(exc.errno or 0), code=code)
