"""The daemon test harness itself (helpers/daemon_harness.py): its notify listener sees the
daemon become ready and stop."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import DaemonProc


def test_listener_and_daemon_ready(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, f'[[hold]]\npath = "{tmp_path}"\n') as d:
        d.wait_ready()
        assert d.status()["holds"][0]["held"] is True
        d.term()
        assert d.wait() == 0, d.log()
    assert d.notify.index("READY") < d.notify.index("STOPPING")
