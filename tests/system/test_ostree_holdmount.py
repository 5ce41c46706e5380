"""holdmount finalizing in place of ostree's ExecStop, on a real staged deployment.

Each test runs on both roots (tests/helpers/ostree_lab.py): Debian 12 (ostree 2022.7, systemd 252:
the .path unit starts ostree-finalize-staged.service) and Debian 13 (ostree 2025.2, systemd 257:
staging itself starts it and fails if that fails). /boot is an automount with TimeoutIdleSec=2s;
the integration is switched on as docs/ostree.md says (packaging/ostree: config, holdmount.service
drop-in, ostree-finalize-staged.service drop-in; nothing masked):
- the fix: stage (exit 0), wait past the idle timeout, power off -> finalized; the action ran
  while /boot was mounted and holdmount stopped before /boot was unmounted; /boot is held only
  while staged; on 2025.2 /boot is held the moment staging returns;
- stage, then `systemctl reboot` at once -> finalized;
- `systemctl stop ostree-finalize-staged.service` by hand finalizes nothing;
- `switch off` restores /etc exactly, and ostree's own units then finalize;
- `--lock-finalization` -> nothing finalized, holdmount exits clean;
- a finalize that fails (the staged deployment's kernel removed) -> holdmount's stamp, and at the
  next boot of the same sysroot holdmount's report (and ostree's own boot-complete) fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nspawn import container_factory as _factory  # noqa: F401  (registers the fixture)
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from ostree_lab import (
    FINALIZE_TIMEOUT_DROPIN,
    HOLDMOUNT_STAMP,
    KVER,
    LOCK,
    MARKER,
    OSTREE_FINALIZE_UNIT,
    OSTREE_HOLD_UNIT,
    OSTREE_PATH_UNIT,
    PACKAGING,
    REF_BASE,
    REF_NEXT,
    SWITCH_DROPIN,
    OstreeContainer,
    Sysroot,
    Timings,
    holdmount_units,
    install_holdmount_dropin,
    localize,
    ostree_available,
    ostree_version,
    run,
    switch_off,
    switch_on,
)
from ostree_lab import lab_repo as _repo  # noqa: F401
from ostree_lab import sysroot_factory as _sysroots  # noqa: F401

pytestmark = [pytest.mark.nspawn]
if not ostree_available():
    pytestmark.append(pytest.mark.skip(reason="ostree / ostree-boot not installed "
                                              "(run scripts/setup)"))

WAIT = 5.0  # 2.5x the automount's idle timeout
ACTION = "ostree-finalize-staged"  # the action's name in packaging/ostree/holdmount-ostree.toml
# A second staged action, after ostree's: records what /boot is while the actions run.
RECORD_CONF = ("/etc/holdmount/conf.d/90-lab.toml", """\
[[action]]
name = "lab-record-boot"
exec = ["/bin/sh", "-c", "grep ' /boot ' /proc/self/mountinfo; ls /boot/loader/entries"]
when = "staged"
timeout = "10s"
""")


def _container(name: str, sysroot: Sysroot, **kw: object) -> OstreeContainer:
    units = holdmount_units(sysroot.lab.os)
    c = OstreeContainer(
        name, sysroot, units=units,
        # ostree-system-generator pulls in the .path and ostree-boot-complete on a real ostree
        # boot: pulled in here too, so the masks are what keeps ostree's units out
        wants=["holdmount.service", OSTREE_PATH_UNIT, "ostree-boot-complete.service",
               *(["holdmount-report.service"] if "holdmount-report.service" in units else [])],
        files=dict([FINALIZE_TIMEOUT_DROPIN, RECORD_CONF]), **kw)  # type: ignore[arg-type]
    out = switch_on(c)
    assert c.path(SWITCH_DROPIN).exists(), out
    for unit in (OSTREE_PATH_UNIT, OSTREE_FINALIZE_UNIT, OSTREE_HOLD_UNIT):
        assert not c.path(f"/etc/systemd/system/{unit}").is_symlink(), out
    return c


def _has_path_unit(c: OstreeContainer) -> bool:
    """ostree 2022.7 ships ostree-finalize-staged.path; 2025.2 dropped it (stages synchronously)."""
    return c.os.host_path(f"/lib/systemd/system/{OSTREE_PATH_UNIT}").exists()


def _status(c: OstreeContainer) -> dict[str, object]:
    r = c.exec([c.os.holdmount, "status", "--json"])
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def _delegated(c: OstreeContainer, path: str) -> bool:
    """Does the daemon hold PATH for a client (the drop-in's `holdmount hold`)?"""
    found = [d for d in _status(c).get("delegated") or []  # type: ignore[attr-defined]
             if d["path"] == path]
    return bool(found) and bool(found[0]["held"])


def _index(lines: list[str], needle: str, after: int = -1) -> int:
    for i, line in enumerate(lines):
        if i > after and needle in line:
            return i
    return -1


def _shutdown_lines(c: OstreeContainer) -> list[str]:
    return c.journal("-b", "-o", "short-monotonic").splitlines()


def test_holdmount_finalizes_staged_deployment(sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("hm-ostree-fix", s)
    t = Timings()
    try:
        t0 = time.monotonic()
        c.boot()
        t.boot = time.monotonic() - t0
        assert c.systemctl("is-active", "holdmount.service").stdout.strip() == "active", \
            c.journal("-b", "-u", "holdmount.service")
        for unit in (OSTREE_FINALIZE_UNIT, OSTREE_HOLD_UNIT):
            assert c.systemctl("is-enabled", unit).stdout.strip() != "masked"
        assert "50-holdmount.conf" in c.systemctl("cat", OSTREE_FINALIZE_UNIT).stdout

        # nothing staged: /boot is not held, it expires on its own
        c.exec(["ls", "/boot/loader/entries"], check=True)
        assert c.boot_mounted()
        t0 = time.monotonic()
        assert c.wait_for(lambda: not c.boot_mounted(), 3 * WAIT), \
            "/boot stayed mounted with nothing staged"
        expired = time.monotonic() - t0
        st = _status(c)
        assert st["marker"]["state"] == "disarmed"  # type: ignore[index]

        # staged: holdmount arms and holds /boot past the idle timeout
        t0 = time.monotonic()
        r = c.stage()
        t.stage = time.monotonic() - t0
        assert c.exec(["test", "-e", MARKER]).returncode == 0
        if not _has_path_unit(c):
            # ostree >= 2025.2 started ostree-finalize-staged.service before it returned: its
            # ExecStart had the daemon hold /boot, so /boot is mounted and held right now
            assert c.boot_mounted(), f"/boot not mounted when staging returned\n{r.stderr}"
            assert _delegated(c, "/boot"), _status(c)
        assert c.wait_for(c.boot_mounted, WAIT), "holdmount did not mount /boot after staging"
        assert c.wait_for(lambda: c.systemctl("is-active", OSTREE_FINALIZE_UNIT).stdout.strip()
                          == "active", WAIT)
        t0 = time.monotonic()
        time.sleep(WAIT)
        assert c.boot_mounted(), "/boot expired although a deployment is staged"
        st = _status(c)
        assert st["marker"]["state"] == "armed"  # type: ignore[index]
        boot_hold = [h for h in st["holds"] if h["path"] == "/boot"]  # type: ignore[attr-defined]
        assert boot_hold and boot_hold[0]["held"], st
        t.wait = time.monotonic() - t0

        t0 = time.monotonic()
        c.poweroff(timeout=180)
        t.poweroff = time.monotonic() - t0
        print("\n" + t.line(f"holdmount, ostree {ostree_version(c.os)}")
              + f"; /boot expired {expired:.1f}s after its last use with nothing staged")

        entries = s.loader_entries()
        lines = _shutdown_lines(c)
        hm = [ln for ln in lines if "holdmount" in ln or "boot.mount" in ln]
        assert [e.commit for e in entries] == [s.lab.commits[REF_NEXT], s.lab.commits[REF_BASE]], (
            f"{entries}\n{s.status()}\n" + "\n".join(hm[-40:]))
        assert s.status_commits() == [s.lab.commits[REF_NEXT], s.lab.commits[REF_BASE]]

        # the journal: the actions ran while /boot was mounted, holdmount stopped before the
        # unmount of /boot
        stopping = _index(lines, "Stopping holdmount.service")
        action_done = _index(lines, f"action {ACTION}", stopping)
        record = _index(lines, "]: lab-record-boot: ", stopping)  # its output, not "action ..."
        stopped = _index(lines, "Stopped holdmount.service", stopping)
        unmounting = _index(lines, "Unmounting boot.mount", stopping)
        print("\n".join(ln for ln in lines[stopping:] if "holdmount" in ln or "boot" in ln))
        assert -1 not in (stopping, record, stopped, unmounting), "\n".join(hm[-40:])
        assert stopping < record < stopped < unmounting, "\n".join(hm[-40:])
        assert action_done == -1 or action_done < stopped
        # what the recording action saw: a real mount on the autofs trigger at /boot, and the
        # two loader entries ostree had just written there
        output = [ln.split("]: lab-record-boot: ", 1)[1] for ln in lines[record:stopped]
                  if "]: lab-record-boot: " in ln]
        boot_mounts = [o.split(" - ", 1)[1].split()[0] for o in output
                       if " /boot " in o and " - " in o]
        assert "autofs" in boot_mounts and any(f != "autofs" for f in boot_mounts), output
        # (2022.7 names them ostree-N-debian.conf, 2025.2 ostree-N.conf)
        assert sorted(o for o in output if o.endswith(".conf")) == \
            sorted(e.file for e in entries) and len(entries) == 2, output
        assert not c.path(HOLDMOUNT_STAMP).exists()
        assert not any("holdmount.service: Failed" in ln for ln in lines)
    finally:
        c.cleanup()


def test_holdmount_respects_lock_finalization(sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("hm-ostree-locked", s)
    try:
        t0 = time.monotonic()
        c.boot()
        boot = time.monotonic() - t0
        t0 = time.monotonic()
        c.stage("--lock-finalization")
        stage = time.monotonic() - t0
        assert c.exec(["test", "-e", LOCK]).returncode == 0, "ostree wrote no lock file"
        t0 = time.monotonic()
        c.poweroff(timeout=180)
        print(f"\n[ostree cycle] holdmount, --lock-finalization: boot {boot:.1f}s, "
              f"stage {stage:.1f}s, poweroff {time.monotonic() - t0:.1f}s")
        lines = _shutdown_lines(c)
        hm = [ln for ln in lines if "holdmount" in ln]
        assert [e.commit for e in s.loader_entries()] == [s.lab.commits[REF_BASE]], \
            "\n".join(hm[-30:])
        assert any(f"action {ACTION}: skipped" in ln and LOCK in ln for ln in lines), \
            "\n".join(hm[-30:])
        assert not any("holdmount.service: Failed" in ln or "holdmount.service: Main process "
                       "exited, code=exited, status=" in ln for ln in lines), "\n".join(hm[-30:])
        assert _index(lines, "Stopped holdmount.service") != -1
        assert not c.path(HOLDMOUNT_STAMP).exists()
    finally:
        c.cleanup()


def test_failed_finalize_is_reported_at_next_boot(sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("hm-ostree-fail", s)
    try:
        t0 = time.monotonic()
        c.boot()
        boot = time.monotonic() - t0
        c.stage()
        staged = s.staged_deployment_dirs()
        assert len(staged) == 1
        # the staged deployment loses its kernel: finalize cannot install it
        (staged[0] / "usr" / "lib" / "modules" / KVER / "vmlinuz").unlink()
        t0 = time.monotonic()
        c.poweroff(timeout=180)
        poweroff = time.monotonic() - t0
        lines = _shutdown_lines(c)
        hm = [ln for ln in lines if "holdmount" in ln]
        assert [e.commit for e in s.loader_entries()] == [s.lab.commits[REF_BASE]], \
            "\n".join(hm[-30:])
        stamp = c.path(HOLDMOUNT_STAMP)
        assert stamp.exists(), "\n".join(hm[-30:])
        stamp_text = stamp.read_text()
        assert ACTION in stamp_text and "kernel" in stamp_text, stamp_text
        print("\n[holdmount stamp] " + " | ".join(
            ln for ln in stamp_text.splitlines() if "kernel" in ln or ACTION in ln)[:600])

        # the next boot of the same sysroot reports it
        t0 = time.monotonic()
        c.boot()
        boot2 = time.monotonic() - t0
        r = c.exec([c.os.holdmount, "report"])
        assert r.returncode != 0 and ACTION in r.stdout + r.stderr, r
        report_unit = None
        if "holdmount-report.service" in holdmount_units(c.os):
            report_unit = c.systemctl("is-failed", "holdmount-report.service").stdout.strip()
            assert report_unit == "failed", c.journal("-b", "-u", "holdmount-report.service")
        # ostree's own stamp and boot-complete keep working alongside
        complete = c.systemctl("is-failed", "ostree-boot-complete.service").stdout.strip()
        ostree_stamp_seen = complete == "failed"
        print(f"\n[ostree cycle] holdmount, failing finalize: boot {boot:.1f}s, "
              f"poweroff {poweroff:.1f}s, next boot {boot2:.1f}s; holdmount report: "
              f"{(r.stdout + r.stderr).strip().splitlines()[0]!r}; holdmount-report.service: "
              f"{report_unit}; ostree-boot-complete.service: {complete}")
        assert ostree_stamp_seen, c.journal("-b", "-u", "ostree-boot-complete.service")
        assert "failed on previous boot" in c.journal("-b", "-u", "ostree-boot-complete.service")
    finally:
        c.cleanup()


def _finalized(s: Sysroot) -> bool:
    return [e.commit for e in s.loader_entries()] == \
        [s.lab.commits[REF_NEXT], s.lab.commits[REF_BASE]]


def test_stage_then_reboot_at_once(sysroot_factory: Callable[[], Sysroot]) -> None:
    """The race that made ostree drop its .path unit: `systemctl reboot` right after staging."""
    s = sysroot_factory()
    c = _container("hm-ostree-race", s)
    try:
        c.boot()
        c.stage()
        t0 = time.monotonic()
        r = c.exec(["systemctl", "reboot"], timeout=60)
        assert r.returncode == 0, r.stderr
        # systemd-nspawn boots the container again after a reboot: wait for the entries
        assert c.wait_for(lambda: _finalized(s), 120), (
            f"{s.loader_entries()}\n" + "\n".join(
                ln for ln in _shutdown_lines(c) if "holdmount" in ln or "ostree" in ln))
        print(f"\n[ostree cycle] holdmount, ostree {ostree_version(c.os)}: stage, reboot at "
              f"once -> finalized {time.monotonic() - t0:.1f}s after `systemctl reboot`")
        assert s.status_commits()[0] == s.lab.commits[REF_NEXT]
        journal = c.journal("-o", "short-monotonic")
        assert f"action {ACTION}" in journal, journal[-3000:]
        assert not c.path(HOLDMOUNT_STAMP).exists()
    finally:
        c.cleanup()


def test_manual_stop_of_finalize_unit_finalizes_nothing(
        sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("hm-ostree-stop", s)
    try:
        c.boot()
        c.stage()
        assert c.wait_for(lambda: c.systemctl("is-active", OSTREE_FINALIZE_UNIT).stdout.strip()
                          == "active", WAIT)
        c.systemctl("stop", OSTREE_FINALIZE_UNIT, check=True)
        assert s.staged_deployment_dirs(), "the staged deployment went away"
        assert [e.commit for e in s.loader_entries()] == [s.lab.commits[REF_BASE]], \
            "stopping ostree-finalize-staged.service finalized behind the admin's back"
        assert c.exec(["test", "-e", MARKER]).returncode == 0
        assert c.systemctl("is-active", "holdmount.service").stdout.strip() == "active"
        # holdmount still finalizes at shutdown
        c.poweroff(timeout=180)
        assert _finalized(s), "\n".join(ln for ln in _shutdown_lines(c) if "holdmount" in ln)
    finally:
        c.cleanup()


def _switched_off(name: str, s: Sysroot) -> OstreeContainer:
    """holdmount installed (units, the package's drop-in), the switch not (yet) on."""
    c = OstreeContainer(name, s, units=holdmount_units(s.lab.os),
                        wants=["holdmount.service", OSTREE_PATH_UNIT],
                        files=dict([FINALIZE_TIMEOUT_DROPIN]))
    install_holdmount_dropin(c)
    return c


def test_switch_live_on_and_refusal_while_staged(sysroot_factory: Callable[[], Sysroot]) -> None:
    """`on` on the running system: reloads systemd and restarts holdmount with the ostree config;
    `off` while a deployment is staged is refused (exit 75), and the staged one is finalized."""
    s = sysroot_factory()
    c = _switched_off("hm-ostree-live", s)
    try:
        c.boot()
        assert _status(c)["marker"] is None or \
            _status(c)["marker"]["path"] != MARKER  # type: ignore[index]
        switch = str(PACKAGING / "holdmount-ostree-switch")
        r = c.exec([switch, "on"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        dropin = c.path(SWITCH_DROPIN)  # the Debian 12 root runs holdmount from the venv
        dropin.write_text(localize(dropin.read_text(), c.os))
        c.systemctl("daemon-reload", check=True)
        assert c.wait_for(lambda: c.systemctl("is-active", "holdmount.service").stdout.strip()
                          == "active", 10)
        assert _status(c)["marker"]["path"] == MARKER  # type: ignore[index]
        c.stage()
        r = c.exec([switch, "off"], timeout=60)
        assert r.returncode == 75 and "staged" in r.stderr, r
        assert c.path(SWITCH_DROPIN).exists()
        c.poweroff(timeout=180)
        assert _finalized(s), "\n".join(ln for ln in _shutdown_lines(c) if "holdmount" in ln)
    finally:
        c.cleanup()


def _etc_snapshot(root: Path) -> dict[str, str]:
    """Every entry under ROOT/etc: symlink targets and file contents (directories as "dir")."""
    out = {}
    for p in sorted((root / "etc").rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes().hex()[:4096]
    return out


def test_switch_off_restores_ostree_units(sysroot_factory: Callable[[], Sysroot]) -> None:
    """`off` restores /etc exactly; ostree's own units then finalize (with ostree's hold)."""
    s = sysroot_factory()
    c = _switched_off("hm-ostree-off", s)
    try:
        before = _etc_snapshot(c.deployment)
        switch_on(c)
        assert _etc_snapshot(c.deployment) != before
        out = switch_off(c)
        assert _etc_snapshot(c.deployment) == before, out
        c.boot()
        assert "50-holdmount.conf" not in c.systemctl("cat", OSTREE_FINALIZE_UNIT).stdout
        c.stage()
        time.sleep(WAIT)
        c.poweroff(timeout=180)
        lines = _shutdown_lines(c)
        assert _finalized(s), "\n".join(ln for ln in lines if "ostree" in ln)
        # finalized by ostree's own ExecStop, not by holdmount (which has no ostree config)
        assert not any(f"action {ACTION}" in ln for ln in lines)
        assert any("Bootloader updated" in ln and "holdmount[" not in ln for ln in lines), \
            "\n".join(ln for ln in lines if "ostree" in ln)
    finally:
        c.cleanup()


def test_switch_on_and_off_offline(tmp_path: Path) -> None:
    """The rollback in docs/ostree.md on an offline root: `off` undoes exactly what `on` did,
    also when holdmount.service was enabled and a config existed before; masks an earlier
    version of the switch left are removed (they break staging on ostree >= 2025.2)."""
    switch = str(PACKAGING / "holdmount-ostree-switch")
    for prior in ("fresh", "enabled+config"):
        root = tmp_path / prior
        unit_dir = root / "etc/systemd/system"
        unit_dir.mkdir(parents=True)
        (unit_dir / "holdmount.service").write_text(holdmount_units()["holdmount.service"])
        conf = root / "etc/holdmount/conf.d/50-ostree.toml"
        if prior != "fresh":
            run(["systemctl", f"--root={root}", "enable", "holdmount.service"])
            conf.parent.mkdir(parents=True)
            conf.write_text("# the admin's own\n")
        before = _etc_snapshot(root)
        run([switch, "on", f"--root={root}"])
        dropin = root / SWITCH_DROPIN.lstrip("/")
        assert dropin.read_text() == (PACKAGING / "ostree-finalize-staged.service.d" /
                                      "50-holdmount.conf").read_text()
        assert conf.read_text() == ((PACKAGING / "holdmount-ostree.toml").read_text()
                                    if prior == "fresh" else "# the admin's own\n")
        assert (unit_dir / "multi-user.target.wants" / "holdmount.service").is_symlink()
        for unit in (OSTREE_PATH_UNIT, OSTREE_FINALIZE_UNIT, OSTREE_HOLD_UNIT):
            assert not (unit_dir / unit).is_symlink()
        run([switch, "off", f"--root={root}"])
        assert _etc_snapshot(root) == before, prior
    # an earlier version's masks
    root = tmp_path / "legacy"
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "holdmount.service").write_text(holdmount_units()["holdmount.service"])
    for unit in (OSTREE_PATH_UNIT, OSTREE_FINALIZE_UNIT, OSTREE_HOLD_UNIT):
        (unit_dir / unit).symlink_to("/dev/null")
    r = run([switch, "on", f"--root={root}"])
    for unit in (OSTREE_PATH_UNIT, OSTREE_FINALIZE_UNIT, OSTREE_HOLD_UNIT):
        assert not (unit_dir / unit).is_symlink(), r.stdout
    # off: not back to the masks (they break ostree >= 2025.2); a second off says "not on"
    run([switch, "off", f"--root={root}"])
    r = run([switch, "off", f"--root={root}"])
    assert "not on" in r.stderr


def test_switch_refuses_unknown_verb() -> None:
    r = run([str(PACKAGING / "holdmount-ostree-switch"), "sideways"], check=False)
    assert r.returncode == 64 and "usage" in r.stderr
