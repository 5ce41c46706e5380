"""Lost-mount detection without polling: POLLPRI on mountinfo, and what became of a hold."""

from __future__ import annotations

import sys
import textwrap

import pytest
from sandbox import Cgroup

from holdmount.mounts import MountTable

pytestmark = pytest.mark.real

SCENARIO = textwrap.dedent(r"""
    import os, select, subprocess, tempfile
    from holdmount import hold
    from holdmount.mounts import MountTable, MountWatcher

    def wait(w):
        assert select.select([w], [], [], 10)[0], "no wakeup from the mount table"
        return w.read()

    d = tempfile.mkdtemp()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)
    w = MountWatcher()
    w.read()
    assert not select.select([w], [], [], 0.3)[0], "woke up with nothing changed"
    [h] = hold.take([d])
    print("start", hold.state(h.info, MountTable.read()))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)       # cover it
    print("covered", hold.state(h.info, wait(w)))
    subprocess.run(["umount", d], check=True)                                # uncover
    print("uncovered", hold.state(h.info, wait(w)))
    subprocess.run(["umount", "-l", d], check=True)                          # lazy unmount
    print("lazy", hold.state(h.info, wait(w)))
    # the fd still works: it pins a detached mount that nobody can reach by path
    print("fd still usable", os.listdir(h.fd) == [])
    h.release()
    os.rmdir(d)
""")


def test_watcher_wakes_on_changes_and_hold_state_follows() -> None:
    cg = Cgroup("mountwatch")
    try:
        r = cg.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCENARIO],
                   capture_output=True, text=True, timeout=60)
    finally:
        cg.remove()
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["start held", "covered covered", "uncovered held",
                                        "lazy lost", "fd still usable True"]


def test_parse_escaped_and_optional_fields() -> None:
    line = ("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:7 - ext3 "
            "/dev/root rw,errors=continue")
    [m] = MountTable.parse([line]).mounts
    assert m.mount_point == "/mnt/with space"
    assert m.propagation == ("master:1", "shared:7")
    assert (m.fstype, m.source, m.root) == ("ext3", "/dev/root", "/mnt1")
    assert m.options["errors"] == "continue" and "noatime" in m.options


def test_autofs_options() -> None:
    line = ("50 30 0:45 / /boot rw,relatime shared:20 - autofs systemd-1 "
            "rw,fd=47,pgrp=1,timeout=120,minproto=5,maxproto=5,direct,pipe_ino=1234")
    [m] = MountTable.parse([line]).mounts
    assert m.is_autofs and m.autofs_timeout == 120 and m.autofs_kind == "direct"
