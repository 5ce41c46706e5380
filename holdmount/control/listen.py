"""The control socket's file: bound with its mode and group, a stale one replaced, a live one
left alone (another daemon listens there)."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat

from holdmount.errors import Exit, Failure


def bind(path: str, mode: int, group: str | None) -> socket.socket:
    """A listening, non-blocking SOCK_SEQPACKET socket at `path`, mode `mode`, group `group`."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise Failure(f"getgrnam({group}): no such group (control.group)",
                          code=Exit.CONFIG) from None
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    except OSError as e:
        raise _os("mkdir", os.path.dirname(path), e) from e
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
                         | socket.SOCK_NONBLOCK)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise _os("bind", path, e) from e
    return sock


def unlink_own(path: str, ino: int) -> None:
    """Remove the socket file — only our own: a successor may have bound a new one meanwhile."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ino:
            os.unlink(path)


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Failure(f"bind({path}): exists and is not a socket",
                      hint="remove it or point HOLDMOUNT_SOCKET / control.path elsewhere",
                      code=Exit.CONFIG)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left behind by a daemon that died
        return
    finally:
        probe.close()
    raise Failure(f"bind({path}): another holdmount daemon is listening there",
                  hint="stop it first, or give this one its own HOLDMOUNT_SOCKET",
                  code=Exit.UNAVAILABLE)


def _os(call: str, path: str, e: OSError) -> Failure:
    return Failure(f"{call}({path}): {os.strerror(e.errno or 0) if e.errno else e}",
                   code=Exit.OSERR if e.errno not in (errno.EACCES, errno.EPERM)
                   else Exit.NOPERM)
