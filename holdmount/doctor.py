"""`holdmount doctor PATH...`: say what will happen to a path, and what to do about it.

Every answer is a `Finding` (frozen: section, severity, code, message, remedy, details). The
diagnosis never triggers an automount unless asked to check writability (`--check-writable`),
and that trigger goes through the hold engine's bounded helper: the path is resolved component by
component with lstat(), stopping before any lookup that would happen inside an autofs trigger
with nothing mounted on it (a direct trigger's directory, an indirect map's root). Whether a
path is mounted is decided from the mount table alone.

Nothing here raises for a bad path: a missing, unreadable or dead path is a finding.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import importlib
import json
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from holdmount import syscalls
from holdmount.errors import Failure
from holdmount.mounts import Mount, MountTable

DEFAULT_SOCKET = "/run/holdmount/control"
MAX_SYMLINKS = 40
LOW_FREE_FRACTION = 0.05


class Severity(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warning": 1, "problem": 2}[self.value]


class Section(enum.StrEnum):
    PATH = "path"
    MOUNT = "mount"
    HOLDS = "holds"
    NAMESPACE = "namespace"
    WRITABLE = "writable"
    TMPFILES = "tmpfiles"
    OVERLAY = "overlay"


@dataclasses.dataclass(frozen=True)
class Finding:
    section: Section
    severity: Severity
    code: str
    message: str
    remedy: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"section": str(self.section), "severity": str(self.severity), "code": self.code,
                "message": self.message, "remedy": self.remedy, "details": dict(self.details)}


@dataclasses.dataclass(frozen=True)
class Report:
    path: str  # as given
    resolved: str  # symlinks resolved as far as doctor could look without triggering
    findings: tuple[Finding, ...]

    @property
    def severity(self) -> Severity:
        worst = Severity.OK
        for f in self.findings:
            if f.severity.rank > worst.rank:
                worst = f.severity
        return worst

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "resolved": self.resolved, "severity": str(self.severity),
                "findings": [f.as_dict() for f in self.findings]}


def exit_code(reports: Iterable[Report]) -> int:
    """0: no problems and no warnings, 1: warnings, 2: problems."""
    return max((r.severity.rank for r in reports), default=0)


# --- the daemon hook -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DaemonView:
    running: bool
    holds: bool | None  # None: running but could not be asked
    detail: str


DaemonProbe = Callable[[str, str], DaemonView]


def control_socket() -> str:
    return os.environ.get("HOLDMOUNT_SOCKET") or DEFAULT_SOCKET


def probe_daemon(socket_path: str, path: str) -> DaemonView:
    """Does the holdmount daemon hold `path`? Asks it over its control socket (SOCK_SEQPACKET,
    JSON; holdmount.control) with `status` and looks for a hold on `path` or an ancestor in the
    answer. A `holdmount.control.holds_for(socket_path, path) -> bool | None`, when it exists,
    takes precedence: the wire-up point for the daemon's author. (A daemon that holds a mount
    keeps an fd on it, so the busy scan in the Holds section also lists it.)"""
    if not os.path.exists(socket_path):
        return DaemonView(False, False, f"the holdmount daemon is not running (no control "
                                        f"socket {socket_path})")
    try:
        control: Any = importlib.import_module("holdmount.control")
    except ImportError:
        control = None
    holds_for = getattr(control, "holds_for", None)
    if holds_for is not None:
        try:
            answer = holds_for(socket_path, path)
        except (OSError, Failure) as e:
            return DaemonView(False, False, f"connect({socket_path}): {e}")
        return DaemonView(True, None if answer is None else bool(answer),
                          "the holdmount daemon " + ("holds it" if answer else
                                                     "does not hold it" if answer is not None
                                                     else "runs (hold unknown)"))
    request = getattr(control, "request", None)
    if request is not None:
        try:
            reply = request(socket_path, "status")
        except Failure as e:
            return DaemonView(False, False, f"{e.message} (the daemon is not answering)")
        except (OSError, ValueError) as e:
            return DaemonView(False, False, f"status({socket_path}): {e}")
        held = status_holds(reply.get("status"), path)
        what = {True: "holds it", False: "does not hold it",
                None: "runs (its status names no holds doctor understands)"}[held]
        return DaemonView(True, held, f"the holdmount daemon ({socket_path}) {what}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(2)
    try:
        sock.connect(socket_path)
    except OSError as e:
        if e.errno != errno.EPROTOTYPE:
            return DaemonView(False, False, f"connect({socket_path}): "
                              f"{os.strerror(e.errno or 0)} (stale socket: the daemon is not "
                              "running)")
    finally:
        sock.close()
    return DaemonView(True, None, f"something listens on {socket_path} (this doctor cannot ask "
                                  "it which paths it holds)")


_HOLD_KEYS = ("path", "resolved", "mount_point")


def status_holds(status: Any, path: str) -> bool | None:
    """Whether a daemon status (any JSON shape) lists a hold on `path` or an ancestor: dicts
    inside a list under a key containing "hold", with a path/resolved/mount_point string."""
    found_list = False
    held = False

    def visit(node: Any, in_holds: bool) -> None:
        nonlocal found_list, held
        if isinstance(node, dict):
            if in_holds:
                for key in _HOLD_KEYS:
                    value = node.get(key)
                    if isinstance(value, str) and value.startswith("/") and \
                            _under(path, os.path.normpath(value)):
                        held = True
            for key, value in node.items():
                holds_key = "hold" in str(key).lower()
                if holds_key and isinstance(value, list):
                    found_list = True
                visit(value, in_holds or holds_key)
        elif isinstance(node, list):
            for item in node:
                visit(item, in_holds)

    visit(status, False)
    return True if held else (False if found_list else None)


# --- options -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
    check_writable: bool = False
    trigger_timeout: float = 10.0
    tmpfiles_root: str | None = None
    systemd_address: str | None = None
    daemon_probe: DaemonProbe = probe_daemon
    socket_path: str | None = None


# --- walking a path without triggering ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Walk:
    given: str
    resolved: str  # physical path as far as known; the unwalked rest appended lexically
    st: os.stat_result | None  # of `resolved` (following the last symlink) when reached
    stopped_at: str | None  # an autofs trigger we did not look into (the lookup would trigger)
    error: OSError | None  # lstat/readlink failure
    failed_at: str | None
    seen: Mapping[str, os.stat_result]  # every directory lstat'ed on the way


def _would_trigger(table: MountTable, directory: str, child: str) -> bool:
    """Looking up `child` in `directory` would ask the automounter: `directory` shows an autofs
    filesystem (a direct trigger with nothing on it, an indirect map's root) and nothing real is
    mounted on `child` yet."""
    visible = table.containing(directory)
    return visible is not None and visible.is_autofs and not table.is_real_mounted(child)


def walk(path: str, table: MountTable) -> Walk:
    """Resolve `path` like the kernel would, with lstat() and readlink() only, and stop before
    the first lookup that would trigger an automount."""
    given = path
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    parts = [p for p in full.split("/") if p]
    cur = "/"
    seen: dict[str, os.stat_result] = {}
    links = 0
    st: os.stat_result | None = None
    try:
        st = os.lstat("/")
        seen["/"] = st
    except OSError:
        pass
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            st = seen.get(cur)
            continue
        nxt = os.path.join(cur, name)
        if _would_trigger(table, cur, nxt):
            return Walk(given, os.path.join(nxt, *parts), None, cur, None, None, seen)
        try:
            st = os.lstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(nxt)
                parts = [p for p in target.split("/") if p] + parts
                if target.startswith("/"):
                    cur = "/"
                continue
        except OSError as e:
            return Walk(given, os.path.join(nxt, *parts), None, None, e, nxt, seen)
        seen[nxt] = st
        cur = nxt
    return Walk(given, cur, st, None, None, None, seen)


# --- small helpers ------------------------------------------------------------------------------

def _under(path: str, top: str) -> bool:
    top = top.rstrip("/") or "/"
    return path == top or top == "/" or path.startswith(top + "/")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _timeout_text(seconds: int | None) -> str:
    if seconds is None:
        return "unknown idle timeout"
    if seconds == 0:
        return "no idle timeout (never expires)"
    return f"idle timeout {seconds}s"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[2])
    except (IndexError, ValueError):
        return None


def _pids() -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


# --- the trigger and its daemon -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trigger:
    mount: Mount  # the autofs mount
    kind: str  # direct, indirect, offset, or "autofs"
    point: str | None  # where the real filesystem gets mounted (None: an indirect map root)
    mounted: Mount | None  # the real filesystem on `point`, when mounted


def find_trigger(table: MountTable, path: str) -> Trigger | None:
    best: Mount | None = None
    for m in table.mounts:
        if m.is_autofs and _under(path, m.mount_point) and \
                (best is None or len(m.mount_point) > len(best.mount_point)):
            best = m
    if best is None:
        return None
    kind = best.autofs_kind or "autofs"
    point: str | None = best.mount_point
    if kind == "indirect":
        rest = path[len(best.mount_point):].lstrip("/")
        point = os.path.join(best.mount_point, rest.split("/")[0]) if rest else None
    mounted = None
    if point is not None:
        mounted = next((m for m in reversed(table.at(point)) if not m.is_autofs), None)
    return Trigger(best, kind, point, mounted)


def automount_daemon_state(trigger: Mount) -> tuple[str, int | None]:
    """alive / stopped / dead / unknown, from the trigger's pgrp= (the daemon's process group,
    in the daemon's pid namespace — "unknown" when it is not ours)."""
    value = trigger.options.get("pgrp", "")
    if not value.isdigit():
        return "unknown", None
    pgrp = int(value)
    try:
        os.killpg(pgrp, 0)
    except ProcessLookupError:
        return "dead", pgrp
    except PermissionError:
        return "alive", pgrp
    states = [s for s in (_proc_stat(p) for p in _pids()) if s is not None and s[1] == pgrp]
    if states and all(letter in "Tt" for letter, _ in states):
        return "stopped", pgrp
    return "alive", pgrp


# --- sections -------------------------------------------------------------------------------------

def _path_findings(w: Walk) -> list[Finding]:
    if w.error is None:
        if w.stopped_at is not None:
            return [Finding(Section.PATH, Severity.OK, "path-behind-trigger",
                            f"{w.resolved}: not looked at, it lies behind the automount trigger "
                            f"{w.stopped_at} and looking would mount it",
                            details={"trigger": w.stopped_at})]
        kind = "directory" if w.st is not None and stat.S_ISDIR(w.st.st_mode) else "file"
        return [Finding(Section.PATH, Severity.OK, "path-exists",
                        f"{w.resolved}: exists ({kind})",
                        details={"type": kind})]
    e = w.error
    num = e.errno or 0
    where = w.failed_at or w.resolved
    if num == errno.ENOENT:
        return [Finding(Section.PATH, Severity.PROBLEM, "path-missing",
                        f"lstat({where}): No such file or directory",
                        remedy="check the path (a dangling symlink or an automount map without "
                        "that key also give this); the sections below describe where it would be",
                        details={"failed_at": where, "errno": "ENOENT"})]
    if num in (errno.EACCES, errno.EPERM):
        return [Finding(Section.PATH, Severity.PROBLEM, "path-unreadable",
                        f"lstat({where}): {os.strerror(num)}",
                        remedy="run doctor as a user who may look there (or as root)",
                        details={"failed_at": where, "errno": errno.errorcode.get(num, str(num))})]
    if num == errno.EHOSTDOWN:
        return [Finding(Section.PATH, Severity.PROBLEM, "path-catatonic",
                        f"lstat({where}): {os.strerror(num)} (a catatonic automount)",
                        remedy="restart the automount daemon (autofs) or the .automount unit",
                        details={"failed_at": where, "errno": "EHOSTDOWN"})]
    return [Finding(Section.PATH, Severity.PROBLEM, "path-error",
                    f"lstat({where}): {os.strerror(num) if num else e}",
                    details={"failed_at": where, "errno": errno.errorcode.get(num, str(num))})]


def _mount_findings(w: Walk, table: MountTable, trig: Trigger | None,
                    opts: Options) -> list[Finding]:
    out: list[Finding] = []
    if trig is None:
        m = table.containing(w.resolved)
        if m is not None:
            out.append(Finding(Section.MOUNT, Severity.OK, "not-automount",
                               f"not an automount: {m.fstype} from {m.source} on "
                               f"{m.mount_point}",
                               details={"fstype": m.fstype, "source": m.source,
                                        "mount_point": m.mount_point, "mnt_id": m.mnt_id}))
        return out
    a = trig.mount
    timeout = a.autofs_timeout
    details: dict[str, Any] = {"kind": trig.kind, "trigger": a.mount_point, "map": a.source,
                               "timeout": timeout, "point": trig.point}
    out.append(Finding(Section.MOUNT, Severity.OK, "autofs-trigger",
                       f"{trig.kind} automount trigger on {a.mount_point} (map {a.source}), "
                       f"{_timeout_text(timeout)}", details=details))
    if trig.point is None:
        out.append(Finding(Section.MOUNT, Severity.WARNING, "indirect-root",
                           f"{a.mount_point} is the root of an indirect automount map: it is "
                           "never mounted itself, only its entries are",
                           remedy=f"name an entry below it ({a.mount_point}/KEY)"))
    elif trig.mounted is not None:
        m = table.containing(w.resolved) or trig.mounted
        out.append(Finding(Section.MOUNT, Severity.OK, "mounted",
                           f"mounted now: {m.fstype} from {m.source} on {m.mount_point}",
                           details={"fstype": m.fstype, "source": m.source,
                                    "mount_point": m.mount_point, "mnt_id": m.mnt_id}))
    else:
        out.append(Finding(Section.MOUNT, Severity.OK, "not-mounted",
                           f"not mounted now: {trig.point} shows only the autofs trigger "
                           "(doctor did not trigger it; the first open or lookup inside will)",
                           details={"point": trig.point}))
    state, pgrp = automount_daemon_state(a)
    if state == "dead":
        out.append(Finding(Section.MOUNT, Severity.PROBLEM, "automount-catatonic",
                           f"the automount daemon of {a.mount_point} is gone (process group "
                           f"{pgrp} is empty): the trigger is catatonic, accesses fail "
                           "(EHOSTDOWN/ENOENT) and nothing will mount or expire",
                           remedy="restart autofs (or the .automount unit), then check its log",
                           details={"pgrp": pgrp}))
    elif state == "stopped":
        sev = Severity.WARNING if trig.mounted is not None else Severity.PROBLEM
        out.append(Finding(Section.MOUNT, sev, "automount-stopped",
                           f"the automount daemon of {a.mount_point} is stopped (process group "
                           f"{pgrp}): a trigger would hang until it continues",
                           remedy=f"kill -CONT -{pgrp}, or restart autofs",
                           details={"pgrp": pgrp}))
    out.extend(_systemd_findings(a.mount_point, timeout, opts))
    return out


def _systemd_findings(where: str, timeout: int | None, opts: Options) -> list[Finding]:
    from holdmount import systemd

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


@dataclasses.dataclass(frozen=True)
class User:
    pid: int
    comm: str
    how: str  # "cwd", "root", "fd N"


def users_of(mount: Mount, *, skip: Iterable[int] = ()) -> tuple[list[User], int]:
    """Processes with their cwd, root or an open fd on `mount` (by mount id for fds; by
    path and device for cwd/root). Returns (users, processes we could not look into)."""
    skip_set = set(skip) | {os.getpid()}
    mp = mount.mount_point
    try:
        dev = os.stat(mp).st_dev if mount.dev else None
    except OSError:
        dev = None
    users: list[User] = []
    hidden = 0
    for pid in _pids():
        if pid in skip_set:
            continue
        comm = None
        denied = False
        for how in ("cwd", "root"):
            try:
                link = os.readlink(f"/proc/{pid}/{how}")
                if _under(link, mp) and (how != "root" or link != "/") and \
                        (dev is None or os.stat(f"/proc/{pid}/{how}").st_dev == dev):
                    comm = comm or _comm(pid)
                    users.append(User(pid, comm, how))
            except PermissionError:
                denied = True
            except OSError:
                pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            denied = True
            fds = []
        except OSError:
            fds = []
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not _under(link, mp) or \
                        syscalls.fd_mnt_id(int(fd), pid) != mount.mnt_id:
                    continue
            except (OSError, ValueError):
                continue
            comm = comm or _comm(pid)
            users.append(User(pid, comm, f"fd {fd}"))
        hidden += denied
    return users, hidden


def _holds_findings(w: Walk, trig: Trigger | None, opts: Options) -> list[Finding]:
    out: list[Finding] = []
    view = opts.daemon_probe(opts.socket_path or control_socket(), w.resolved)
    out.append(Finding(Section.HOLDS, Severity.OK, "daemon", view.detail,
                       details={"running": view.running, "holds": view.holds}))
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
        shown = ", ".join(f"{u.pid} ({u.comm}, {u.how})" for u in users[:8])
        more = f" and {len(users) - 8} more" if len(users) > 8 else ""
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


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reference_namespace() -> tuple[int, str, int] | None:
    """(pid, comm, mnt ns) to compare ours with: PID 1's, or — where /proc/1/ns/mnt cannot be
    read (some sandboxes deny it even to root) — the oldest ancestor of ours whose namespace can
    be read."""
    try:
        return 1, _comm(1), syscalls.mount_ns_id(1)
    except OSError:
        pass
    best: tuple[int, str, int] | None = None
    pid: int | None = os.getppid()
    seen = 0
    while pid and pid > 1 and seen < 64:
        try:
            best = (pid, _comm(pid), syscalls.mount_ns_id(pid))
        except OSError:
            pass
        pid = _ppid(pid)
        seen += 1
    return best


_NS_CONSEQUENCE = (
    "a hold taken from here does not keep a host automount alive (autofs is not "
    "namespace-aware: a private copy does not hold, a slave copy makes every expiry fail with "
    "EBUSY), what doctor sees here may differ from the host, and triggering a host automount "
    "from a namespace made before it was mounted can hang")
_NS_REMEDY = (
    "run holdmount (daemon and run) in the host mount namespace: no PrivateTmp=/ProtectSystem=/"
    "ProtectHome=/ReadOnlyPaths= in its unit (or ExecStart=+); rerun doctor there "
    "(nsenter -t 1 -m holdmount doctor PATH)")


def _namespace_findings() -> list[Finding]:
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


def _statfs_findings(st: syscalls.StatFs, where: str, checked: bool) -> list[Finding]:
    out: list[Finding] = []
    details = {"bsize": st.bsize, "blocks": st.blocks, "bavail": st.bavail, "files": st.files,
               "ffree": st.ffree, "readonly": st.readonly, "noexec": st.noexec,
               "f_type": hex(st.f_type)}
    free = st.bavail * st.bsize
    total = st.blocks * st.bsize
    space = (f"{_human_bytes(free)} free of {_human_bytes(total)}, "
             + (f"{st.ffree} of {st.files} inodes free" if st.files else "inodes unlimited"))
    if st.readonly:
        out.append(Finding(Section.WRITABLE, Severity.PROBLEM, "read-only",
                           f"fstatfs({where}): mounted read-only", remedy="remount it "
                           "read-write or pick another directory", details=details))
    if st.noexec:
        out.append(Finding(Section.WRITABLE, Severity.WARNING, "noexec",
                           f"fstatfs({where}): mounted noexec: programs there cannot be run "
                           "(build trees and test suites often need that)",
                           remedy="remount without noexec (automount map / .mount Options=) "
                           "or use another directory", details=details))
    if (st.blocks and st.bavail == 0) or (st.files and st.ffree == 0):
        out.append(Finding(Section.WRITABLE, Severity.PROBLEM, "full",
                           f"fstatfs({where}): no space left ({space})",
                           remedy="free space or inodes, or enlarge the filesystem",
                           details=details))
    elif (st.blocks and st.bavail < st.blocks * LOW_FREE_FRACTION) or \
            (st.files and st.ffree < st.files * LOW_FREE_FRACTION):
        out.append(Finding(Section.WRITABLE, Severity.WARNING, "low-space",
                           f"fstatfs({where}): almost full ({space})",
                           remedy="free space or inodes", details=details))
    else:
        out.append(Finding(Section.WRITABLE, Severity.OK, "space", f"{space}",
                           details=details))
    if not checked:
        out.append(Finding(Section.WRITABLE, Severity.OK, "create-not-checked",
                           "writability not checked by a real create (--check-writable does; "
                           "access() and the mode bits are not evidence)"))
    return out


def _writable_findings(w: Walk, trig: Trigger | None, opts: Options) -> list[Finding]:
    target = w.resolved
    if w.st is not None and not stat.S_ISDIR(w.st.st_mode):
        target = os.path.dirname(target)
    untriggered = w.stopped_at is not None or (
        trig is not None and trig.mounted is None)
    if not opts.check_writable:
        if untriggered:
            return [Finding(Section.WRITABLE, Severity.OK, "not-checked",
                            "not checked: looking would trigger the automount (pass "
                            "--check-writable to trigger it and create a file for real)")]
        if w.error is not None:
            return []
        try:
            fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            return [Finding(Section.WRITABLE, Severity.WARNING, "statfs-failed",
                            f"open({target}): {os.strerror(e.errno or 0)}")]
        try:
            return _statfs_findings(syscalls.fstatfs(fd), target, checked=False)
        except OSError as e:
            return [Finding(Section.WRITABLE, Severity.WARNING, "statfs-failed",
                            f"fstatfs({target}): {os.strerror(e.errno or 0)}")]
        finally:
            os.close(fd)
    from holdmount import checks, hold

    try:
        holds = hold.take([target], timeout=opts.trigger_timeout)
    except Failure as e:
        return [Finding(Section.WRITABLE, Severity.PROBLEM, "hold-failed", e.message,
                        remedy=e.hint)]
    h = holds[0]
    try:
        out = [Finding(Section.WRITABLE, Severity.OK, "held",
                       f"opened {h.info.path}: {h.info.fstype} from {h.info.source} on "
                       f"{h.info.mount_point}" + (" (automounted)" if h.info.automount else ""),
                       details={"fstype": h.info.fstype, "source": h.info.source,
                                "mount_point": h.info.mount_point, "mnt_id": h.info.mnt_id,
                                "automount": h.info.automount})]
        try:
            checks.require_writable(h)
            out.append(Finding(Section.WRITABLE, Severity.OK, "writable",
                               f"writable: created, wrote and removed a file in {h.info.path}"))
        except Failure as e:
            out.append(Finding(Section.WRITABLE, Severity.PROBLEM, "not-writable", e.message,
                               remedy=e.hint))
        try:
            out.extend(_statfs_findings(syscalls.fstatfs(h.fd), h.info.path, checked=True))
        except OSError as e:
            out.append(Finding(Section.WRITABLE, Severity.WARNING, "statfs-failed",
                               f"fstatfs({h.info.path}): {os.strerror(e.errno or 0)}"))
        return out
    finally:
        hold.release_all(holds)


def _tmpfiles_findings(w: Walk, table: MountTable, opts: Options) -> list[Finding]:
    from holdmount import tmpfiles

    try:
        rules = tmpfiles.load(root=opts.tmpfiles_root)
    except FileNotFoundError:
        return [Finding(Section.TMPFILES, Severity.OK, "no-tmpfiles",
                        "systemd-tmpfiles is not installed: nothing ages files by tmpfiles "
                        "rules")]
    except Exception as e:  # CalledProcessError, TimeoutExpired, OSError
        return [Finding(Section.TMPFILES, Severity.WARNING, "tmpfiles-unreadable",
                        f"systemd-tmpfiles --cat-config: {e}")]
    covers = tmpfiles.coverage(rules, w.resolved, root=opts.tmpfiles_root,
                               mount_points=[m.mount_point for m in table.mounts],
                               flocks=tmpfiles.read_flocks(), known=_known_dirs(w))
    if not covers:
        return [Finding(Section.TMPFILES, Severity.OK, "not-aged",
                        f"no systemd-tmpfiles rule ages {w.resolved}")]
    out: list[Finding] = []
    for c in covers:
        r = c.rule
        files, dirs = r.effective_age_by
        details = {"rule": r.text, "file": r.file, "line": r.line, "age": r.age_span,
                   "age_by_files": files, "age_by_dirs": dirs, "directory": c.directory,
                   "exempt": c.exempt_kind, "protect_dir": c.protect_dir,
                   "shallow_kept": r.shallow_kept}
        where = f"{r.file}:{r.line} `{r.text}` (age {r.age_span}, by {files}{dirs})"
        if c.names_path:
            out.append(Finding(Section.TMPFILES, Severity.WARNING, "tmpfiles-ages-contents",
                               f"{where} ages the entries inside {w.resolved} (the directory "
                               "itself stays); a flock on it protects nothing from this rule",
                               remedy=f"hold a subdirectory: holdmount run --protect --hold "
                               f"{w.resolved}/JOBDIR -- COMMAND", details=details))
        elif c.exempt:
            out.append(Finding(Section.TMPFILES, Severity.OK, f"tmpfiles-exempt-{c.exempt_kind}",
                               f"{where} covers it, but it is exempt: {c.exempt}",
                               details=details))
        else:
            xline = f"x {_unroot(c.protect_dir or w.resolved, opts.tmpfiles_root)}"
            out.append(Finding(Section.TMPFILES, Severity.WARNING, "tmpfiles-ages",
                               f"{where} ages {w.resolved}: systemd-tmpfiles --clean removes "
                               f"entries below {c.directory} untouched for {r.age_span}",
                               remedy=f"holdmount run --protect --hold {c.protect_dir} -- "
                               f"COMMAND while a job uses it, or a line `{xline}` in "
                               f"/etc/tmpfiles.d/<name>.conf to exclude it for good",
                               details=details))
    return out


def _known_dirs(w: Walk) -> dict[str, os.stat_result]:
    return dict(w.seen)


def _unroot(path: str, root: str | None) -> str:
    if not root or root == "/":
        return path
    root = os.path.normpath(root)
    return path[len(root):] or "/" if path.startswith(root + "/") or path == root else path


def _overlay_hits(w: Walk, table: MountTable) -> list[tuple[Mount, str, str]]:
    """(overlay mount, role, layer dir) for each layer `w.resolved` lies in, judged lexically
    (overlay.lexical_layer_hits: no stat, so it cannot trigger anything)."""
    from holdmount import overlay

    return overlay.lexical_layer_hits(w.resolved, table)


def _overlay_findings(w: Walk, table: MountTable) -> list[Finding]:
    out: list[Finding] = []
    for m, role, layer in _overlay_hits(w, table):
        out.append(Finding(
            Section.OVERLAY, Severity.WARNING, "overlay-layer",
            f"{w.resolved} is inside the {role} {layer} of the overlay mounted on "
            f"{m.mount_point}: changing a layer while the overlay is mounted is undefined "
            "behaviour (kernel overlayfs documentation)",
            remedy=f"make changes through {m.mount_point}, or unmount the overlay first; reading "
            "the upperdir to list changes (holdmount overlay changes) is fine",
            details={"role": role, "layer": layer, "overlay": m.mount_point,
                     "mnt_id": m.mnt_id}))
    if not out:
        out.append(Finding(Section.OVERLAY, Severity.OK, "no-overlay-layer",
                           "not inside a layer of a mounted overlay"))
    return out


# --- putting it together --------------------------------------------------------------------------

def diagnose(path: str, opts: Options | None = None) -> Report:
    opts = opts or Options()
    table = MountTable.read()
    w = walk(path, table)
    trig = find_trigger(table, w.resolved)
    findings: list[Finding] = []
    findings += _path_findings(w)
    findings += _mount_findings(w, table, trig, opts)
    findings += _holds_findings(w, trig, opts)
    findings += _namespace_findings()
    findings += _writable_findings(w, trig, opts)
    findings += _tmpfiles_findings(w, table, opts)
    findings += _overlay_findings(w, table)
    return Report(path=path, resolved=w.resolved, findings=tuple(findings))


_MARK = {Severity.OK: "ok", Severity.WARNING: "WARNING", Severity.PROBLEM: "PROBLEM"}


def render_text(reports: Sequence[Report]) -> str:
    lines: list[str] = []
    for r in reports:
        head = r.path if r.path == r.resolved else f"{r.path} (-> {r.resolved})"
        lines.append(f"{head}: {r.severity}")
        section: Section | None = None
        for f in r.findings:
            if f.section is not section:
                section = f.section
                lines.append(f"  {section.value.capitalize()}")
            lines.append(f"    {_MARK[f.severity]:<8} {f.message}  [{f.code}]")
            if f.remedy:
                lines.append(f"    {'':<8} -> {f.remedy}")
        lines.append("")
    return "\n".join(lines)


def render_json(reports: Sequence[Report]) -> str:
    return json.dumps({"exit": exit_code(reports), "paths": [r.as_dict() for r in reports]},
                      indent=2, default=str)


def main(paths: Sequence[str], opts: Options, *, as_json: bool) -> int:
    # a SIGPIPE from `doctor | head` should end us quietly, like other CLI tools
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    reports = [diagnose(p, opts) for p in paths]
    print(render_json(reports) if as_json else render_text(reports), end="\n" if as_json
          else "")
    return exit_code(reports)
