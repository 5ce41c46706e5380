"""The kernel behaviour holdmount is built on, documented against a real autofs automount."""

from __future__ import annotations

import pytest
from autofs import AutofsLab

pytestmark = pytest.mark.real

PROBE = """
import os, sys
from holdmount import syscalls
mp, how = sys.argv[1], sys.argv[2]
if how == "stat":
    os.stat(mp)
elif how == "access":
    os.access(mp, os.W_OK)
elif how == "open_path":
    fd = os.open(mp, os.O_PATH)
    print(hex(syscalls.fstatfs(fd).f_type))
elif how == "open":
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    print(hex(syscalls.fstatfs(fd).f_type))
elif how == "stat_dot":
    os.stat(mp + "/.")
"""


@pytest.mark.parametrize(("how", "triggers"), [
    ("stat", False), ("access", False), ("open_path", False),
    ("open", True), ("stat_dot", True),
])
def test_what_triggers_an_automount(autofs: AutofsLab, how: str, triggers: bool) -> None:
    assert not autofs.mounted("a")
    r = autofs.py(PROBE, autofs.mp["a"], how)
    assert r.returncode == 0, r.stderr
    assert autofs.mounted("a") is triggers
    if how == "open_path":
        assert r.stdout.strip() == "0x187"  # the fd is on the autofs trigger itself
    if how == "open":
        assert r.stdout.strip() == "0x1021994"  # tmpfs: the real filesystem


def test_unheld_mount_expires(autofs: AutofsLab) -> None:
    autofs.py(PROBE, autofs.mp["a"], "open")
    assert autofs.mounted("a")
    took = autofs.wait_expired("a", 4 * autofs.timeout + 5)
    assert took is not None, "an unheld automount must expire"
