"""Harness for daemon tests: the daemon as a subprocess with our own NOTIFY_SOCKET listener and
its control socket in a temp dir. Other test modules import `DaemonProc` and `NotifyListener`
from here; tests/unit/test_harness_daemon.py checks the harness itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sandbox
from conftest import holdmount_cmd

from holdmount import control

HM = holdmount_cmd()


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket; records every message.

    Like systemd, it drains the socket all the time (a thread): the kernel queues only a few
    datagrams per socket, and a sender blocks when the queue is full.
    """

    max_size: int | None = None  # ignore datagrams of this many bytes or more (as systemd does)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ignored = 0  # datagrams dropped for max_size
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self.fds: list[int] = []
        self.stored: dict[str, list[int]] = {}  # FDSTORE=1 fds by FDNAME
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.stop.is_set():
            self._receive()

    def poll(self) -> list[dict[str, str]]:
        with self.lock:
            return list(self.messages)

    def _receive(self) -> None:
        while True:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(64))
            except (TimeoutError, BlockingIOError, OSError):
                return
            got: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got.extend(int.from_bytes(payload[i:i + 4], sys.byteorder)
                               for i in range(0, len(payload) - len(payload) % 4, 4))
            if self.max_size is not None and len(data) >= self.max_size:
                for fd in got:
                    os.close(fd)
                with self.lock:
                    self.ignored += 1
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self.lock:
                self.messages.append(fields)
                # like systemd's fd store: FDSTOREREMOVE=1 closes the fds stored under FDNAME
                # (a stored held fd kept here would keep the test's automount from expiring)
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTOREREMOVE") == "1":
                    for fd in self.stored.pop(name, []):
                        self.fds.remove(fd)
                        os.close(fd)
                self.fds.extend(got)
                self.stored.setdefault(name, []).extend(got)

    def has(self, key: str, value: str | None = None) -> bool:
        return any(key in m and (value is None or m[key] == value) for m in self.poll())

    def index(self, key: str) -> int:
        for i, m in enumerate(self.poll()):
            if key in m:
                return i
        return -1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.settimeout(0)
        self._receive()
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


def wait_for(pred: Callable[[], bool], limit: float, step: float = 0.02) -> bool:
    return sandbox.wait_for(pred, limit, step)


class DaemonProc:
    """`holdmount daemon --config FILE --allow-foreign-namespace` with test sockets.

    wrap: a function turning the argv into the command to start (e.g. nsenter into an autofs
    lab's namespace, `lab.cmd`); popen: how to start it (e.g. `lab.popen`, for the lab cgroup).
    """

    def __init__(self, tmp: Path, config: str, *, args: Sequence[str] = (),
                 env: dict[str, str] | None = None,
                 popen: Callable[..., subprocess.Popen[Any]] = subprocess.Popen,
                 wrap: Callable[[list[str]], list[str]] = lambda a: a,
                 foreign_ok: bool = True) -> None:
        self.tmp = tmp
        self.config = tmp / "holdmount.toml"
        self.config.write_text(config)
        self.socket = str(tmp / "control")
        self.notify = NotifyListener(tmp / "notify")
        self.log_path = tmp / "daemon.log"
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        environ.update(NOTIFY_SOCKET=str(self.notify.path), HOLDMOUNT_SOCKET=self.socket,
                       PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        environ.update(env or {})
        argv = [*HM, "daemon", "--config", str(self.config),
                *(["--allow-foreign-namespace"] if foreign_ok else []), *args]
        with open(self.log_path, "w") as log:
            self.proc = popen(wrap(argv), env=environ, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    # --- waiting -----------------------------------------------------------------------------
    def wait_ready(self, limit: float = 30) -> None:
        ok = wait_for(lambda: self.notify.has("READY", "1") or self.proc.poll() is not None,
                      limit)
        assert ok and self.proc.poll() is None, f"daemon not ready: {self.log()}"

    def wait(self, limit: float = 60) -> int:
        try:
            return self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit: {self.log()}") from None

    def term(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # --- asking ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        reply = control.request(self.socket, "status")
        status: dict[str, Any] = reply["status"]
        return status

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()

    def __enter__(self) -> DaemonProc:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def strict_json(raw: bytes) -> Any:
    """Parse as a strict JSON parser does: UTF-8 text, and no string with a lone surrogate
    (Python's json.loads accepts "\\udcff"; RFC 8259 parsers such as jq or serde reject it)."""
    out = json.loads(raw.decode("utf-8"))
    no_lone_surrogates(out)
    return out


def no_lone_surrogates(value: Any) -> None:
    """Raise if a decoded JSON value holds a lone surrogate (a strict UTF-8 encoder refuses it)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            no_lone_surrogates(k)
            no_lone_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            no_lone_surrogates(v)
