"""doctor's report model: a `Finding` per thing it found, a `Report` per path, and how they are
printed (text for people, JSON for scripts) and turned into an exit status."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


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
