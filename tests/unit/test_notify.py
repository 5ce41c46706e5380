"""sd_notify in-tree: messages, abstract sockets, FDSTORE fd passing, watchdog, no socket."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from holdmount.notify import Notifier
from holdmount.spawn import child_environ


def listener(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


def test_messages(tmp_path: Path) -> None:
    with listener(str(tmp_path / "n")) as s:
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")})
        assert n.ready("holding 1:\n/boot")
        assert s.recv(4096) == b"READY=1\nSTATUS=holding 1: /boot"
        assert n.stopping()
        assert s.recv(4096) == b"STOPPING=1"
        assert n.extend_timeout(1.5)
        assert s.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000"
        assert n.status("ünïcode")
        assert s.recv(4096) == "STATUS=ünïcode".encode()
        n.close()


def test_abstract_socket_and_fdstore(tmp_path: Path) -> None:
    name = f"holdmount-test-{uuid.uuid4().hex}"
    with listener("\0" + name) as s:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert n.fdstore(fd, "hold-boot")
        finally:
            os.close(fd)
        data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(4))
        assert data == b"FDSTORE=1\nFDNAME=hold-boot"
        (level, kind, payload), = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        got = int.from_bytes(payload[:4], "little")
        assert os.fstat(got).st_ino == os.stat(tmp_path).st_ino
        os.close(got)
        n.close()


def test_without_socket_and_unreachable(tmp_path: Path) -> None:
    assert Notifier({}).ready() is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "none")}).ready() is False


def test_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "3000000"}).watchdog_usec == 3_000_000
    assert Notifier({"WATCHDOG_USEC": "3000000",
                     "WATCHDOG_PID": str(os.getpid())}).watchdog_usec == 3_000_000
    assert Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_usec is None
    assert Notifier({"WATCHDOG_USEC": "x"}).watchdog_usec is None
    assert Notifier({}).watchdog_usec is None


def test_child_environ_drops_service_manager_variables() -> None:
    env = child_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "LISTEN_FDS": "2",
                         "PATH": "/bin"})
    assert env == {"PATH": "/bin"}
