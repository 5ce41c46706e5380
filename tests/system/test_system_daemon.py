"""holdmount.service in a real systemd (systemd-nspawn), with the project's own unit files; on
both roots: Debian 12 (systemd 252) and Debian 13 (systemd 257).

One container root, three boots (each poweroff cycle takes seconds, so the checks are grouped):

1. marker absent: the held automount (TimeoutIdleSec=2s) stays mounted >= 10 s while its unheld
   twin expires, and a holdmount@ instance holds a third one; the daemon shares PID 1's mount
   namespace; `systemd-analyze verify` passes for every unit; status says armed / disarmed as
   the marker comes and goes; poweroff with the marker absent: the staged action does not run.
2. marker present, the action fails on purpose: it ran while the held path was mounted (it
   writes into it and records the mount table), the shutdown journal shows holdmount stopping
   before the mount is unmounted, and the failure stamp is written.
3. next boot: holdmount-report.service failed with the message; a bad config makes the daemon
   exit 78 without restart loops; then the action hangs past its timeout at poweroff: killed,
   and the stamp records it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nspawn import Container, OsRoot
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from nspawn import root_container_factory as _fixture  # noqa: F401  (registers the fixture)
from system_units import MARKER, STAMP, make, mounted, status, unit_prop

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

Factory = Callable[..., Container]


def lines_matching(log: str, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return [i for i, line in enumerate(log.splitlines()) if rx.search(line)]


def test_holdmount_service_in_systemd(root_container_factory: Factory, os_root: OsRoot) -> None:
    c = make(root_container_factory, os_root)

    # --- boot 1 ---------------------------------------------------------------------------
    c.boot()
    assert unit_prop(c, "holdmount.service", "ActiveState") == "active", \
        c.journal("-u", "holdmount.service")
    assert unit_prop(c, "holdmount-report.service", "ActiveState") == "active"
    assert mounted(c, "/hmt/held"), "READY only after the always hold is taken"
    # the daemon's mount namespace is PID 1's, and it knows it
    pid = unit_prop(c, "holdmount.service", "MainPID")
    ns = c.exec(["readlink", "/proc/1/ns/mnt", f"/proc/{pid}/ns/mnt"]).stdout.split()
    assert len(ns) == 2 and ns[0] == ns[1], ns
    s = status(c)
    assert s["host_mount_namespace"] is True
    assert unit_prop(c, "holdmount.service", "StatusText") == \
        "holding 1: /hmt/held; marker disarmed"
    # systemd-analyze verify, every unit (drop-ins included; the template as an instance)
    r = c.exec(["systemd-analyze", "verify", "holdmount.service", "holdmount-report.service",
                "holdmount@hmt-inst.service"])
    assert r.returncode == 0 and "holdmount" not in r.stderr, r.stderr
    # a holdmount@ instance for a third automount
    inst = c.exec(["systemd-escape", "--path", "--template=holdmount@.service",
                   "/hmt/inst"]).stdout.strip()
    assert inst == "holdmount@hmt-inst.service"
    assert c.systemctl("start", inst).returncode == 0, c.journal("-u", inst)
    # held twice over: >= 10 s (5x TimeoutIdleSec) mounted, while the unheld twin expires
    assert c.exec(["ls", "/hmt/twin/"]).returncode == 0
    assert mounted(c, "/hmt/twin")
    samples: list[tuple[bool, bool, bool]] = []
    end = time.monotonic() + 10.5
    while time.monotonic() < end:
        t = c.mountinfo()
        samples.append((t.is_real_mounted("/hmt/held"), t.is_real_mounted("/hmt/inst"),
                        t.is_real_mounted("/hmt/twin")))
        time.sleep(0.2)
    assert len(samples) >= 30
    assert all(h for h, _, _ in samples), "the held automount expired"
    assert all(i for _, i, _ in samples), "the holdmount@ instance's automount expired"
    assert not samples[-1][2], "the unheld twin should have expired"
    # the marker: armed when it appears (its parent too), disarmed when it goes
    c.exec(["sh", "-c", f"mkdir -p {Path(MARKER).parent} && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "armed", 10)  # type: ignore[index]
    c.exec(["rm", MARKER], check=True)
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "disarmed", 10)  # type: ignore[index]
    assert c.poweroff() == 0
    log = c.journal("-b", "0", "-o", "short-monotonic")
    assert "action finalize: skipped (marker absent)" in log, log[-3000:]
    assert not c.path("/srv/hmt-store/finalized").exists(), "staged action ran without marker"

    # --- boot 2: marker present, the action fails on purpose --------------------------------
    c.write_file("/etc/hmt/mode", "fail\n")
    c.boot()
    c.exec(["sh", "-c", f"mkdir -p {Path(MARKER).parent} && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "armed", 10)  # type: ignore[index]
    assert c.poweroff() == 0
    finalized = c.path("/srv/hmt-store/finalized").read_text()
    assert finalized.startswith("finalize ran, mode fail\n"), finalized
    assert " /hmt/held " in finalized.splitlines()[1], "the action saw the mount in the table"
    log = c.journal("-b", "0", "-o", "short-monotonic")
    ran = lines_matching(log, r"holdmount\[\d+\]: finalize: finalize: mode fail")
    released = lines_matching(log, r"holdmount\[\d+\]: released /hmt/held")
    stopped = lines_matching(log, r"holdmount\.service: (Main process exited|Failed with result)")
    unmounting = lines_matching(log, r"Unmount(ing|ed) .*(hmt-held|/hmt/held)")
    assert ran and released and stopped and unmounting, log[-4000:]
    assert ran[0] < released[0] < stopped[0] < unmounting[0], \
        "\n".join(log.splitlines()[min(ran[0], unmounting[0]):max(stopped[-1], unmounting[-1])
                                   + 1])
    stamp = json.loads(c.path(STAMP).read_text())
    (failure,) = stamp["failures"]
    assert failure["name"] == "finalize" and failure["status"] == "exit status 3"
    assert "finalize failed on purpose" in failure["output"]

    # --- boot 3: the report; a bad config; an action past its timeout -----------------------
    c.write_file("/etc/hmt/mode", "hang\n")
    c.boot()
    assert unit_prop(c, "holdmount-report.service", "ActiveState") == "failed"
    report = c.journal("-b", "0", "-u", "holdmount-report.service")
    assert "action finalize failed at shutdown" in report and "exit status 3" in report, report
    assert "finalize failed on purpose" in report
    # a bad config: exit 78, and no restart loop
    c.write_file("/etc/holdmount/conf.d/90-bad.toml", '[[hold]]\npath = "relative"\n')
    c.systemctl("restart", "holdmount.service")
    assert c.wait_for(lambda: unit_prop(c, "holdmount.service", "ActiveState") == "failed", 20)
    assert unit_prop(c, "holdmount.service", "ExecMainStatus") == "78"
    time.sleep(5)  # > RestartSec=2s: a restart would have happened by now
    assert unit_prop(c, "holdmount.service", "NRestarts") == "0"
    assert unit_prop(c, "holdmount.service", "ActiveState") == "failed"
    bad = c.journal("-b", "0", "-u", "holdmount.service")
    assert "config(/etc/holdmount/conf.d/90-bad.toml): hold[relative].path: must be an absolute " \
        "path" in bad, bad
    c.path("/etc/holdmount/conf.d/90-bad.toml").unlink()
    c.systemctl("reset-failed", "holdmount.service")
    assert c.systemctl("start", "holdmount.service").returncode == 0
    # the action hangs past its timeout (3s) at poweroff: killed, recorded
    c.exec(["sh", "-c", f"mkdir -p {Path(MARKER).parent} && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "armed", 10)  # type: ignore[index]
    assert c.poweroff() == 0
    log = c.journal("-b", "0", "-o", "short-monotonic")
    assert "still running after its timeout of 3s: sending SIGTERM" in log, log[-3000:]
    stamp = json.loads(c.path(STAMP).read_text())
    (failure,) = stamp["failures"]
    assert failure["timed_out"] is True
    assert failure["status"] == "timed out after 3s, killed by SIGTERM"
    assert "hanging" in failure["output"]
