"""The Path and Mount sections: does the path exist, which automount trigger it lies behind,
is that mounted now, is its automount daemon alive, and what systemd says about the unit."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from holdmount import systemd
from holdmount.doctor.options import Options
from holdmount.doctor.proc import automount_daemon_state
from holdmount.doctor.report import Finding, Section, Severity
from holdmount.doctor.walk import Trigger, Walk
from holdmount.mounts import Mount, MountTable

_PATH_ERRORS = {  # errno -> (code, what it means, remedy)
    errno.ENOENT: ("path-missing", "", "check the path (a dangling symlink or an automount map "
                   "without that key also give this); the sections below describe where it "
                   "would be"),
    errno.EACCES: ("path-unreadable", "", "run doctor as a user who may look there (or as root)"),
    errno.EPERM: ("path-unreadable", "", "run doctor as a user who may look there (or as root)"),
    errno.EHOSTDOWN: ("path-catatonic", " (a catatonic automount)",
                      "restart the automount daemon (autofs) or the .automount unit"),
}


def path_findings(w: Walk) -> list[Finding]:
    if w.error is None:
        if w.stopped_at is not None:
            return [Finding(Section.PATH, Severity.OK, "path-behind-trigger",
                            f"{w.resolved}: not looked at, it lies behind the automount trigger "
                            f"{w.stopped_at} and looking would mount it",
                            details={"trigger": w.stopped_at})]
        kind = "directory" if w.st is not None and stat.S_ISDIR(w.st.st_mode) else "file"
        return [Finding(Section.PATH, Severity.OK, "path-exists",
                        f"{w.resolved}: exists ({kind})", details={"type": kind})]
    num = w.error.errno or 0
    where = w.failed_at or w.resolved
    details = {"failed_at": where, "errno": errno.errorcode.get(num, str(num))}
    text = os.strerror(num) if num else str(w.error)
    if num not in _PATH_ERRORS:
        return [Finding(Section.PATH, Severity.PROBLEM, "path-error", f"lstat({where}): {text}",
                        details=details)]
    code, meaning, remedy = _PATH_ERRORS[num]
    return [Finding(Section.PATH, Severity.PROBLEM, code, f"lstat({where}): {text}{meaning}",
                    remedy=remedy, details=details)]


def _timeout_text(seconds: int | None) -> str:
    if seconds is None:
        return "unknown idle timeout"
    if seconds == 0:
        return "no idle timeout (never expires)"
    return f"idle timeout {seconds}s"


def _fs_details(m: Mount) -> dict[str, Any]:
    return {"fstype": m.fstype, "source": m.source, "mount_point": m.mount_point,
            "mnt_id": m.mnt_id}


def mount_findings(w: Walk, table: MountTable, trig: Trigger | None,
                   opts: Options) -> list[Finding]:
    if trig is None:
        m = table.containing(w.resolved)
        if m is None:
            return []
        return [Finding(Section.MOUNT, Severity.OK, "not-automount",
                        f"not an automount: {m.fstype} from {m.source} on {m.mount_point}",
                        details=_fs_details(m))]
    a = trig.mount
    timeout = a.autofs_timeout
    details: dict[str, Any] = {"kind": trig.kind, "trigger": a.mount_point, "map": a.source,
                               "timeout": timeout, "point": trig.point}
    out = [Finding(Section.MOUNT, Severity.OK, "autofs-trigger",
                   f"{trig.kind} automount trigger on {a.mount_point} (map {a.source}), "
                   f"{_timeout_text(timeout)}", details=details)]
    if trig.point is None:
        out.append(Finding(Section.MOUNT, Severity.WARNING, "indirect-root",
                           f"{a.mount_point} is the root of an indirect automount map: it is "
                           "never mounted itself, only its entries are",
                           remedy=f"name an entry below it ({a.mount_point}/KEY)"))
    elif trig.mounted is not None:
        m = table.containing(w.resolved) or trig.mounted
        out.append(Finding(Section.MOUNT, Severity.OK, "mounted",
                           f"mounted now: {m.fstype} from {m.source} on {m.mount_point}",
                           details=_fs_details(m)))
    else:
        out.append(Finding(Section.MOUNT, Severity.OK, "not-mounted",
                           f"not mounted now: {trig.point} shows only the autofs trigger "
                           "(doctor did not trigger it; the first open or lookup inside will)",
                           details={"point": trig.point}))
    out += _daemon_findings(trig)
    out += systemd_findings(a.mount_point, opts)
    return out


def _daemon_findings(trig: Trigger) -> list[Finding]:
    """The automount daemon behind the trigger: gone (catatonic) or stopped (a hang)."""
    where = trig.mount.mount_point
    state, pgrp = automount_daemon_state(trig.mount)
    if state == "dead":
        return [Finding(Section.MOUNT, Severity.PROBLEM, "automount-catatonic",
                        f"the automount daemon of {where} is gone (process group {pgrp} is "
                        "empty): the trigger is catatonic, accesses fail (EHOSTDOWN/ENOENT) and "
                        "nothing will mount or expire",
                        remedy="restart autofs (or the .automount unit), then check its log",
                        details={"pgrp": pgrp})]
    if state == "stopped":
        sev = Severity.WARNING if trig.mounted is not None else Severity.PROBLEM
        return [Finding(Section.MOUNT, sev, "automount-stopped",
                        f"the automount daemon of {where} is stopped (process group {pgrp}): a "
                        "trigger would hang until it continues",
                        remedy=f"kill -CONT -{pgrp}, or restart autofs", details={"pgrp": pgrp})]
    return []


def systemd_findings(where: str, opts: Options) -> list[Finding]:
    status = systemd.automount_status(where, address=opts.systemd_address)
    if isinstance(status, systemd.NoSystemd):
        return [Finding(Section.MOUNT, Severity.OK, "no-systemd",
                        f"systemd: {status.reason}; no .automount unit to ask about",
                        details={"reason": status.reason})]
    if isinstance(status, systemd.QueryFailed):
        unit = systemd.unit_name_for_path(where, "automount")
        return [Finding(Section.MOUNT, Severity.WARNING, "systemd-query-failed",
                        f"systemd: {status.message}", remedy=f"systemctl status {unit}")]
    details = {"unit": status.name, "load_state": status.load_state,
               "active_state": status.active_state, "sub_state": status.sub_state,
               "timeout_idle_usec": status.timeout_idle_usec,
               "mount_unit": status.mount_unit,
               "mount_active_state": status.mount_active_state}
    if not status.exists:
        return [Finding(Section.MOUNT, Severity.OK, "no-automount-unit",
                        f"systemd has no unit {status.name}: this trigger is not systemd's "
                        "(an autofs map?)", details=details)]
    sev = Severity.OK if status.active_state == "active" else Severity.WARNING
    msg = (f"systemd unit {status.name}: {status.active_state} ({status.sub_state}), "
           f"TimeoutIdleUSec={systemd.format_usec(status.timeout_idle_usec)}; "
           f"{status.mount_unit}: {status.mount_active_state}")
    remedy = None
    if sev is Severity.WARNING:
        remedy = (f"an automount that is not active ignores new mount requests (systemd issue "
                  f"22528): systemctl start {status.name}")
    return [Finding(Section.MOUNT, sev, "automount-unit", msg, remedy=remedy, details=details)]
