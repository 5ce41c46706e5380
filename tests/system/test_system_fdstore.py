"""The fd store in a real systemd (systemd-nspawn; 252 on Debian 12, 257 on Debian 13): `kill -9`
of the daemon does not let a held automount expire, because systemd keeps the held fd while the
service waits to restart and hands it back (LISTEN_FDS); the new daemon adopts it before READY.
With `fdstore = false` the same kill lets the automount expire during RestartSec=
— the control case.

holdmount.service as shipped, plus a drop-in: the venv's holdmount, RestartSec=5s (longer than
the automount's TimeoutIdleSec=2s, so an unheld mount expires meanwhile).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nspawn import Container, OsRoot
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from nspawn import root_container_factory as _fixture  # noqa: F401  (registers the fixture)
from system_units import TMPFS, automount, dropin, status, unit_prop

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

Factory = Callable[..., Container]
REPO = Path(__file__).resolve().parents[2]


def make(container_factory: Factory, root: OsRoot, fdstore: bool) -> Container:
    units = {"holdmount.service": (REPO / "units" / "holdmount.service").read_text()}
    units.update([dropin("holdmount.service", root)])
    units["holdmount.service.d/60-restart.conf"] = \
        "[Service]\nRestart=on-failure\nRestartSec=5s\n"
    units["hmt-held.automount"] = automount("/hmt/held")
    units["hmt-held.mount"] = TMPFS.format(where="/hmt/held")
    config = f'[daemon]\nfdstore = {"true" if fdstore else "false"}\n' \
             '[[hold]]\npath = "/hmt/held"\n'
    return container_factory(f"fdstore-{'on' if fdstore else 'off'}", units=units,
                             files={"/etc/holdmount/holdmount.toml": config},
                             wants=["hmt-held.automount", "holdmount.service"])


@pytest.mark.parametrize("fdstore", [True, False], ids=["fdstore", "no-fdstore"])
def test_kill_9_does_not_let_the_held_automount_expire(root_container_factory: Factory,
                                                       os_root: OsRoot, fdstore: bool) -> None:
    c = make(root_container_factory, os_root, fdstore)
    c.boot()
    assert unit_prop(c, "holdmount.service", "ActiveState") == "active", \
        c.journal("-u", "holdmount.service")
    assert c.mountinfo().is_real_mounted("/hmt/held")
    assert status(c)["fdstore"] is fdstore
    assert unit_prop(c, "holdmount.service", "NFileDescriptorStore") == ("1" if fdstore
                                                                          else "0")
    first = unit_prop(c, "holdmount.service", "MainPID")
    assert c.exec(["kill", "-9", first]).returncode == 0
    samples: list[bool] = []
    end = time.monotonic() + 5 + 2 + 3  # RestartSec + TimeoutIdleSec + margin
    while time.monotonic() < end:
        samples.append(c.mountinfo().is_real_mounted("/hmt/held"))
        time.sleep(0.1)
    assert len(samples) >= 50
    assert c.wait_for(lambda: unit_prop(c, "holdmount.service", "ActiveState") == "active"
                      and unit_prop(c, "holdmount.service", "MainPID") not in ("0", first),
                      30), c.journal("-u", "holdmount.service")
    journal = c.journal("-u", "holdmount.service")
    if fdstore:
        assert all(samples), f"expired while the daemon was dead: {samples.count(False)} of " \
                             f"{len(samples)} samples"
        assert "adopted from the fd store" in journal, journal[-3000:]
        holds: list[dict[str, object]] = status(c)["holds"]  # type: ignore[assignment]
        assert holds[0]["held"] is True and holds[0]["adopted"] is True
        assert unit_prop(c, "holdmount.service", "NFileDescriptorStore") == "1"
    else:
        assert not all(samples), "expected the unheld automount to expire (control case)"
        assert "adopted" not in journal
        assert c.wait_for(lambda: c.mountinfo().is_real_mounted("/hmt/held"), 10), \
            "the restarted daemon holds it again"
    # a clean stop empties the store (holds released at the end of the finalize)
    assert c.systemctl("stop", "holdmount.service").returncode == 0
    assert unit_prop(c, "holdmount.service", "NFileDescriptorStore") == "0"
    assert c.exec([c.os.holdmount, "--version"]).returncode == 0
