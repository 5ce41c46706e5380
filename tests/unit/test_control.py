"""The control socket protocol, daemon side and client side, in-process (server in a thread)."""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdmount import control
from holdmount.errors import Exit, Failure


class Running:
    def __init__(self, path: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.server = control.Server(path, self.selector, mode=0o600)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.05):
                key.data(mask)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()
        self.selector.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    r = Running(str(tmp_path / "sub" / "control"))
    yield r
    r.close()


def raw(path: str, data: bytes, fds: list[int] | None = None) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(path)
        if fds:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                b"".join(fd.to_bytes(4, "little") for fd in fds))])
        else:
            s.send(data)
        reply: dict[str, object] = json.loads(s.recv(control.MAX_MESSAGE + 1))
        return reply


def test_ping_and_peer(server: Running) -> None:
    seen: list[control.Peer] = []
    server.server.register("who", lambda req: (seen.append(req.peer), {"pid": req.peer.pid})[1])
    assert control.request(server.server.path, "ping")["protocol"] == control.PROTOCOL
    with control.Client(server.server.path) as c:  # many requests on one connection
        assert c.call("who")["pid"] == os.getpid()
        assert c.call("ping")["ok"] is True
    assert seen[0].uid == os.getuid()
    assert os.stat(server.server.path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("data", "error"), [
    (b"not json", "message is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"op": 3}', 'no "op" string'),
    (b'{"op": "nope"}', "unknown op 'nope'"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100000, f"larger than {control.MAX_MESSAGE}"),
    (b'{"op": "ping", "x": "' + b"a" * control.MAX_MESSAGE + b'"}', "larger than"),
])
def test_bad_requests_get_one_line_errors(server: Running, data: bytes, error: str) -> None:
    reply = raw(server.server.path, data)
    assert reply["ok"] is False and error in str(reply["error"])


def test_handler_errors_become_replies(server: Running) -> None:
    def boom(_req: control.Request) -> dict[str, object]:
        raise ZeroDivisionError("x")

    def refuse(_req: control.Request) -> dict[str, object]:
        raise control.RequestError("not yours")

    server.server.register("boom", boom)
    server.server.register("refuse", refuse)
    assert "internal error: ZeroDivisionError" in str(raw(server.server.path, b'{"op":"boom"}'))
    with pytest.raises(Failure) as exc:
        control.request(server.server.path, "refuse")
    assert exc.value.message == "refuse: not yours"


def test_passed_fds_are_closed_after_the_handler(server: Running, tmp_path: Path) -> None:
    got: list[int] = []
    server.server.register("take", lambda req: (got.extend(req.fds), {"n": len(req.fds)})[1])
    before = len(os.listdir("/proc/self/fd"))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(50):
            assert raw(server.server.path, b'{"op":"take"}', [fd, fd])["n"] == 2
        # fd-passing garbage: more fds than allowed, fds with a non-JSON body
        assert "more than" in str(raw(server.server.path, b'{"op":"take"}', [fd] * 40))
        assert raw(server.server.path, b"garbage", [fd])["ok"] is False
    finally:
        os.close(fd)
    assert len(got) == 100
    # (the server sees each client's EOF a moment later and closes that connection)
    assert _wait(lambda: len(os.listdir("/proc/self/fd")) == before), os.listdir("/proc/self/fd")


def test_disconnect_callbacks_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    r = Running(path)
    gone: list[int] = []
    r.server.on_disconnect.append(lambda conn: gone.append(conn.peer.pid))
    with control.Client(path) as c:
        c.call("ping")
    assert _wait(lambda: gone == [os.getpid()])
    with pytest.raises(Failure) as exc:  # a second server on a live socket
        control.Server(path, selectors.DefaultSelector())
    assert exc.value.code == Exit.UNAVAILABLE
    r.stop.set()
    r.thread.join()
    r.server.sock.close()  # dies without cleaning up: the socket file stays
    assert os.path.exists(path)
    r2 = Running(path)  # a stale socket nobody listens on is replaced
    assert control.request(path, "ping")["ok"] is True
    r2.close()
    assert not os.path.exists(path)


def test_client_errors(tmp_path: Path) -> None:
    with pytest.raises(Failure) as exc:
        control.request(str(tmp_path / "none"), "status")
    assert exc.value.code == Exit.UNAVAILABLE
    assert exc.value.message.startswith(f"connect({tmp_path}/none): No such file or directory")


SURROGATEY = st.lists(st.sampled_from(["\udcff", "\udc80", "\ud800", "/", "a", "op"]),
                      max_size=5).map("".join)


def _wait(pred: object, limit: float = 5) -> bool:
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300),
                      st.dictionaries(st.text(max_size=5), st.text(max_size=5)).map(
                          lambda d: json.dumps(d).encode()),
                      st.dictionaries(SURROGATEY, SURROGATEY).map(  # \udcXX escapes
                          lambda d: json.dumps(d).encode()),
                      st.dictionaries(SURROGATEY, SURROGATEY).map(  # raw, not UTF-8
                          lambda d: json.dumps(d, ensure_ascii=False).encode(
                              "utf-8", "surrogatepass")),
                      st.sampled_from(["ping", "status", "", "hold", "\udcff"]).map(
                          lambda op: json.dumps({"op": op}).encode())))
def test_fuzz_every_message_gets_an_answer(server: Running, data: bytes) -> None:
    if not data:
        return  # an empty message closes the connection (EOF)
    reply = raw(server.server.path, data)
    assert isinstance(reply["ok"], bool)
    if reply["ok"] is False:
        assert isinstance(reply["error"], str) and "\n" not in reply["error"]
        reply["error"].encode("utf-8")  # strict: no lone surrogate came back


SURROGATE_REPLIES = [({"path": "/caf\udce9"}, {"path": "/caf\\xe9"}),
                     ({"\udcff": ["/\ud800", "ok"]}, {"\\xff": ["/\\ud800", "ok"]})]


@pytest.mark.parametrize(("fields", "shown"), SURROGATE_REPLIES)
def test_replies_are_strict_utf8_json(fields: dict[str, object], shown: dict[str, object]) -> None:
    data = control.encode(fields)
    parsed = json.loads(data.decode("utf-8"))  # strict UTF-8 ...
    assert parsed == shown  # ... no surrogate
    # a request keeps the bytes: the daemon reads back what the client meant
    assert json.loads(control.encode_request(fields)) == fields
