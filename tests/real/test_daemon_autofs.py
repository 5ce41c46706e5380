"""The daemon against a real autofs automount (2 s idle timeout), run inside the lab's mount
namespace (hence --allow-foreign-namespace: the lab's namespace is not PID 1's)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from autofs import AutofsLab, wait_for
from daemon_harness import DaemonProc

pytestmark = pytest.mark.real


def daemon_in(lab: AutofsLab, tmp: Path, config: str) -> DaemonProc:
    tmp.chmod(0o755)
    return DaemonProc(tmp, config, popen=lab.popen, wrap=lab.cmd)


def test_daemon_holds_an_automount_past_three_timeouts(autofs: AutofsLab, tmp_path: Path) -> None:
    mp = autofs.mp["a"]
    with daemon_in(autofs, tmp_path, f'[[hold]]\npath = "{mp}"\n') as d:
        d.wait_ready()
        assert autofs.mounted("a")
        h = d.status()["holds"][0]
        assert h["fstype"] == "tmpfs" and h["automount"] is True and h["mount_point"] == mp
        samples = []
        end = time.monotonic() + 3 * autofs.timeout + 1
        while time.monotonic() < end:
            samples.append(autofs.mounted("a"))
            time.sleep(0.1)
        assert all(samples), f"expired while held: {samples.count(False)} of {len(samples)}"
        d.term()
        assert d.wait() == 0, d.log()
    assert autofs.wait_expired("a", 3 * autofs.timeout + 2) is not None, \
        "released at exit: the mount must expire"


def test_marker_takes_and_releases_the_staged_hold(autofs: AutofsLab, tmp_path: Path) -> None:
    mp = autofs.mp["a"]
    marker = tmp_path / "run" / "staged"
    cfg = f'[marker]\npath = "{marker}"\n[[hold]]\npath = "{mp}"\nwhen = "staged"\n'
    with daemon_in(autofs, tmp_path, cfg) as d:
        d.wait_ready()
        assert not autofs.mounted("a"), "a staged hold is not taken without the marker"
        marker.parent.mkdir()
        marker.touch()
        assert wait_for(lambda: autofs.mounted("a"), 10)
        assert wait_for(lambda: d.status()["holds"][0]["held"], 10)
        time.sleep(2 * autofs.timeout + 1)
        assert autofs.mounted("a"), "held while armed"
        marker.unlink()
        assert wait_for(lambda: not d.status()["holds"][0]["held"], 10)
        assert autofs.wait_expired("a", 3 * autofs.timeout + 2) is not None, \
            "disarmed: released, so the mount expires"
        assert d.status()["marker"]["state"] == "disarmed"
        d.term()
        assert d.wait() == 0


def test_sigterm_before_ready_still_finalizes(autofs: AutofsLab, tmp_path: Path) -> None:
    """SIGTERM while the daemon is still triggering its `always` hold (automount daemon stopped,
    so the trigger waits): the daemon finishes taking the hold, then finalizes with it held."""
    mp = autofs.mp["a"]
    out = tmp_path / "out"
    cfg = (f'[[hold]]\npath = "{mp}"\n[[action]]\nname = "fin"\nwhen = "always"\n'
           f'exec = ["/bin/sh", "-c", "grep -c \' {mp} \' /proc/self/mountinfo > {out}; '
           f'touch {mp}/finalized"]\n')
    os.kill(autofs.pid, signal.SIGSTOP)
    try:
        d = daemon_in(autofs, tmp_path, cfg)
        # the control socket exists once the signal handlers are in place and start() runs
        assert wait_for(lambda: os.path.exists(d.socket), 30), d.log()
        time.sleep(0.5)  # inside the (blocked) trigger now
        d.term()
        time.sleep(0.3)
        assert d.proc.poll() is None, "SIGTERM must not kill the daemon before READY"
    finally:
        os.kill(autofs.pid, signal.SIGCONT)
    with d:
        assert d.wait() == 0, d.log()
        assert out.read_text().strip() == "2", "the action ran with the mount there (trigger + fs)"
        assert d.notify.has("STOPPING", "1")
        assert "SIGTERM: finalizing" in d.log()
