"""Hold: open a directory so its automount is triggered and cannot expire, and prove it.

Opening a directory `O_RDONLY|O_DIRECTORY` triggers an automount (stat() and access() do not);
keeping that fd open keeps the mount busy, so autofs never expires it. The fd is then checked
from the kernel's side: fstatfs must not say autofs and the fd's mount id must map to a
non-autofs entry of the mount table. After that the path is never resolved again: later work
goes through the fd.

A trigger whose automount daemon hangs (stopped daemon, dead NFS server) blocks open() in the
kernel in a wait that only SIGKILL ends, so opens run in a forked helper process that hands the
fds back over a socket; a helper that misses the deadline is killed.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Sequence

from holdmount import syscalls
from holdmount.errors import Exit, Failure, os_failure
from holdmount.mounts import MountTable

OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
DEFAULT_TRIGGER_TIMEOUT = 30.0
_MSG = struct.Struct("=ii")  # index, errno (0: an fd is attached)


@dataclasses.dataclass(frozen=True)
class HoldInfo:
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
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Hold:
    fd: int
    info: HoldInfo

    def release(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _helper(paths: Sequence[str], sock: socket.socket) -> None:
    """Runs in the forked child: open each path, send the fd (or errno) back."""
    for index, path in enumerate(paths):
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as e:
            sock.send(_MSG.pack(index, e.errno or errno.EIO))
            continue
        sock.sendmsg([_MSG.pack(index, 0)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        os.close(fd)


def _open_batch(paths: Sequence[str], timeout: float) -> list[int | OSError]:
    """Open paths in a helper until done or until one path took `timeout` seconds (the deadline
    restarts at each answer: a long batch of quick paths never times out). Returns the answers
    in order (SOCK_SEQPACKET keeps it); if there are fewer than paths, the next one hung."""
    deadline = time.monotonic() + timeout
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            parent.close()
            # The parent's Python signal handlers and wakeup fd must not run here: a SIGTERM
            # sent to the whole cgroup would otherwise poke the daemon's loop from the helper.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _helper(paths, child)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    child.close()
    results: list[int | OSError] = []
    try:
        while len(results) < len(paths):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([parent], [], [], remaining)[0]:
                break
            fds = array.array("i")
            # MSG_CMSG_CLOEXEC: received fds must not leak into commands we spawn later
            msg, ancdata, _flags, _addr = parent.recvmsg(
                _MSG.size, socket.CMSG_SPACE(fds.itemsize), socket.MSG_CMSG_CLOEXEC)
            if not msg:
                break  # helper ended (it always answers every path unless it crashed)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            deadline = time.monotonic() + timeout
            index, err = _MSG.unpack(msg)
            for extra in fds[1:]:
                os.close(extra)
            if index != len(results) or not (err or fds):  # cannot happen: stop trusting it
                if fds:
                    os.close(fds[0])
                break
            results.append(OSError(err, os.strerror(err)) if err else fds[0])
    finally:
        parent.close()
        if len(results) < len(paths):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    return results


def open_dirs(paths: Sequence[str], timeout: float) -> list[int | OSError]:
    """Open each directory (triggering automounts) with at most `timeout` seconds per path."""
    out: list[int | OSError] = []
    start = 0
    while start < len(paths):
        answers = _open_batch(paths[start:], timeout)
        out.extend(answers)
        start += len(answers)
        if start < len(paths):  # paths[start] hung: give up on it, go on with the rest
            out.append(TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout:g}s"))
            start += 1
    return out


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
                info = dataclasses.replace(info, protected=True)
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
