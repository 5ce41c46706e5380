"""doctor under a real systemd (PID 1 in systemd-nspawn: 252 on the Debian 12 root, 257 on the
Debian 13 one): the .automount unit, its TimeoutIdleUSec and its state come from D-Bus
(pystemd), and doctor still does not trigger."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from nspawn import Container
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from nspawn import root_container_factory as _fixture  # noqa: F401  (registers the fixture)

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

WHERE = "/hmdoctor/auto"
AUTOMOUNT = f"""\
[Unit]
Description=doctor test automount
[Automount]
Where={WHERE}
TimeoutIdleSec=7s
"""
MOUNT = f"""\
[Mount]
What=tmpfs
Where={WHERE}
Type=tmpfs
Options=size=4m,mode=0755
"""


def _doctor(c: Container, *args: str) -> dict[str, Any]:
    r = c.exec([c.os.holdmount, "doctor", "--json", *args])
    assert "Traceback" not in r.stderr, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    assert data["exit"] == r.returncode
    return data


def _codes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in data["paths"][0]["findings"]}


def test_automount_unit_from_dbus(root_container_factory: Callable[..., Container]) -> None:
    c = root_container_factory("doctor", units={"hmdoctor-auto.automount": AUTOMOUNT,
                                           "hmdoctor-auto.mount": MOUNT},
                          wants=["hmdoctor-auto.automount"])
    c.boot()
    assert not c.mountinfo().is_real_mounted(WHERE)
    f = _codes(_doctor(c, WHERE))
    assert not c.mountinfo().is_real_mounted(WHERE), "doctor triggered the automount"
    unit = f["automount-unit"]
    d = unit["details"]
    assert d["unit"] == "hmdoctor-auto.automount"
    assert d["timeout_idle_usec"] == 7_000_000
    assert (d["load_state"], d["active_state"], d["sub_state"]) == ("loaded", "active", "waiting")
    assert d["mount_active_state"] == "inactive"
    assert "TimeoutIdleUSec=7s" in unit["message"]
    assert f["autofs-trigger"]["details"]["timeout"] == 7  # the kernel agrees
    assert "not-mounted" in f
    assert "host-namespace" in f  # doctor ran in PID 1's namespace
    assert "overlay-layer" not in f  # the container root (overlay of /) is not a layer

    # mounted (by a trigger from the container's own namespace), the unit says running
    r = c.exec(["stat", "-f", "-c", "%T", f"{WHERE}/."])
    assert r.stdout.strip() == "tmpfs", r.stderr
    f = _codes(_doctor(c, WHERE))
    assert f["automount-unit"]["details"]["sub_state"] == "running"
    assert f["mounted"]["details"]["fstype"] == "tmpfs"

