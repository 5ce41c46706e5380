"""holdmount.fdpass honours what Python 3.11's socket.send_fds/recv_fds drop: the received fds
are close-on-exec, send's flags and address are used."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import pytest

from holdmount import fdpass


def test_fds_arrive_close_on_exec() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe2(0)  # inheritable: the flag must come from the receive
    try:
        fdpass.send(a, b"x", [r, w])
        data, fds, flags = fdpass.recv(b, 16, 2)
        assert (data, len(fds), flags & socket.MSG_CTRUNC) == (b"x", 2, 0)
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds)
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_send_uses_its_address_and_flags(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "sock"))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unconnected: needs the address
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fdpass.send(sender, b"FDSTORE=1", [r], address=str(tmp_path / "sock"))
        data, fds, _ = fdpass.recv(listener, 64, 1)
        assert data == b"FDSTORE=1" and len(fds) == 1
        os.close(fds[0])
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b, pytest.raises(BlockingIOError):  # MSG_DONTWAIT reached recvmsg
            fdpass.recv(b, 16, 1, socket.MSG_DONTWAIT)
    finally:
        os.close(r)
        os.close(w)
        listener.close()
        sender.close()
