"""holdmount on a real machine's shutdown: qemu (TCG), Debian 12, /boot = the ESP automounted by
systemd-gpt-auto-generator with TimeoutIdleSec=2s, holdmount installed from its own .deb
(packaging/build-deb), a real `systemctl poweroff` (tests/helpers/vm.py).

- holdmount: the guest stages (creates the marker), /boot idles past its timeout, poweroff; the
  host reads the ESP back: the finalize action's file is there, and the journal shows the action
  ran with the ESP (vfat) mounted on /boot.
- control, same image, holdmount not started: a unit that writes to /boot when it is stopped at
  shutdown gets EHOSTDOWN ("Host is down", systemd issue 22528); the ESP has no such file.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from vm import BaseImage, Disk, base_image, tools_available

pytestmark = [pytest.mark.real]

MARKER = "/run/vmtest/staged"
CONFIG = f"""\
[marker]
path = "{MARKER}"

[[hold]]
path = "/boot"
when = "staged"

[[action]]
name = "write-boot"
exec = ["/usr/local/bin/vmtest-finalize"]
when = "staged"
timeout = "30s"
"""
# like packaging/ostree/holdmount.service.d/50-ostree.conf: stop (= run the action) before
# /boot is unmounted; ordering only
DROPIN = "[Unit]\n# stop before /boot is unmounted at shutdown (ordering only)\nAfter=boot.mount\n"
# the finalize action: writes to /boot, says what /boot was (autofs + the ESP's vfat on top)
FINALIZE = """#!/bin/sh
fs=$(findmnt -n -o FSTYPE /boot | tr '\\n' ' ')
echo "finalized, /boot: $fs" > /boot/holdmount.txt && sync -f /boot/holdmount.txt &&
    echo "wrote /boot/holdmount.txt, /boot: $fs"
"""
GUEST_SCRIPT = """#!/bin/sh
log() { echo "VMTEST: $*" > /dev/ttyS0; echo "VMTEST: $*"; }
fs() { findmnt -n -o FSTYPE /boot | tr '\\n' ' '; }
mode=$(sed -n 's/.*vmtest.mode=\\([a-z]*\\).*/\\1/p' /proc/cmdline)
log "mode=$mode uptime=$(cut -d' ' -f1 /proc/uptime)"
ls /boot > /dev/null; log "after-access: $(fs)"
if [ "$mode" = holdmount ]; then
    mkdir -p /run/vmtest; touch /run/vmtest/staged
    for i in $(seq 100); do holdmount status | grep -qw armed && break; sleep 0.2; done
    log "status: $(holdmount status | tr '\\n' ' ')"
fi
sleep 6; log "after-idle-6s: $(fs)"
log "poweroff at uptime=$(cut -d' ' -f1 /proc/uptime)"
systemctl poweroff --no-block
"""
GUEST_UNIT = """[Unit]
Description=vmtest: stage, idle past the /boot timeout, power off
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/bin/vmtest.sh
"""
CONTROL_UNIT = """[Unit]
Description=vmtest control: write to /boot when stopped at shutdown, without holdmount
After=boot.automount
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo control > /boot/control.txt; echo "control write rc=$?"'
"""
FILES: dict[str, str | tuple[str, int]] = {
    "/etc/holdmount/holdmount.toml": CONFIG,
    "/etc/systemd/system/holdmount.service.d/50-boot.conf": DROPIN,
    "/usr/local/bin/vmtest.sh": (GUEST_SCRIPT, 0o755),
    "/usr/local/bin/vmtest-finalize": (FINALIZE, 0o755),
    "/etc/systemd/system/vmtest.service": GUEST_UNIT,
    "/etc/systemd/system/vmtest-control.service": CONTROL_UNIT,
}


def _fs_at(serial: str, label: str) -> set[str]:
    """The filesystem types the guest logged on /boot at LABEL (e.g. {"autofs", "vfat"})."""
    for line in serial.splitlines():
        if f"VMTEST: {label}:" in line:
            return set(line.split(f"{label}:", 1)[1].split())
    raise AssertionError(f"no 'VMTEST: {label}:' line in the serial log:\n{serial[-3000:]}")


@pytest.fixture(scope="session")
def vm_tools() -> None:
    """Before the package is built (the session's `debs`): without the tools, skip at once."""
    missing = tools_available()
    if missing:
        pytest.skip(f"not installed: {missing} (run scripts/setup)")


@dataclasses.dataclass(frozen=True)
class Run:
    disk: Disk
    serial: str  # the guest's console
    journal: str  # its persistent journal, read on the host after poweroff
    seconds: tuple[float, float]  # making the disk, qemu boot to poweroff


def _run(base: BaseImage, debs: list[Path], workdir: Path, append: str) -> Run:
    t0 = time.monotonic()
    disk = Disk(base, workdir, FILES, debs)
    made = time.monotonic() - t0
    wall = disk.boot(workdir / "serial.log", append=f"{append} systemd.wants=vmtest.service")
    return Run(disk, (workdir / "serial.log").read_text(errors="replace"),
               disk.journal("-o", "short-monotonic"), (made, wall))


def test_finalize_at_real_poweroff_with_gpt_auto_boot(vm_tools: None, debs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    t0 = time.monotonic()
    base = base_image()
    t_base = time.monotonic() - t0
    assert list(debs) == ["holdmount"], debs  # no inotify package: syscalls.py has inotify

    # holdmount: stage, idle, poweroff
    hm = _run(base, list(debs.values()), tmp_path / "hm",
              "vmtest.mode=holdmount systemd.wants=holdmount.service")
    written = hm.disk.esp_file("holdmount.txt")
    hm_lines = [ln for ln in hm.journal.splitlines() if "holdmount" in ln or "boot." in ln]
    assert hm.disk.esp_file("from-host.txt") == "written by the host\n"
    assert _fs_at(hm.serial, "after-access") == {"autofs", "vfat"}, hm.serial[-3000:]
    assert _fs_at(hm.serial, "after-idle-6s") == {"autofs", "vfat"}, "/boot expired while staged"
    assert written is not None and written.startswith("finalized, /boot: "), (
        f"{written!r}\n" + "\n".join(hm_lines[-40:]))
    assert set(written.split(":", 1)[1].split()) == {"autofs", "vfat"}, written
    assert "wrote /boot/holdmount.txt, /boot: " in hm.journal, "\n".join(hm_lines[-40:])
    assert "action write-boot: exit status 0" in hm.journal
    assert "Host is down" not in hm.journal

    # control: the same write from a unit stopped at shutdown, holdmount not started
    control = _run(base, list(debs.values()), tmp_path / "control",
                   "vmtest.mode=control systemd.wants=vmtest-control.service")
    assert _fs_at(control.serial, "after-access") == {"autofs", "vfat"}, control.serial[-3000:]
    assert _fs_at(control.serial, "after-idle-6s") == {"autofs"}, \
        "/boot should have expired (control)"
    assert control.disk.esp_file("control.txt") is None
    assert "Host is down" in control.journal and "control write rc=" in control.journal, \
        control.journal[-3000:]
    assert "action write-boot" not in control.journal
    print("\n".join(ln for ln in hm.journal.splitlines()
                    if "write-boot" in ln or "wrote /boot" in ln or "released /boot" in ln))
    print("\n".join(ln for ln in control.journal.splitlines() if "Host is down" in ln
                    or "control write" in ln))
    print(f"\n[vm] base image {t_base:.0f}s (cached unless first run); disk, boot to poweroff: "
          f"holdmount {hm.seconds[0]:.0f}s, {hm.seconds[1]:.0f}s; control "
          f"{control.seconds[0]:.0f}s, {control.seconds[1]:.0f}s")
