"""Finalize actions in-process (the Finalizer driven by a selector loop like the daemon's), the
stamp, and the daemon's signal plumbing (handlers restored afterwards)."""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import time
from pathlib import Path

import pytest

from holdmount import finalize, limits, spawn, stamp
from holdmount.config import ActionConfig, MergeSpec, When
from holdmount.errors import Exit, Failure
from holdmount.finalize import Finalizer, Result
from holdmount.notify import Notifier
from holdmount.signals import Signals


def run_actions(*actions: ActionConfig) -> list[Result]:
    selector = selectors.DefaultSelector()
    done: list[Result] = []
    f = Finalizer(selector, Notifier({}), done.extend, {"PATH": "/usr/bin:/bin"})
    f.start(actions)
    deadline = time.monotonic() + 60
    while f.current is not None or (not done and f.queue):
        d = f.deadline()
        for key, mask in selector.select(None if d is None else max(0, d - time.monotonic())):
            key.data(mask)
        f.timer(time.monotonic())
        assert time.monotonic() < deadline
    selector.close()
    return done


def sh(name: str, script: str, timeout: float = 30) -> ActionConfig:
    return ActionConfig(name=name, exec=("/bin/sh", "-c", script), when=When.ALWAYS,
                        timeout=timeout)


def test_results_in_order_with_output_tail() -> None:
    r = run_actions(sh("a", "for i in $(seq 1 30); do echo line$i; done"),
                    sh("b", "echo err >&2; exit 4"), sh("c", "kill -9 $$"))
    assert [x.name for x in r] == ["a", "b", "c"]
    assert r[0].ok and r[0].output == tuple(f"line{i}" for i in range(11, 31))
    assert not r[1].ok and r[1].status == "exit status 4" and r[1].output == ("err",)
    assert r[2].signal == 9 and r[2].status == "killed by SIGKILL"


def test_environment_is_clean() -> None:
    r = run_actions(sh("env", "env | sort"))
    env = dict(line.split("=", 1) for line in r[0].output if "=" in line)
    assert env["HOLDMOUNT_ACTION"] == "env"
    assert "NOTIFY_SOCKET" not in env


@pytest.mark.parametrize("case", ["raised", "raised, low fds taken", "signal blocked"])
def test_action_gets_the_original_fd_limit_and_no_blocked_signal(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon raises its soft RLIMIT_NOFILE and may block signals: an action starts with
    the limit the daemon was started with and an empty signal mask (holdmount.spawn) — also
    when every fd below that limit is in use, so the spawn cannot lower it around itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        soft = max(64, hard // 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    monkeypatch.setattr(limits, "_original_nofile", None)
    taken: list[int] = []
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}
                                      if case == "signal blocked" else set())
    try:
        assert limits.raise_nofile() == (hard, hard)
        if case == "raised, low fds taken":
            while not taken or taken[-1] < soft:
                taken.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        (r,) = run_actions(sh("limits", "ulimit -n; grep ^SigBlk: /proc/self/status"))
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)  # ours: raised again
    finally:
        for fd in taken:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert r.ok and r.output[0] == str(soft), r.output
    assert r.output[1].split() == ["SigBlk:", "0000000000000000"], r.output


@pytest.mark.parametrize("low_fds", ["free", "taken"])
def test_exec_failure_is_a_result(low_fds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways an action starts report an exec failure the same: posix_spawn, and the fork
    used when every fd below the original limit is in use (holdmount.spawn._fork_exec)."""
    taken: list[int] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(limits, "_original_nofile", None)
    if low_fds == "taken":
        low = 64 if hard > 64 else hard // 2
        monkeypatch.setattr(limits, "_original_nofile", (low, hard))
        while not taken or taken[-1] < low:
            taken.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    try:
        r, y = run_actions(ActionConfig(name="x", exec=("/nonexistent/prog",),
                                        when=When.ALWAYS),
                           ActionConfig(name="y", exec=("/dev/null",), when=When.ALWAYS))
        (ok,) = run_actions(sh("ok", "ulimit -n"))
    finally:
        for fd in taken:
            os.close(fd)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    assert not r.ok and r.status == "exec(/nonexistent/prog): No such file or directory"
    assert not y.ok and y.status == "exec(/dev/null): Permission denied"
    assert ok.ok and ok.output == ((str(soft),) if low_fds == "free" else ("64",))


def test_timeout_terminates_then_kills_the_group(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finalize, "KILL_GRACE", 0.5)
    pids = tmp_path / "pids"
    # ignores SIGTERM: needs the SIGKILL; its background child must die with the group
    (r,) = run_actions(sh("stubborn", f"trap '' TERM; sleep 60 & echo $! > {pids}; "
                                      "echo waiting; while :; do sleep 0.1; done", timeout=0.5))
    assert r.timed_out and r.status == "timed out after 0.5s, killed by SIGKILL"
    assert r.output == ("waiting",)
    child = int(pids.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{child}") or \
        Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_merge_action_runs_the_merge_verb(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    dest.mkdir()
    (staged / "f").write_text("new")
    action = ActionConfig(name="m", merge=MergeSpec(str(staged), str(dest)), when=When.ALWAYS)
    assert finalize.action_argv(action)[-3:] == ["merge", str(staged), str(dest)]
    (r,) = run_actions(action)
    assert r.ok, r.output
    assert (dest / "f").read_text() == "new"


def test_stamp_roundtrip_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "lib" / "stamp")
    fail = Result("fin", False, "exit status 2", exit_code=2, output=("boom",))
    assert stamp.report(path) == 0
    stamp.write_stamp(path, [fail])
    data = stamp.read_stamp(path)
    assert data is not None and data["failures"][0]["name"] == "fin"
    lines = stamp.render_stamp(path, data)
    assert lines[0].startswith("action fin failed at shutdown (") and lines[1] == "  | boom"
    assert stamp.report(path) == 1
    assert stamp.clear_stamp(path) and not stamp.clear_stamp(path)
    Path(path).write_text("garbage")  # not a stamp: 65 (still a failed report unit)
    with pytest.raises(Failure) as e:
        stamp.report(path)
    assert e.value.code == Exit.DATAERR and "not a holdmount failure stamp" in e.value.message
    damaged = stamp.read_stamp(path)  # the daemon's status still shows a failure
    assert damaged is not None and damaged["failures"][0]["status"] == "unreadable stamp (not JSON)"
    assert json.loads(json.dumps(fail.as_dict()))["output"] == ["boom"]


def test_signals_record_wake_and_restore() -> None:
    def mine(_s: int, _f: object) -> None:
        pass

    old_term = signal.signal(signal.SIGTERM, mine)
    old_hup = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup
    old_wakeup = signal.set_wakeup_fd(-1)
    try:
        with Signals([signal.SIGTERM, signal.SIGHUP]) as s:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert os.read(s.rfd, 10)  # the wakeup fd became readable
            assert s.drain() == [signal.SIGTERM, signal.SIGTERM]
            assert s.drain() == []
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGHUP) is old_hup
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.set_wakeup_fd(old_wakeup)


def test_action_runs_in_root_when_our_cwd_cannot_be_opened_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spawn comes back to the daemon's cwd through an O_PATH fd; when that open fails,
    the action still starts (in /) and the daemon stays in /."""
    real_open = os.open

    def no_dot(path: str, flags: int, *args: int) -> int:
        if path == ".":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spawn.os, "open", no_dot)
    (r,) = run_actions(sh("pwd", "pwd"))
    assert r.ok and r.output == ("/",), r
    assert os.getcwd() == "/"


def test_action_runs_in_root_and_our_cwd_is_kept(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (r,) = run_actions(sh("pwd", "pwd"))
    assert r.ok and r.output == ("/",), r
    assert os.getcwd() == str(tmp_path)
