"""The holdmount.service scenario the systemd tests share: its units (the project's own, with
ExecStart= pointed at the root's holdmount), its configuration and finalize action, and the
questions the tests ask a container about it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from nspawn import HOST_ROOT, Container, OsRoot

Factory = Callable[..., Container]
REPO = Path(__file__).resolve().parents[2]
STAMP = "/var/lib/holdmount/failure.stamp"
MARKER = "/run/hmt/staged"


def automount(where: str) -> str:
    return f"[Unit]\nDescription=test automount {where}\n[Automount]\nWhere={where}\n" \
           "TimeoutIdleSec=2s\n"


def bind_mount(what: str, where: str) -> str:
    # a bind of a directory of the root: what the action writes through the mount persists in
    # the overlay's upper layer, readable after poweroff
    return f"[Mount]\nWhat={what}\nWhere={where}\nType=none\nOptions=bind\n"


TMPFS = "[Mount]\nWhat=tmpfs\nWhere={where}\nType=tmpfs\nOptions=size=4m,mode=0755\n"

# The action: writes into the held path, records the mount table; then does what
# /etc/hmt/mode says (ok, fail, hang).
FINALIZE = """#!/bin/sh
mode=$(cat /etc/hmt/mode 2>/dev/null || echo ok)
{ echo "finalize ran, mode $mode"; grep ' /hmt/held ' /proc/self/mountinfo; } > /hmt/held/finalized
sync
echo "finalize: mode $mode"
case $mode in
  fail) echo "finalize failed on purpose"; exit 3 ;;
  hang) echo "hanging"; exec sleep 600 ;;
esac
"""

CONFIG = f"""
[daemon]
stamp = "{STAMP}"
[marker]
path = "{MARKER}"
[[hold]]
path = "/hmt/held"
[[action]]
name = "finalize"
exec = ["/usr/local/libexec/hmt-finalize"]
when = "staged"
timeout = "3s"
"""


def dropin(unit: str, root: OsRoot = HOST_ROOT) -> tuple[str, str]:
    """Point ExecStart at the root's holdmount (the unit files name /usr/bin/holdmount, which
    the Debian 13 root has and the Debian 12 one runs from the checkout's venv)."""
    text = (REPO / "units" / unit).read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return (f"{unit}.d/50-venv.conf",
            f"[Service]\nExecStart=\n{exec_start.replace('/usr/bin/holdmount', root.holdmount)}\n")


def make(container_factory: Factory, root: OsRoot) -> Container:
    units = {name: (REPO / "units" / name).read_text()
             for name in ("holdmount.service", "holdmount@.service", "holdmount-report.service")}
    units.update(dict(dropin(u, root) for u in ("holdmount.service", "holdmount@.service",
                                                "holdmount-report.service")))
    units.update({
        "hmt-held.automount": automount("/hmt/held"),
        "hmt-held.mount": bind_mount("/srv/hmt-store", "/hmt/held"),
        "hmt-twin.automount": automount("/hmt/twin"),
        "hmt-twin.mount": TMPFS.format(where="/hmt/twin"),
        "hmt-inst.automount": automount("/hmt/inst"),
        "hmt-inst.mount": TMPFS.format(where="/hmt/inst"),
    })
    return container_factory(
        "daemon", units=units,
        files={"/etc/holdmount/holdmount.toml": CONFIG,
               "/usr/local/libexec/hmt-finalize": (FINALIZE, 0o755),
               "/srv/hmt-store/.keep": "", "/etc/hmt/mode": "ok\n"},
        wants=["hmt-held.automount", "hmt-twin.automount", "hmt-inst.automount",
               "holdmount.service", "holdmount-report.service"])


def status(c: Container) -> dict[str, object]:
    r = c.exec([c.os.holdmount, "status", "--json"])
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def unit_prop(c: Container, unit: str, prop: str) -> str:
    return c.systemctl("show", "-P", prop, unit).stdout.strip()


def mounted(c: Container, where: str) -> bool:
    return c.mountinfo().is_real_mounted(where)
