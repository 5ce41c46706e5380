"""Issue 12, daemon side: what a hostile local user can do to the real daemon over its control
socket (docs/security.md), and what must hold anyway: every message gets a strict-JSON reply
or a clean close, one uid's cost is bounded, root is always served, and SIGTERM at any instant
after exec finalizes (the action runs exactly once, exit 0).

The attacker runs as `nobody` (a forked child that drops to uid 65534 before it connects: the
daemon takes SO_PEERCRED at connect time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autofs import lab_base
from daemon_harness import HM, DaemonProc, wait_for
from daemon_harness import strict_json as strict

from holdmount import control
from holdmount.delegate import Delegation

NOBODY = 65534
SYSTEMD_NOFILE = ["prlimit", "--nofile=1024:4096"]  # systemd's default soft limit, a hard above

pytestmark = [pytest.mark.real,  # the attacker needs root to become nobody; must not skip in CI
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody")]


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A 0755 directory (pytest's tmp_path is below a 0700 one): nobody reaches the socket."""
    path = lab_base()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(fn: Callable[[], Any]) -> Any:
    """fn() in a forked child running as nobody; its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            with os.fdopen(w, "w") as out:
                json.dump(fn(), out)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return json.loads(text)


def exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(30)
        s.connect(path)
        s.send(data)
        return s.recv(control.MAX_REPLY + 1)


def action_config(out: Path, extra: str = "") -> str:
    return (f'[[action]]\nname = "mark"\nexec = ["/bin/sh", "-c", "echo ran >> {out}"]\n'
            f'when = "always"\n[control]\nmode = "0666"\n{extra}')


def clean_log(d: DaemonProc) -> None:
    text = d.log()
    assert "Traceback" not in text and "internal error" not in text, text


# --- one message ----------------------------------------------------------------------------

def test_lone_surrogates_get_strict_replies_and_the_daemon_stays(tmp: Path) -> None:
    out = tmp / "ran"
    with DaemonProc(tmp, action_config(out)) as d:
        d.wait_ready()
        messages = [b'{"op":"release","paths":["/\\udcff"]}',  # issue 12's message
                    b'{"op":"release","paths":["/\\ud800"]}',  # a surrogate no byte stands for
                    b'{"op":"hold","paths":["/\\udcff\\udc80"],"with_fds":false}',
                    b'{"op":"\\udcff"}',
                    b'{"op":"status","\\udcff":"\\udcfe"}']
        replies = as_nobody(lambda: [exchange(d.socket, m).decode("utf-8", "replace")
                                     for m in messages])
        for message, raw in zip(messages, replies, strict=True):
            reply = strict(raw.encode("utf-8"))
            assert "\ufffd" not in raw, raw  # it was UTF-8 already
            if b"status" not in message:
                assert reply["ok"] is False and reply["error"], (message, reply)
                assert not reply["error"].startswith("internal error"), reply
        assert strict(replies[0].encode())["error"] == \
            "release /\\xff: no delegated hold of yours on it"
        assert d.proc.poll() is None, d.log()
        assert control.request(d.socket, "ping")["ok"] is True
        d.term()
        assert d.wait() == 0, d.log()
    assert out.read_text() == "ran\n"
    clean_log(d)


# --- bounded cost per uid -------------------------------------------------------------------

def _flood(socket_path: str, directory: str, count: int) -> dict[str, Any]:
    """As nobody: `count` hold requests that outlive their connection (until_pid 1)."""
    ok, codes, errors = 0, {}, set()
    with Delegation(socket_path) as dlg:
        for _ in range(count):
            reply = dlg.client.call_fds("hold", fds=[os.open(directory, os.O_PATH),
                                                     os.pidfd_open(1)],
                                        paths=[directory], with_fds=True, until_pid=1,
                                        pidfd=True)[0]
            if reply["ok"]:
                ok += 1
            else:
                codes[str(reply.get("code"))] = codes.get(str(reply.get("code")), 0) + 1
                errors.add(reply["error"])
    return {"ok": ok, "codes": codes, "errors": sorted(errors)}


class Idle:
    """`count` connections from nobody, opened and then left idle until close()."""

    def __init__(self, socket_path: str, count: int) -> None:
        self.ready_r, ready_w = os.pipe()
        self.stop_r, self.stop_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                os.close(self.stop_w)
                os.close(self.ready_r)
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
                socks = []
                for _ in range(count):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    s.connect(socket_path)  # blocking: waits while the backlog is full
                    socks.append(s)
                os.write(ready_w, b"x")
                os.read(self.stop_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(self.stop_r)
        ready = os.read(self.ready_r, 1)
        os.close(self.ready_r)
        if ready != b"x":
            self.close()
            raise AssertionError("nobody could not open its connections")

    def close(self) -> None:
        os.close(self.stop_w)
        os.waitpid(self.pid, 0)


def test_lease_flood_and_idle_connections_leave_root_and_the_finalize(tmp: Path) -> None:
    """2,000 lease requests and 300 idle connections from nobody, the daemon at systemd's
    default fd limit: the flood is refused past the per-uid limit with 75 and one line naming
    it, root's `holdmount status` answers, SIGTERM runs the action exactly once, exit 0."""
    out = tmp / "ran"
    target = tmp / "mine"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    with DaemonProc(tmp, action_config(out), wrap=lambda a: [*SYSTEMD_NOFILE, *a]) as d:
        d.wait_ready()
        flood = as_nobody(lambda: _flood(d.socket, str(target), 2000))
        assert flood["ok"] == 64, flood  # control.leases_per_uid's default
        assert flood["codes"] == {"75": 2000 - 64}, flood
        assert flood["errors"] == ["uid 65534 has 64 leases (control.leases_per_uid = 64): "
                                   "release some first"], flood
        idle = Idle(d.socket, 300)
        try:
            env = {**os.environ, "HOLDMOUNT_SOCKET": d.socket}
            status = subprocess.run([*HM, "status", "--json"], env=env, capture_output=True,
                                    text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            held = json.loads(status.stdout)["delegated"]
            assert [len(h["holders"]) for h in held] == [64]
            refused = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 *HM, "status"], env=env, capture_output=True, text=True, timeout=60)
            assert refused.returncode == 75, refused.stderr
            assert refused.stderr.splitlines()[0] == (
                "holdmount: status: uid 65534 has 16 connections open "
                "(control.connections_per_uid = 16): close some first"), refused.stderr
            d.term()
            assert d.wait() == 0, d.log()
        finally:
            idle.close()
    assert out.read_text() == "ran\n"
    clean_log(d)


def test_idle_connection_is_closed_and_a_leased_one_is_not(tmp: Path) -> None:
    target = tmp / "mine"
    target.mkdir()
    config = action_config(tmp / "ran", 'idle_timeout = "1s"\n')
    with DaemonProc(tmp, config) as d:
        d.wait_ready()
        leased = Delegation(d.socket)
        leased.hold([str(target)])
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        idle.connect(d.socket)
        idle.settimeout(60)
        assert idle.recv(100) == b""  # closed by the daemon (EOF), not by us
        assert "closing an idle connection" in d.log()
        assert leased.client.call("ping")["ok"] is True  # the lease keeps it open
        assert [h["path"] for h in d.status()["delegated"]] == [str(target)]
        leased.close()
        idle.close()
        d.term()
        assert d.wait() == 0, d.log()
    clean_log(d)


def test_full_daemon_refuses_cleanly_and_still_finalizes(tmp: Path) -> None:
    """Per-uid limits set past the fd limit: the daemon runs out of fds serving nobody, and
    refuses (75, one line), never "internal error"; root is served; the action still runs."""
    out = tmp / "ran"
    target = tmp / "mine"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    limits = "leases_per_uid = 100000\npaths_per_uid = 100000\nconnections_per_uid = 100000\n"
    with DaemonProc(tmp, action_config(out, limits),
                    wrap=lambda a: ["prlimit", "--nofile=256:256", *a]) as d:
        d.wait_ready()
        flood = as_nobody(lambda: _flood(d.socket, str(target), 400))
        assert 0 < flood["ok"] < 400 and set(flood["codes"]) == {"75"}, flood
        assert all("out of file descriptors" in e or "Too many open files" in e
                   for e in flood["errors"]), flood
        assert control.request(d.socket, "status")["status"]["state"] == "running"
        d.term()
        assert d.wait() == 0, d.log()
    assert out.read_text() == "ran\n"
    clean_log(d)


# --- SIGTERM at any instant -----------------------------------------------------------------

@pytest.mark.parametrize("delay_ms", [0, 5, 10, 20, 50])
def test_sigterm_right_after_exec_finalizes(tmp: Path, delay_ms: int) -> None:
    """Started with the unit's command line (`env --block-signal=TERM,INT,HUP holdmount
    daemon`, docs/daemon.md) and the stop signals already blocked when env is exec'ed, so "0 ms"
    is a SIGTERM pending from the very first instruction (env's own start-up, before its
    sigprocmask, is the one window the unit cannot close): the signal stays pending through the
    interpreter's start until the loop takes it, then the daemon finalizes."""
    out = tmp / "ran"

    def blocked_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        return subprocess.Popen(*args, **kwargs,
                                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, stop))

    with DaemonProc(tmp, action_config(out), popen=blocked_popen,
                    wrap=lambda a: ["/usr/bin/env", "--block-signal=TERM,INT,HUP", *a]) as d:
        time.sleep(delay_ms / 1000)
        d.term()
        assert d.wait() == 0, d.log()
    assert out.read_text() == "ran\n"
    assert d.notify.has("READY", "1") and d.notify.has("STOPPING", "1")


def _blocked(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(x for x in status.splitlines() if x.startswith("SigBlk:")).split()[1], 16)
    return bool(mask & (1 << (15 - 1)))  # SIGTERM


def test_sigterm_once_python_runs_finalizes_without_a_launcher(tmp: Path) -> None:
    """Started plainly: from the first line of holdmount.__main__ on, SIGTERM is held back
    for the loop (before the interpreter reaches it, only blocking across exec helps)."""
    out = tmp / "ran"
    with DaemonProc(tmp, action_config(out)) as d:
        assert wait_for(lambda: _blocked(d.pid) or d.proc.poll() is not None, 60), d.log()
        assert d.proc.poll() is None, d.log()
        d.term()
        assert d.wait() == 0, d.log()
    assert out.read_text() == "ran\n"


# --- paths that are not UTF-8 ---------------------------------------------------------------

def test_hold_and_run_on_a_path_that_is_not_utf8(tmp: Path) -> None:
    target = os.fsdecode(os.path.join(os.fsencode(tmp), b"caf\xe9"))
    os.mkdir(target)
    with DaemonProc(tmp, action_config(tmp / "ran")) as d:
        d.wait_ready()
        env = {**os.environ, "HOLDMOUNT_SOCKET": d.socket}
        sleeper = subprocess.Popen(["sleep", "600"])
        try:
            r = subprocess.run([*HM, "hold", "--until-pid", str(sleeper.pid), target], env=env,
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert b"caf\\xe9" in r.stdout, r.stdout  # the reply's display form
            status = subprocess.run([*HM, "status", "--json"], env=env, capture_output=True,
                                    timeout=60)
            assert status.returncode == 0, status.stderr
            assert [h["path"] for h in strict(status.stdout)["delegated"]] == \
                [str(tmp) + "/caf\\xe9"]
            r = subprocess.run([*HM, "release", target], env=env, capture_output=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            for mode in ("auto", "always"):
                r = subprocess.run([*HM, "run", "--delegate", mode, "--hold", target, "--",
                                    sys.executable, "-c", "pass"], env=env,
                                   capture_output=True, timeout=60)
                assert r.returncode == 0, (mode, r.stderr)
            assert d.status()["delegated"] == []
        finally:
            sleeper.kill()
            sleeper.wait()
        d.term()
        assert d.wait() == 0, d.log()
    clean_log(d)
