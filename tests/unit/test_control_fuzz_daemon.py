"""Fuzz the running daemon's control socket: malformed, oversized and well-formed-but-wrong
messages, with garbage fds attached (pipes, sockets, /dev/null, directories, O_PATH fds,
eventfds, pidfds, more than the limit), from a root connection and from an unprivileged one.

Every string field may hold lone surrogates (as JSON escapes: a \\udc80..\\udcff one stands for a
byte that is not UTF-8) or raw bytes that are not UTF-8 (then the message is refused).

Every message gets exactly one well-formed reply, strict UTF-8 JSON whatever the request held;
messages that are not a JSON object with a known op are refused; no reply is an "internal
error" (a handler bug); the daemon stays alive; and once the fuzzing connections are closed its
fd count is back where it started (no leaked received fds, pidfds or holds).
"""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProc, strict_json, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdmount import control

BATCH = 20
EXAMPLES = 260  # x BATCH messages x 2 tests = 10,400 messages


def connect(path: str, uid: int | None = None) -> socket.socket:
    """A connection to the daemon; with `uid`, connected by a child that dropped to it (the
    daemon's SO_PEERCRED is taken at connect time) and handed back to us."""
    if uid is None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        s.settimeout(30)
        return s
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            socket.send_fds(child, [b"x"], [s.fileno()])
            code = 0
        finally:
            os._exit(code)
    child.close()
    _, fds, _, _ = socket.recv_fds(parent, 1, 1)
    os.waitpid(pid, 0)
    parent.close()
    s = socket.socket(fileno=fds[0])
    s.settimeout(30)
    return s


class Pool:
    """Garbage fds to attach (ours; the daemon gets copies)."""

    def __init__(self, tmp: Path) -> None:
        r, w = os.pipe()
        a, b = socket.socketpair()
        self._socks = (a, b)
        (tmp / "f").write_text("x")
        self.fds = [os.open("/dev/null", os.O_RDWR), r, w, a.fileno(),
                    os.open(str(tmp), os.O_RDONLY | os.O_DIRECTORY),
                    os.open("/", os.O_PATH), os.open(str(tmp / "f"), os.O_RDONLY),
                    os.eventfd(0), os.pidfd_open(os.getpid())]

    def close(self) -> None:
        for fd in self.fds:
            if fd not in (s.fileno() for s in self._socks):
                os.close(fd)
        for s in self._socks:
            s.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProc, Pool]]:
    del tmp_path_factory  # below a 0700 directory: nobody could not reach the socket
    tmp = Path(tempfile.mkdtemp(prefix="holdmount-fuzz-"))
    tmp.chmod(0o755)
    held = tmp / "held"
    held.mkdir()
    d = DaemonProc(tmp, f'[[hold]]\npath = "{held}"\n[control]\nmode = "0666"\n')
    d.wait_ready()
    pool = Pool(tmp)
    yield d, pool
    pool.close()
    d.close()
    shutil.rmtree(tmp, ignore_errors=True)


# text with lone surrogates: escaped bytes (\udc80..\udcff, what os.fsdecode makes of a byte that
# is not UTF-8) and surrogates that stand for no byte
SURROGATEY = st.lists(st.sampled_from(["\udcff", "\udc80", "\udce9", "\ud800", "\udfff", "/",
                                       "a", "\u00e9", "\x00"]), max_size=6).map("".join)
TEXT = st.text(max_size=20) | SURROGATEY
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=8)
PATHS = st.sampled_from(["/", "/tmp", "/nonexistent/x", "relative", "", "/\x01", "//", "/..",
                         "/proc/self", "/dev/null", "x" * 5000, "/\udcff", "/tmp/\udce9",
                         "/\ud800", "/tmp/caf\udce9/x"]) | JSONISH
OPS = st.sampled_from(["hold", "release", "status", "ping", "", "HOLD", "nope", "\udcff",
                       "ping\udcff"]) | JSONISH
BODY = st.fixed_dictionaries(
    {"op": OPS},
    optional={"paths": st.lists(PATHS, max_size=18) | JSONISH,
              "with_fds": st.booleans() | JSONISH, "want_fds": st.booleans() | JSONISH,
              "protect": st.booleans() | JSONISH, "pidfd": st.booleans() | JSONISH,
              "until_pid": st.sampled_from([os.getpid(), 1, 0, -1, 2**31, 99999999])
              | JSONISH})


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes, list[int], bool]:
    """(data, fd indices, must_fail)."""
    kind = draw(st.sampled_from(["body", "body", "body", "bytes", "json", "big"]))
    fds = draw(st.lists(st.integers(0, 8), max_size=20))
    if kind == "body":
        body = draw(BODY)
        op = body.get("op")
        data = json.dumps(body).encode()  # lone surrogates as \uXXXX escapes
        utf8 = True
        if draw(st.booleans()):  # or as raw bytes: \udcXX as that byte, others as CESU-8
            text = json.dumps(body, ensure_ascii=False)
            data = text.encode("utf-8", "surrogateescape" if all(
                not 0xD800 <= ord(c) < 0xDC80 and not 0xDD00 <= ord(c) < 0xE000
                for c in text) else "surrogatepass")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                utf8 = False
        return data, fds, not utf8 or not (isinstance(op, str) and op in (
            "hold", "release", "status", "ping")) or len(fds) > 16
    if kind == "json":
        value = draw(JSONISH)
        return json.dumps(value).encode(), fds, True
    if kind == "big":
        size = draw(st.sampled_from([control.MAX_MESSAGE + 1, control.MAX_MESSAGE + 4096,
                                     200_000]))
        return b'{"op":"ping","x":"' + b"a" * size + b'"}', fds, True
    data = draw(st.binary(min_size=0 if fds else 1, max_size=300))
    try:
        obj = json.loads(data.decode())
        valid = isinstance(obj, dict) and obj.get("op") in ("hold", "release", "status",
                                                            "ping")
    except (UnicodeDecodeError, ValueError, RecursionError):
        valid = False
    return data, fds, not valid or len(fds) > 16


def exchange(s: socket.socket, data: bytes, fds: list[int]) -> dict[str, Any]:
    if fds:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                            array.array("i", fds).tobytes())])
    else:
        s.send(data)
    reply_raw, anc, _flags, _ = s.recvmsg(control.MAX_MESSAGE + 1, socket.CMSG_SPACE(64 * 4))
    for level, kind, payload in anc:  # want_fds replies: close what came back
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % 4])
            for fd in got:
                os.close(fd)
    assert reply_raw, "the daemon closed the connection instead of answering"
    reply: dict[str, Any] = strict_json(reply_raw)
    return reply


def fuzz(d: DaemonProc, pool: Pool, uid: int | None,
         batches: list[list[tuple[bytes, list[int], bool]]], counter: list[int]) -> None:
    s = connect(d.socket, uid)
    try:
        for batch in batches:
            for data, idx, must_fail in batch:
                reply = exchange(s, data, [pool.fds[i] for i in idx])
                counter[0] += 1
                assert isinstance(reply.get("ok"), bool), reply
                if reply["ok"] is False:
                    counter[1] += 1
                if must_fail:
                    assert reply["ok"] is False, (data[:200], idx, reply)
                if reply["ok"] is False:
                    error = reply.get("error")
                    assert isinstance(error, str) and error and "\n" not in error, reply
                    assert not error.startswith("internal error"), (data[:300], idx, reply)
    finally:
        s.close()


def run_fuzz(daemon: tuple[DaemonProc, Pool], uid: int | None) -> None:
    d, pool = daemon
    base_fds = d.fd_count()
    counter = [0, 0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(message(), min_size=BATCH, max_size=BATCH))
    def one(batch: list[tuple[bytes, list[int], bool]]) -> None:
        fuzz(d, pool, uid, [batch], counter)

    one()
    assert counter[0] >= EXAMPLES * BATCH // 2, counter
    assert d.proc.poll() is None, d.log()
    assert d.status()["state"] == "running"
    # valid requests with until_pid outlive their connection by design: release them (root)
    held = [h["path"] for h in d.status()["delegated"]]
    if held:
        assert control.request(d.socket, "release", paths=held)["released"] == held
    assert wait_for(lambda: not d.status()["delegated"] and d.fd_count() == base_fds, 10), \
        (base_fds, d.fd_count(), os.listdir(f"/proc/{d.pid}/fd"), d.status()["delegated"])
    print(f"fuzz uid={uid}: {counter[0]} messages, {counter[1]} refused, "
          f"{len(held)} paths held at the end, daemon fds {base_fds} before and after")


def test_fuzz_as_root(daemon: tuple[DaemonProc, Pool]) -> None:
    run_fuzz(daemon, None)


@pytest.mark.real  # a real component: must not skip in CI
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as nobody")
def test_fuzz_as_nobody(daemon: tuple[DaemonProc, Pool]) -> None:
    run_fuzz(daemon, 65534)
