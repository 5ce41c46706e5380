"""The daemon's loop as a subprocess: readiness, SIGTERM semantics, marker, stamp, fd hygiene.

Holds here are on plain directories (no automount): what is tested is the loop. The real
automount tests are in test_daemon_autofs.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon_harness import HM, DaemonProc, wait_for


def action(name: str, script: str, when: str = "always", timeout: str = "30s") -> str:
    return (f'[[action]]\nname = "{name}"\nexec = ["/bin/sh", "-c", {json.dumps(script)}]\n'
            f'when = "{when}"\ntimeout = "{timeout}"\n')


def test_ready_only_after_holds_and_status_line(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    with DaemonProc(tmp_path, f'[[hold]]\npath = "{held}"\n') as d:
        d.wait_ready()
        ready = next(m for m in d.notify.poll() if m.get("READY") == "1")
        assert ready["STATUS"] == f"holding 1: {held}"
        # the hold really is an open fd of the daemon on that directory
        links = [os.readlink(f"/proc/{d.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{d.pid}/fd")]
        assert str(held) in links
        s = d.status()
        assert s["state"] == "running" and s["holds"][0]["fstype"]
        d.term()
        assert d.wait() == 0, d.log()


def test_failed_always_hold_means_no_ready(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, f'[[hold]]\npath = "{tmp_path}/missing"\n') as d:
        rc = d.wait()
        assert rc == 66, d.log()  # EX_NOINPUT
        assert not d.notify.has("READY")
        assert f"open({tmp_path}/missing): No such file or directory" in d.log()
        assert not os.path.exists(d.socket), "the socket must be removed on exit"


def test_sigterm_storm_during_finalize_runs_each_action_once(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    runs = tmp_path / "runs"
    # each action records that it ran, and whether the daemon (its parent) still holds `held`
    probe = (f'echo "$HOLDMOUNT_ACTION $(ls -l /proc/$PPID/fd | grep -c " {held}$")" >> {runs};'
             " sleep 0.5")
    cfg = (f'[[hold]]\npath = "{held}"\n' + action("one", probe) + action("two", probe)
           + action("three", probe))
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        d.term()
        storm = 0
        while d.proc.poll() is None and storm < 200:
            os.kill(d.pid, signal.SIGTERM)
            storm += 1
            time.sleep(0.005)
        assert d.wait() == 0, d.log()
    assert runs.read_text().splitlines() == ["one 1", "two 1", "three 1"], \
        "every action exactly once, in order, with the hold still open"
    assert storm > 20
    assert "SIGTERM ignored: already finalizing" in d.log()
    assert d.notify.has("STOPPING", "1")
    extends = [m for m in d.notify.poll() if "EXTEND_TIMEOUT_USEC" in m]
    assert len(extends) == 3 and all(int(m["EXTEND_TIMEOUT_USEC"]) >= 30_000_000
                                     for m in extends)


def test_action_output_goes_to_the_log_tagged(tmp_path: Path) -> None:
    cfg = action("greet", "echo hello; echo oops >&2; printf 'no newline'")
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        d.term()
        assert d.wait() == 0
    log = d.log()
    for line in ("greet: hello", "greet: oops", "greet: no newline", "action greet: exit status 0"):
        assert line in log, log


def test_timeout_kills_the_whole_process_group_and_stamps(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    stamp = tmp_path / "state" / "failure.stamp"
    cfg = (f'[daemon]\nstamp = "{stamp}"\n'
           + action("slow", f"sleep 60 & echo $! > {pids}; echo started; wait", timeout="1s")
           + action("after", "echo still runs"))
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        d.term()
        assert d.wait() == 1, d.log()
    child = int(pids.read_text())
    assert not os.path.exists(f"/proc/{child}") or \
        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    data = json.loads(stamp.read_text())
    (failure,) = data["failures"]
    assert failure["name"] == "slow" and failure["timed_out"] is True
    assert failure["status"].startswith("timed out after 1s, killed by SIGTERM")
    assert failure["output"] == ["started"]
    assert "after: still runs" in d.log()
    # holdmount report shows it and fails
    r = subprocess.run([*HM, "report", "--stamp", str(stamp)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "action slow failed at shutdown" in r.stderr and "| started" in r.stderr


def test_stamp_survives_skipped_runs_and_goes_on_success(tmp_path: Path) -> None:
    stamp = tmp_path / "failure.stamp"
    marker = tmp_path / "run" / "staged"
    flag = tmp_path / "fail"
    flag.touch()
    ran = tmp_path / "ran"
    cfg = (f'[daemon]\nstamp = "{stamp}"\n[marker]\npath = "{marker}"\n'
           + action("finalize", f"echo x >> {ran}; test ! -e {flag}", when="staged"))

    def one_run(marker_present: bool) -> tuple[int, str]:
        sub = tmp_path / f"run{time.monotonic_ns()}"
        sub.mkdir()
        if marker_present:
            marker.parent.mkdir(exist_ok=True)
            marker.touch()
        elif marker.exists():
            marker.unlink()
        with DaemonProc(sub, cfg) as d:
            d.wait_ready()
            d.term()
            return d.wait(), d.log()

    rc, log = one_run(True)
    assert rc == 1 and stamp.exists(), log
    rc, log = one_run(False)  # marker absent: the staged action does not run, stamp stays
    assert rc == 0 and "action finalize: skipped (marker absent)" in log
    assert stamp.exists() and ran.read_text().count("x") == 1
    flag.unlink()
    rc, log = one_run(True)
    assert rc == 0 and not stamp.exists(), log
    assert "removed the failure stamp" in log


def test_inhibit_file_skips_staged_actions(tmp_path: Path) -> None:
    marker = tmp_path / "staged"
    locked = tmp_path / "staged-locked"
    marker.touch()
    locked.touch()
    cfg = (f'[marker]\npath = "{marker}"\ninhibit = "{locked}"\n'
           + action("finalize", "echo ran", when="staged") + action("log", "echo always"))
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        assert d.status()["marker"]["inhibited"] is True
        d.term()
        assert d.wait() == 0
    assert f"action finalize: skipped ({locked} exists)" in d.log()
    assert "log: always" in d.log() and "finalize: ran" not in d.log()


def test_marker_decided_at_sigterm_not_from_inotify_state(tmp_path: Path) -> None:
    """The marker appears with the SIGTERM: whatever inotify has delivered by then, the daemon
    looks at the filesystem and runs the staged action."""
    marker = tmp_path / "m" / "staged"
    cfg = f'[marker]\npath = "{marker}"\n' + action("finalize", "echo finalized", when="staged")
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        marker.parent.mkdir()
        marker.touch()
        d.term()
        assert d.wait() == 0
    assert "finalize: finalized" in d.log()


def test_marker_arms_staged_holds_and_parent_appears_later(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    marker = tmp_path / "a" / "b" / "staged"
    cfg = (f'[marker]\npath = "{marker}"\n[[hold]]\npath = "{held}"\nwhen = "staged"\n')
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        s = d.status()
        assert s["marker"]["state"] == "disarmed" and s["marker"]["watching"] == str(tmp_path)
        assert s["holds"][0]["held"] is False
        marker.parent.mkdir(parents=True)
        assert wait_for(lambda: d.status()["marker"]["watching"] == str(marker.parent), 10)
        tmp = marker.with_name("staged.tmp")
        tmp.write_text("x")
        tmp.rename(marker)  # rename into place, as updaters do
        assert wait_for(lambda: d.status()["holds"][0]["held"], 10)
        assert d.status()["marker"]["state"] == "armed"
        # the listener thread may not have received the datagram yet: wait for it
        assert wait_for(lambda: d.notify.has("STATUS", f"holding 1: {held}; marker armed"), 10)
        marker.unlink()
        assert wait_for(lambda: not d.status()["holds"][0]["held"], 10)
        assert d.status()["marker"]["state"] == "disarmed"
        # the parent goes away and comes back: the watch follows
        marker.parent.rmdir()
        assert wait_for(lambda: d.status()["marker"]["watching"] == str(marker.parent.parent), 10)
        marker.parent.mkdir()
        marker.touch()
        assert wait_for(lambda: d.status()["marker"]["state"] == "armed", 10)
        d.term()
        assert d.wait() == 0


def test_10000_marker_cycles_leak_no_fds(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    marker = tmp_path / "run" / "staged"
    marker.parent.mkdir()
    cfg = f'[marker]\npath = "{marker}"\n[[hold]]\npath = "{held}"\nwhen = "staged"\n'
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        before = d.fd_count()
        for i in range(10_000):
            marker.touch()
            marker.unlink()
            if i % 1000 == 999:  # now and then the parent goes away and comes back too
                marker.parent.rmdir()
                marker.parent.mkdir()
                assert d.fd_count() <= before + 2  # + a hold, + a helper's socket at most
        marker.touch()
        assert wait_for(lambda: d.status()["holds"][0]["held"], 20), d.log()
        marker.unlink()
        assert wait_for(lambda: not d.status()["holds"][0]["held"], 20)
        assert wait_for(lambda: d.fd_count() == before, 5), \
            (before, os.listdir(f"/proc/{d.pid}/fd"))
        assert d.status()["marker"]["watching"] == str(marker.parent)
        d.term()
        assert d.wait() == 0


def test_idle_daemon_never_wakes_up(tmp_path: Path) -> None:
    marker = tmp_path / "staged"
    with DaemonProc(tmp_path, f'[marker]\npath = "{marker}"\n[[hold]]\npath = "{tmp_path}"\n') \
            as d:
        d.wait_ready()
        d.status()

        def switches() -> int:
            text = Path(f"/proc/{d.pid}/status").read_text()
            return int(text.split("voluntary_ctxt_switches:")[1].split()[0])

        time.sleep(0.3)
        first = switches()
        time.sleep(2)
        assert switches() == first, "an idle daemon must not wake up"
        assert not d.notify.has("WATCHDOG")
        d.term()
        assert d.wait() == 0


def test_watchdog_only_when_asked(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, "", env={"WATCHDOG_USEC": "200000"}) as d:
        d.wait_ready()
        assert wait_for(lambda: sum("WATCHDOG" in m for m in d.notify.poll()) >= 3, 10)
        d.term()
        assert d.wait() == 0
    with DaemonProc(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, "",
                    env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) as d:
        d.wait_ready()
        time.sleep(0.5)
        assert not d.notify.has("WATCHDOG"), "WATCHDOG_PID names another process"
        d.term()
        assert d.wait() == 0


def test_sighup_is_logged_and_ignored(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        os.kill(d.pid, signal.SIGHUP)
        assert wait_for(lambda: "SIGHUP ignored" in d.log(), 10)
        assert d.proc.poll() is None
        d.term()
        assert d.wait() == 0


def test_foreign_namespace_is_refused_by_default(tmp_path: Path) -> None:
    # Under test, PID 1's namespace either differs or cannot be read: both are refused.
    r = subprocess.run(["unshare", "-m", *HM, "daemon", "--no-config"], capture_output=True,
                       text=True, env={**os.environ, "HOLDMOUNT_SOCKET": str(tmp_path / "s")},
                       timeout=60)
    assert r.returncode == 78, r.stderr
    first = r.stderr.splitlines()[0]
    assert "mount namespace" in first and "--allow-foreign-namespace" in r.stderr


def test_second_daemon_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        r = subprocess.run([*HM, "daemon", "--no-config", "--allow-foreign-namespace"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HOLDMOUNT_SOCKET": d.socket})
        assert r.returncode == 69, r.stderr
        assert f"bind({d.socket}): another holdmount daemon is listening there" in r.stderr
        assert d.status()["state"] == "running"
        d.term()
        assert d.wait() == 0


def test_status_cli_text_json_and_not_running(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    cfg = f'[[hold]]\npath = "{held}"\nprotect = true\n' + action("fin", "true")
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        env = {**os.environ, "HOLDMOUNT_SOCKET": d.socket}
        r = subprocess.run([*HM, "status"], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert f"  {held} [always]:" in r.stdout and "protected" in r.stdout
        assert "fin [always, timeout 30s]: /bin/sh -c true" in r.stdout
        r = subprocess.run([*HM, "status", "--json"], capture_output=True, text=True, env=env)
        s = json.loads(r.stdout)
        h = s["holds"][0]
        assert set(h) >= {"path", "fstype", "source", "since", "protected", "automount"}
        assert h["protected"] is True and h["automount"] is False
        assert "host_mount_namespace" in s and s["actions"][0]["last"] is None
        d.term()
        assert d.wait() == 0
    r = subprocess.run([*HM, "status"], capture_output=True, text=True, env=env)
    assert r.returncode == 69
    assert r.stderr.splitlines()[0] == (f"holdmount: connect({d.socket}): No such file or "
                                        "directory: the holdmount daemon is not running")


def test_cli_daemon_check(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[hold]]\npath = "/boot"\n')
    r = subprocess.run([*HM, "daemon", "--check", "--config", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "1 holds" in r.stdout
    assert sys.executable  # (the venv's interpreter runs the CLI)
