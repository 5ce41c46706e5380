"""The Tmpfiles section: which systemd-tmpfiles rules age the path, whether it is exempt, and
the lock or `x` line that protects it."""

from __future__ import annotations

import os

from holdmount import tmpfiles
from holdmount.doctor.options import Options
from holdmount.doctor.report import Finding, Section, Severity
from holdmount.doctor.walk import Walk
from holdmount.mounts import MountTable


def tmpfiles_findings(w: Walk, table: MountTable, opts: Options) -> list[Finding]:
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
                               flocks=tmpfiles.read_flocks(), known=dict(w.seen))
    if not covers:
        return [Finding(Section.TMPFILES, Severity.OK, "not-aged",
                        f"no systemd-tmpfiles rule ages {w.resolved}")]
    return [_cover_finding(c, w, opts) for c in covers]


def _cover_finding(c: tmpfiles.Coverage, w: Walk, opts: Options) -> Finding:
    r = c.rule
    files, dirs = r.effective_age_by
    details = {"rule": r.text, "file": r.file, "line": r.line, "age": r.age_span,
               "age_by_files": files, "age_by_dirs": dirs, "directory": c.directory,
               "exempt": c.exempt_kind, "protect_dir": c.protect_dir,
               "shallow_kept": r.shallow_kept}
    where = f"{r.file}:{r.line} `{r.text}` (age {r.age_span}, by {files}{dirs})"
    if c.names_path:
        return Finding(Section.TMPFILES, Severity.WARNING, "tmpfiles-ages-contents",
                       f"{where} ages the entries inside {w.resolved} (the directory itself "
                       "stays); a flock on it protects nothing from this rule",
                       remedy=f"hold a subdirectory: holdmount run --protect --hold "
                       f"{w.resolved}/JOBDIR -- COMMAND", details=details)
    if c.exempt:
        return Finding(Section.TMPFILES, Severity.OK, f"tmpfiles-exempt-{c.exempt_kind}",
                       f"{where} covers it, but it is exempt: {c.exempt}", details=details)
    xline = f"x {_unroot(c.protect_dir or w.resolved, opts.tmpfiles_root)}"
    return Finding(Section.TMPFILES, Severity.WARNING, "tmpfiles-ages",
                   f"{where} ages {w.resolved}: systemd-tmpfiles --clean removes entries below "
                   f"{c.directory} untouched for {r.age_span}",
                   remedy=f"holdmount run --protect --hold {c.protect_dir} -- COMMAND while a "
                   f"job uses it, or a line `{xline}` in /etc/tmpfiles.d/<name>.conf to exclude "
                   "it for good", details=details)


def _unroot(path: str, root: str | None) -> str:
    """`path` as the tmpfiles.d line under --tmpfiles-root must name it."""
    if not root or root == "/":
        return path
    root = os.path.normpath(root)
    return path[len(root):] or "/" if path.startswith(root + "/") or path == root else path
