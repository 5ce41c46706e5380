"""Lost-mount detection: the daemon watches its mount table (POLLPRI on mountinfo, no polling);
a held mount that is lazily unmounted is logged, shown as lost, and taken again when the path
can be mounted again. Runs in an autofs lab's namespace (its own mounts vanish with it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autofs import AutofsLab, lab_base, wait_for
from daemon_harness import DaemonProc

pytestmark = pytest.mark.real


@pytest.fixture
def base() -> Iterator[Path]:
    b = lab_base()
    yield b
    shutil.rmtree(b, ignore_errors=True)


def hold_of(d: DaemonProc, path: str) -> dict[str, Any]:
    for h in d.status()["holds"]:
        if h["path"] == path:
            return dict(h)
    raise AssertionError(f"no hold {path}")


def test_umount_lazy_of_a_plain_mount_shows_lost_then_retaken(autofs: AutofsLab,
                                                               base: Path) -> None:
    """Nothing can mount it again by itself: it stays lost until someone mounts it."""
    target = base / "plain"
    target.mkdir()
    assert autofs.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hmt-one", str(target)]
                      ).returncode == 0
    with DaemonProc(base, f'[[hold]]\npath = "{target}"\n', popen=autofs.popen,
                    wrap=autofs.cmd) as d:
        d.wait_ready()
        first = hold_of(d, str(target))
        assert first["state"] == "held" and first["source"] == "hmt-one"
        assert autofs.run(["umount", "-l", str(target)]).returncode == 0
        assert wait_for(lambda: hold_of(d, str(target))["state"] == "lost", 10), d.log()
        h = hold_of(d, str(target))
        assert h["held"] is False and "was unmounted" in h["error"]
        assert d.proc.poll() is None, "the daemon stays up"
        assert sum("lost:" in line for line in d.log().splitlines()) == 1, d.log()
        assert d.status()["state"] == "running"
        # mounted again: taken again (a new mount)
        assert autofs.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hmt-two", str(target)]
                          ).returncode == 0
        assert wait_for(lambda: hold_of(d, str(target))["state"] == "held", 10), d.log()
        again = hold_of(d, str(target))
        assert again["held"] is True and again["source"] == "hmt-two"
        assert "taken again" in d.log()
        d.term()
        assert d.wait() == 0, d.log()


def test_umount_lazy_of_a_held_automount(autofs: AutofsLab, base: Path) -> None:
    """The trigger is still there: the daemon notices, logs it and triggers it again."""
    mp = autofs.mp["a"]
    with DaemonProc(base, f'[[hold]]\npath = "{mp}"\n', popen=autofs.popen,
                    wrap=autofs.cmd) as d:
        d.wait_ready()
        # a file in the held tmpfs: a new mount of the entry is a new, empty tmpfs (mount ids
        # are reused once the detached mount is freed, so they cannot tell)
        assert autofs.run(["touch", f"{mp}/old-mount"]).returncode == 0
        assert autofs.run(["umount", "-l", mp]).returncode == 0
        assert wait_for(lambda: "lost:" in d.log(), 10), d.log()
        assert wait_for(lambda: hold_of(d, mp)["state"] == "held"
                        and autofs.mounted("a"), 15), d.log()
        assert autofs.run(["test", "-e", f"{mp}/old-mount"]).returncode == 1, \
            "a new mount, triggered by the daemon"
        assert d.proc.poll() is None
        d.term()
        assert d.wait() == 0, d.log()
