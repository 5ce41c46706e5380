"""Hold: open a directory so its automount is triggered and cannot expire, and prove it.

Opening a directory `O_RDONLY|O_DIRECTORY` triggers an automount (stat() and access() do not);
keeping that fd open keeps the mount busy, so autofs never expires it. The fd is then checked
from the kernel's side: fstatfs must not say autofs and the fd's mount id must map to a
non-autofs entry of the mount table. After that the path is never resolved again: later work
goes through the fd.

A trigger whose automount daemon hangs (stopped daemon, dead NFS server) blocks open() in the
kernel in a wait that only SIGKILL ends, so opens run in a helper process that hands the fds back
over a socket (holdmount/trigger.py); a helper that misses the deadline is killed.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import time

from holdmount import syscalls
from holdmount.defaults import DEFAULT_TRIGGER_TIMEOUT as DEFAULT_TRIGGER_TIMEOUT  # re-export
from holdmount.errors import Exit, Failure, os_failure
from holdmount.mounts import MountTable
from holdmount.record import Record, asdict, replace
from holdmount.trigger import open_dirs

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Sequence


class HoldInfo(Record):
    """What a hold knows about itself; everything here was read from the fd, not the path."""

    path: str  # as asked for (absolute)
    resolved: str  # where the fd really is (/proc/self/fd/N), symlinks resolved
    fstype: str
    source: str
    mount_point: str
    mnt_id: int
    automount: bool  # the mount sits on an autofs trigger
    dev: int
    ino: int
    since: float  # time.time() when taken
    protected: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Hold(Record):
    fd: int
    info: HoldInfo

    def release(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def verify(path: str, fd: int, table: MountTable | None = None) -> HoldInfo:
    """Check that `fd` is on the real filesystem, not the autofs trigger; describe it."""
    try:
        statfs = syscalls.fstatfs(fd)
        st = os.fstat(fd)
        mnt_id = syscalls.fd_mnt_id(fd)
    except OSError as e:
        raise os_failure("fstatfs", path, e) from e
    table = table or MountTable.read()
    mount = table.by_id(mnt_id)
    if mount is None:  # mounted after we read the table
        table = MountTable.read()
        mount = table.by_id(mnt_id)
    if statfs.f_type == syscalls.AUTOFS_SUPER_MAGIC or mount is None or mount.is_autofs:
        raise Failure(
            f"fstatfs({path}): the fd is on the autofs trigger, not on a mounted filesystem",
            hint="name a directory that an automount map mounts (not an indirect map's root); "
            "processes in the automount daemon's process group never trigger mounts",
            code=Exit.UNAVAILABLE,
        )
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        resolved = path
    return HoldInfo(
        path=path,
        resolved=resolved,
        fstype=mount.fstype,
        source=mount.source,
        mount_point=mount.mount_point,
        mnt_id=mnt_id,
        automount=table.is_automounted(mount),
        dev=st.st_dev,
        ino=st.st_ino,
        since=time.time(),
    )


def _explain(path: str, exc: OSError, timeout: float,
             table: MountTable | None = None) -> Failure:
    if (isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT) and \
            _autofs_trigger_for(path, table) is None:  # no automount: nothing to blame on autofs
        return Failure(f"open({path}): no answer within {timeout:g}s",
                       hint="the filesystem there (network, FUSE, a hung device) is not "
                       "responding; check it, or raise --trigger-timeout", code=Exit.TEMPFAIL)
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return Failure(
            f"open({path}): the automount did not answer within {timeout:g}s",
            hint="its automount daemon or file server is not responding; check `journalctl -u "
            "autofs` or the .automount unit, or raise --trigger-timeout",
            code=Exit.TEMPFAIL,
        )
    if exc.errno in (errno.ENOENT, errno.EHOSTDOWN, errno.ENODEV):
        trigger = _autofs_trigger_for(path, table)
        if trigger is not None:
            return Failure(
                f"open({path}): {os.strerror(exc.errno or 0)} (autofs trigger on "
                f"{trigger}: the automount did not mount)",
                hint="the automount daemon behind this trigger is gone or has no map entry "
                "for it: check `systemctl status autofs` or the .automount unit and its journal",
                code=Exit.UNAVAILABLE,
            )
    return os_failure("open", path, exc)


def _autofs_trigger_for(path: str, table: MountTable | None = None) -> str | None:
    """The autofs mount point that `path` is (direct) or lies under (indirect), if any."""
    try:
        mount = (table or MountTable.read()).containing(path)
    except OSError:
        return None
    return mount.mount_point if mount is not None and mount.is_autofs else None


def take_each(paths: Sequence[str], *, timeout: float = DEFAULT_TRIGGER_TIMEOUT,
              protect: bool = False) -> list[Hold | Failure]:
    """Hold each path on its own: a Hold or the Failure, in the order asked. One helper process
    opens them all and the mount table is read once for the batch."""
    abspaths = [os.path.abspath(p) for p in paths]
    if not abspaths:
        return []
    results = open_dirs(abspaths, timeout)
    table = MountTable.read()
    out: list[Hold | Failure] = []
    for path, result in zip(abspaths, results, strict=True):
        if isinstance(result, OSError):
            out.append(_explain(path, result, timeout, table))
            continue
        try:
            info = verify(path, result, table)
            if protect:
                lock(result, path)
                info = replace(info, protected=True)
        except Failure as e:
            os.close(result)
            out.append(e)
            continue
        out.append(Hold(result, info))
    return out


def take(paths: Sequence[str], *, timeout: float = DEFAULT_TRIGGER_TIMEOUT,
         protect: bool = False) -> list[Hold]:
    """Hold every path or none: on a failure (the first in order is raised) the holds already
    taken are released."""
    taken = take_each(paths, timeout=timeout, protect=protect)
    failure = next((r for r in taken if isinstance(r, Failure)), None)
    holds = [r for r in taken if isinstance(r, Hold)]
    if failure is not None:
        release_all(holds)
        raise failure
    return holds


class HoldState(enum.StrEnum):
    HELD = "held"  # our mount is in the table and visible at its mount point
    COVERED = "covered"  # still there, but something was mounted over it
    LOST = "lost"  # detached (umount -l) or gone: the fd pins a mount nobody can see


def state(info: HoldInfo, table: MountTable) -> HoldState:
    """What became of a held mount, judged from a fresh mount table."""
    if table.by_id(info.mnt_id) is None:
        return HoldState.LOST
    top = table.top_at(info.mount_point)
    if top is not None and top.mnt_id != info.mnt_id:
        return HoldState.COVERED
    return HoldState.HELD


def lock(fd: int, path: str) -> None:
    """flock(LOCK_SH): systemd-tmpfiles --clean (>= v242) skips a locked directory's subtree."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno == errno.EWOULDBLOCK:
            raise Failure(
                f"flock({path}): another process holds an exclusive lock on it",
                hint="wait for that process (see /proc/locks) or drop --protect",
                code=Exit.TEMPFAIL,
            ) from e
        raise os_failure("flock", path, e) from e


def release_all(holds: Sequence[Hold]) -> None:
    for hold in holds:
        hold.release()
