"""The Holds and Namespace sections: who keeps the path mounted (the holdmount daemon, busy
processes) and whether a hold taken from this mount namespace would keep the host's automount
alive at all."""

from __future__ import annotations

import dataclasses
from typing import Any

from holdmount import paths, syscalls
from holdmount.doctor.options import Options
from holdmount.doctor.proc import User, reference_namespace, users_of
from holdmount.doctor.report import Finding, Section, Severity
from holdmount.doctor.walk import Trigger, Walk

SHOWN_USERS = 8


def holds_findings(w: Walk, trig: Trigger | None, opts: Options) -> list[Finding]:
    view = opts.daemon_probe(paths.control_socket(opts.socket_path), w.resolved)
    out = [Finding(Section.HOLDS, Severity.OK, "daemon", view.detail,
                   details={"running": view.running, "holds": view.holds})]
    if trig is None:
        out.append(Finding(Section.HOLDS, Severity.OK, "no-expiry",
                           "not on an automount: no idle timeout can unmount it"))
        return out
    timeout = trig.mount.autofs_timeout
    users: list[User] = []
    hidden = 0
    if trig.mounted is not None:
        users, hidden = users_of(trig.mounted)
    details: dict[str, Any] = {
        "users": [dataclasses.asdict(u) for u in users], "uninspected_processes": hidden}
    if users:
        shown = ", ".join(f"{u.pid} ({u.comm}, {u.how})" for u in users[:SHOWN_USERS])
        more = f" and {len(users) - SHOWN_USERS} more" if len(users) > SHOWN_USERS else ""
        out.append(Finding(Section.HOLDS, Severity.OK, "busy",
                           f"kept mounted (busy) by {shown}{more}", details=details))
    elif view.holds:
        out.append(Finding(Section.HOLDS, Severity.OK, "held-by-daemon",
                           "held by the holdmount daemon", details=details))
    elif timeout == 0:
        out.append(Finding(Section.HOLDS, Severity.OK, "no-expiry",
                           "no process holds it, but its trigger has no idle timeout",
                           details=details))
    else:
        when = "once mounted, it" if trig.mounted is None else "it"
        seen = "" if not hidden else f" (could not look into {hidden} processes: not root)"
        out.append(Finding(Section.HOLDS, Severity.WARNING, "not-held",
                           f"no process holds it{seen}: {when} expires "
                           f"{timeout if timeout is not None else '?'}s after its last use",
                           remedy=f"holdmount run --hold {w.given} -- COMMAND (for a job), or "
                           "list it in the holdmount daemon's configuration",
                           details=details))
    return out


_NS_CONSEQUENCE = (
    "a hold taken from here does not keep a host automount alive (autofs is not "
    "namespace-aware: a private copy does not hold, a slave copy makes every expiry fail with "
    "EBUSY), what doctor sees here may differ from the host, and triggering a host automount "
    "from a namespace made before it was mounted can hang")
_NS_REMEDY = (
    "run holdmount (daemon and run) in the host mount namespace: no PrivateTmp=/ProtectSystem=/"
    "ProtectHome=/ReadOnlyPaths= in its unit (or ExecStart=+); rerun doctor there "
    "(nsenter -t 1 -m holdmount doctor PATH)")


def namespace_findings() -> list[Finding]:
    try:
        own = syscalls.mount_ns_id("self")
    except OSError:
        own = None
    ref = reference_namespace()
    if own is None or ref is None:
        return [Finding(Section.NAMESPACE, Severity.WARNING, "namespace-unknown",
                        "cannot compare this mount namespace with PID 1's (/proc/1/ns/mnt and "
                        "the ancestors' are not readable)", remedy="run doctor as root",
                        details={"mnt_ns": own})]
    pid, comm, other = ref
    details = {"mnt_ns": own, "reference_pid": pid, "reference_comm": comm,
               "reference_mnt_ns": other}
    whose = "PID 1's" if pid == 1 else (f"that of PID {pid} ({comm}), the oldest ancestor "
                                        "whose namespace is readable (PID 1's is not)")
    if own == other:
        return [Finding(Section.NAMESPACE, Severity.OK, "host-namespace",
                        f"this mount namespace (mnt:[{own}]) is {whose}", details=details)]
    return [Finding(Section.NAMESPACE, Severity.WARNING, "foreign-namespace",
                    f"this mount namespace (mnt:[{own}]) is not {whose} (mnt:[{other}]): "
                    f"{_NS_CONSEQUENCE}", remedy=_NS_REMEDY, details=details)]
