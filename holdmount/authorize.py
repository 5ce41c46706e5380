"""May this client have a hold on this path? The daemon's side of delegated holds.

Root may ask for any path. A non-root client must prove, with fds the kernel made for it, that
(1) it can reach the path and (2) it could open the directory for reading itself:

1. **Identity.** The client passes an fd of the path, opened `O_PATH` (which never triggers an
   automount, so it is safe from a private mount namespace: a trigger from a namespace made
   before the mount hangs). The kernel made that fd with the client's credentials, so the
   client can search every directory on the way. The daemon opens the same path `O_PATH` in the
   host namespace and compares `(st_dev, st_ino)`. One case cannot match by inode: the path is
   mounted in the host namespace but not in the client's (its namespace was made before the
   mount). The client's fd is then on the autofs trigger, and the daemon accepts it when the
   trigger's superblock (`st_dev`) is the autofs mount stacked at that very mount point in the
   host's mount table (a direct map or a systemd .automount has one autofs superblock per
   mount point).
2. **Permission.** An `O_PATH` fd proves nothing about the directory's own mode, and on an
   untriggered automount it is the trigger's inode, not the filesystem that will be mounted.
   So after taking the hold (the trigger happens in the host namespace), the daemon asks the
   kernel: a forked helper drops to the client's uid, gid and supplementary groups (from
   SO_PEERCRED/SO_PEERGROUPS at connect time) and reopens the held fd through
   /proc/self/fd/N with `O_RDONLY|O_DIRECTORY`. That is the kernel's own permission check
   (mode, ACLs, LSMs) on the real directory — no re-implementation of it here.

A refusal is a `Failure` whose code is the sysexits number the client gets (the caller turns it
into the control socket's refusal); the client's credentials are anything with `uid`, `gid`
and `groups` (the control socket's peer).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import time

from holdmount import syscalls
from holdmount.errors import Exit, Failure
from holdmount.mounts import MountTable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Protocol

    class Credentials(Protocol):
        """Whose permission is checked: the peer's, as the kernel recorded it at connect."""

        @property
        def uid(self) -> int: ...
        @property
        def gid(self) -> int: ...
        @property
        def groups(self) -> tuple[int, ...]: ...

CHECK_TIMEOUT = 5.0  # the reopen does not trigger (the fd is on the mounted fs): seconds


def check_identity(path: str, client_fd: int, table: MountTable) -> bool:
    """Refuse unless `client_fd` is `path` as the host namespace sees it. Returns True when the
    client's fd is on the autofs trigger (so the mounted root is still to be compared)."""
    try:
        cst = os.fstat(client_fd)
        cfs = syscalls.fstatfs(client_fd)
    except OSError as e:
        raise Failure(f"fstat(fd for {path}): {os.strerror(e.errno or 0)}",
                      code=Exit.DATAERR) from None
    if not stat.S_ISDIR(cst.st_mode):
        raise Failure(f"{path}: the fd passed for it is not a directory", code=Exit.DATAERR)
    try:
        hfd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # O_PATH: never triggers
    except OSError as e:
        raise Failure(f"open({path}): {os.strerror(e.errno or 0)} (in the daemon's mount "
                      "namespace)", code=Exit.NOINPUT) from None
    try:
        hst = os.fstat(hfd)
        try:
            resolved = os.readlink(f"/proc/self/fd/{hfd}")
        except OSError:
            resolved = path
    finally:
        os.close(hfd)
    if (cst.st_dev, cst.st_ino) == (hst.st_dev, hst.st_ino):
        return cfs.f_type == syscalls.AUTOFS_SUPER_MAGIC
    if cfs.f_type == syscalls.AUTOFS_SUPER_MAGIC:
        dev = f"{os.major(cst.st_dev)}:{os.minor(cst.st_dev)}"
        if any(m.is_autofs and m.dev == dev and m.autofs_kind in ("direct", "offset")
               for m in table.at(resolved)):
            return True
    raise Failure(
        f"{path}: the fd passed for it is not that directory as the daemon sees it "
        f"(dev:ino {_id(cst)} vs {_id(hst)})",
        code=Exit.NOPERM)


def check_mounted_root(path: str, client_fd: int, held_fd: int) -> None:
    """When the client's fd was on the real filesystem, the hold must be the same directory."""
    cst, hst = os.fstat(client_fd), os.fstat(held_fd)
    if (cst.st_dev, cst.st_ino) != (hst.st_dev, hst.st_ino):
        raise Failure(f"{path}: changed while taking the hold (dev:ino {_id(cst)} vs "
                      f"{_id(hst)})", code=Exit.TEMPFAIL)


def check_may_read(path: str, held_fd: int, peer: Credentials, *,
                   timeout: float = CHECK_TIMEOUT) -> None:
    """Refuse unless the peer's credentials may open the held directory O_RDONLY."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.setgroups(list(peer.groups))
            os.setresgid(peer.gid, peer.gid, peer.gid)
            os.setresuid(peer.uid, peer.uid, peer.uid)
            os.close(os.open(f"/proc/self/fd/{held_fd}",
                             os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            code = min(e.errno or errno.EIO, 125)
        except BaseException:
            code = 126
        finally:
            os._exit(code)
    code = _wait_bounded(pid, timeout)
    if code == 0:
        return
    if code in (errno.EACCES, errno.EPERM):
        raise Failure(f"open({path}): Permission denied for uid {peer.uid}: a non-root "
                      "client may hold only a directory it could open itself",
                      code=Exit.NOPERM)
    reason = "no answer in time" if code < 0 else \
        os.strerror(code) if code < 126 else "internal error"
    raise Failure(f"open({path}) as uid {peer.uid}: {reason}", code=Exit.NOPERM)


def _wait_bounded(pid: int, timeout: float) -> int:
    """The child's exit code, or -1 (killed) when it takes longer than `timeout`."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = time.monotonic() + timeout
        while not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -1
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(pidfd)


def _id(st: os.stat_result) -> str:
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"
