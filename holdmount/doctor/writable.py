"""The Writable section: free space, inodes, read-only and noexec from fstatfs(), and — only
with --check-writable — a real create through the hold engine's bounded trigger."""

from __future__ import annotations

import os
import stat

from holdmount import syscalls
from holdmount.doctor.options import Options
from holdmount.doctor.report import Finding, Section, Severity
from holdmount.doctor.walk import Trigger, Walk
from holdmount.errors import Failure

LOW_FREE_FRACTION = 0.05


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def statfs_findings(st: syscalls.StatFs, where: str, checked: bool) -> list[Finding]:
    out: list[Finding] = []
    details = {"bsize": st.bsize, "blocks": st.blocks, "bavail": st.bavail, "files": st.files,
               "ffree": st.ffree, "readonly": st.readonly, "noexec": st.noexec,
               "f_type": hex(st.f_type)}
    space = (f"{_human_bytes(st.bavail * st.bsize)} free of {_human_bytes(st.blocks * st.bsize)}, "
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


def _statfs_failed(call: str, where: str, e: OSError) -> Finding:
    return Finding(Section.WRITABLE, Severity.WARNING, "statfs-failed",
                   f"{call}({where}): {os.strerror(e.errno or 0)}")


def writable_findings(w: Walk, trig: Trigger | None, opts: Options) -> list[Finding]:
    target = w.resolved
    if w.st is not None and not stat.S_ISDIR(w.st.st_mode):
        target = os.path.dirname(target)
    if opts.check_writable:
        return _created(target, opts)
    if w.stopped_at is not None or (trig is not None and trig.mounted is None):
        return [Finding(Section.WRITABLE, Severity.OK, "not-checked",
                        "not checked: looking would trigger the automount (pass "
                        "--check-writable to trigger it and create a file for real)")]
    if w.error is not None:
        return []
    try:
        fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        return [_statfs_failed("open", target, e)]
    try:
        return statfs_findings(syscalls.fstatfs(fd), target, checked=False)
    except OSError as e:
        return [_statfs_failed("fstatfs", target, e)]
    finally:
        os.close(fd)


def _created(target: str, opts: Options) -> list[Finding]:
    """Hold `target` (triggering it, bounded) and create, write and remove a file in it."""
    from holdmount import checks, hold

    try:
        holds = hold.take([target], timeout=opts.trigger_timeout)
    except Failure as e:
        return [Finding(Section.WRITABLE, Severity.PROBLEM, "hold-failed", e.message,
                        remedy=e.hint)]
    h = holds[0]
    info = h.info
    try:
        out = [Finding(Section.WRITABLE, Severity.OK, "held",
                       f"opened {info.path}: {info.fstype} from {info.source} on "
                       f"{info.mount_point}" + (" (automounted)" if info.automount else ""),
                       details={"fstype": info.fstype, "source": info.source,
                                "mount_point": info.mount_point, "mnt_id": info.mnt_id,
                                "automount": info.automount})]
        try:
            checks.require_writable(h)
            out.append(Finding(Section.WRITABLE, Severity.OK, "writable",
                               f"writable: created, wrote and removed a file in {info.path}"))
        except Failure as e:
            out.append(Finding(Section.WRITABLE, Severity.PROBLEM, "not-writable", e.message,
                               remedy=e.hint))
        try:
            out += statfs_findings(syscalls.fstatfs(h.fd), info.path, checked=True)
        except OSError as e:
            out.append(_statfs_failed("fstatfs", info.path, e))
        return out
    finally:
        hold.release_all(holds)
