"""`systemctl soft-reboot` (systemd >= 254) with holdmount, on the Debian 13 root (systemd 257).

A soft-reboot stops every unit as a shutdown does (shutdown.target is reached), so
holdmount.service gets its SIGTERM like at any shutdown, deliberately handled the same way
(docs/ostree.md, "soft-reboot"): with the marker present the staged actions run while the held
paths are still mounted, then the holds are released and the daemon exits; the new userspace
starts holdmount.service again, which reads the marker afresh. ostree's own ExecStop finalizes
at a soft-reboot too; /run survives it, so a marker the action does not remove arms the new
daemon again (ostree's finalize removes its marker).

A soft-reboot unmounts what nspawn bound in (the checkout, the root's venv at /opt/holdmount; the
new userspace found no /usr/bin/holdmount: 203/EXEC): here holdmount is copied into the root, as
a package installs it.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from debian13 import VENV_IN_ROOT, venv_dir
from nspawn import REPO, Container, OsRoot, debian13_root
from nspawn import debian13_container_factory as _fixture  # noqa: F401  (registers the fixture)
from system_units import MARKER, make, status, unit_prop

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

Factory = Callable[..., Container]


def _soft_reboots(c: Container) -> str:
    return c.systemctl("show", "-P", "SoftRebootsCount").stdout.strip()


def _up(c: Container) -> bool:
    return c.systemctl("is-system-running").stdout.strip() in ("running", "degraded")


def _install_copy(c: Container, venv: Path) -> None:
    """The root's venv and the checkout's package copied into the container's root fs."""
    dest = c.path(VENV_IN_ROOT)
    shutil.copytree(venv, dest, symlinks=True, dirs_exist_ok=True)
    site = next(dest.glob("lib/python3*/site-packages"))
    for editable in site.glob("__editable__*"):
        editable.unlink()
    shutil.copytree(REPO / "holdmount", site / "holdmount",
                    ignore=shutil.ignore_patterns("__pycache__"))


def test_soft_reboot_runs_staged_actions_and_restarts(
        debian13_container_factory: Factory) -> None:
    root: OsRoot = dataclasses.replace(debian13_root(), binds=())  # no venv bind
    c = make(functools.partial(debian13_container_factory, os_root=root), root)
    _install_copy(c, venv_dir())
    c.boot()
    assert _soft_reboots(c) == "0"
    first = unit_prop(c, "holdmount.service", "MainPID")
    c.exec(["sh", "-c", f"mkdir -p {Path(MARKER).parent} && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "armed", 10)  # type: ignore[index]
    init = c.init_pid
    r = c.systemctl("soft-reboot")
    assert r.returncode == 0, r.stderr
    # PID 1 stays (the same process re-executes), the userspace comes up again
    assert c.wait_for(lambda: _soft_reboots(c) == "1" and _up(c), 60), c.console()[-3000:]
    assert c.init_pid == init
    # the staged action ran while /hmt/held was still mounted, before holdmount stopped
    finalized = c.path("/srv/hmt-store/finalized").read_text()
    assert finalized.startswith("finalize ran, mode ok\n"), finalized
    assert " /hmt/held " in finalized.splitlines()[1], finalized
    log = c.journal("-o", "short-monotonic")
    assert "action finalize: exit status 0" in log, log[-4000:]
    # the new userspace's daemon: a new process, holding again, armed by the surviving marker
    assert c.wait_for(lambda: unit_prop(c, "holdmount.service", "ActiveState") == "active", 30), \
        c.journal("-u", "holdmount.service")[-3000:]
    assert unit_prop(c, "holdmount.service", "MainPID") not in ("0", first)
    assert c.exec(["test", "-e", MARKER]).returncode == 0, "/run did not survive soft-reboot"
    assert c.wait_for(lambda: status(c)["marker"]["state"] == "armed", 10)  # type: ignore[index]
    assert c.mountinfo().is_real_mounted("/hmt/held")
    print(f"\n[soft-reboot] {len(log.splitlines())} journal lines; holdmount {first} -> "
          f"{unit_prop(c, 'holdmount.service', 'MainPID')}")
    assert c.poweroff() == 0
