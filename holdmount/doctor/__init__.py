"""`holdmount doctor PATH...`: say what will happen to a path, and what to do about it.

Every answer is a `Finding` (frozen: section, severity, code, message, remedy, details). The
diagnosis never triggers an automount unless asked to check writability (`--check-writable`),
and that trigger goes through the hold engine's bounded helper. Nothing here raises for a bad
path: a missing, unreadable or dead path is a finding.

The parts: `report` (findings, reports, rendering, exit status), `walk` (resolving a path
without triggering; the trigger it lies behind), `proc` (/proc: busy processes, the automount
daemon, the reference namespace), `ask` (the holdmount daemon's holds, over the control socket),
and one module per group of sections: `mount` (Path, Mount), `holds` (Holds, Namespace),
`writable`, `aging` (Tmpfiles), `layers` (Overlay). A new check goes into its section's module
and is called from `diagnose` below.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from holdmount.doctor.aging import tmpfiles_findings
from holdmount.doctor.holds import holds_findings, namespace_findings
from holdmount.doctor.layers import overlay_findings
from holdmount.doctor.mount import mount_findings, path_findings
from holdmount.doctor.options import Options
from holdmount.doctor.report import (
    Finding,
    Report,
    Section,
    Severity,
    exit_code,
    render_json,
    render_text,
)
from holdmount.doctor.walk import find_trigger, walk
from holdmount.doctor.writable import writable_findings
from holdmount.mounts import MountTable

__all__ = ["Finding", "Options", "Report", "Section", "Severity", "diagnose", "exit_code",
           "main", "render_json", "render_text"]


def diagnose(path: str, opts: Options | None = None) -> Report:
    opts = opts or Options()
    table = MountTable.read()
    w = walk(path, table)
    trig = find_trigger(table, w.resolved)
    findings: list[Finding] = []
    findings += path_findings(w)
    findings += mount_findings(w, table, trig, opts)
    findings += holds_findings(w, trig, opts)
    findings += namespace_findings()
    findings += writable_findings(w, trig, opts)
    findings += tmpfiles_findings(w, table, opts)
    findings += overlay_findings(w, table)
    return Report(path=path, resolved=w.resolved, findings=tuple(findings))


def main(paths: Sequence[str], opts: Options, *, as_json: bool) -> int:
    # a SIGPIPE from `doctor | head` should end us quietly, like other CLI tools
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    reports = [diagnose(p, opts) for p in paths]
    print(render_json(reports) if as_json else render_text(reports),
          end="\n" if as_json else "")
    return exit_code(reports)
