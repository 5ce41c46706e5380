"""systemd-tmpfiles age rules: which ones would clean a path, and what exempts it.

The configuration is read the way systemd reads it, through `systemd-tmpfiles --cat-config`
(which applies /etc over /run over /usr/lib overrides), and every rule keeps its file and line.

Facts this module encodes (systemd 252, measured — see DESIGN.md):
- a rule with an age cleans entries *below* its directory, never the directory itself;
- a directory below the rule's directory that another process holds a BSD flock on is skipped
  with its subtree; a lock on the configured directory itself protects nothing;
- mount points are never entered;
- x excludes a path and its subtree, X only the path itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import subprocess
from collections.abc import Iterable, Sequence

# Types whose age field makes --clean remove old entries below the path.
AGE_TYPES = frozenset("dDevqQC")
EXCLUDE_TYPES = frozenset("xX")
DEFAULT_AGE_BY = "abcmABM"  # systemd 252's default when a rule names no age-by letters


@dataclasses.dataclass(frozen=True)
class Rule:
    type: str  # the type letter, without modifiers (! - = ~ ^ +)
    path: str
    age: str  # as written, "-" when none
    file: str
    line: int
    text: str

    @property
    def cleans(self) -> bool:
        return self.type in AGE_TYPES and self.age not in ("", "-")

    @property
    def age_by(self) -> str:
        """The age-by letters in effect (from an `abc:10d` prefix, else the default)."""
        age = self.age.lstrip("~")
        if ":" in age:
            return age.split(":", 1)[0]
        return DEFAULT_AGE_BY

    @property
    def age_span(self) -> str:
        age = self.age.lstrip("~")
        return age.split(":", 1)[1] if ":" in age else age

    def matches(self, path: str) -> bool:
        """The rule's path (a glob for some types) names exactly `path`."""
        return fnmatch.fnmatchcase(path, self.path) if _is_glob(self.path) else path == self.path

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "age_by": self.age_by, "age_span": self.age_span}


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def parse_cat_config(text: str) -> list[Rule]:
    """Parse `systemd-tmpfiles --cat-config` output; line numbers are those of each file."""
    rules: list[Rule] = []
    current = "<unknown>"
    lineno = 0
    previous_blank = True
    for raw in text.splitlines():
        stripped = raw.strip()
        if previous_blank and _is_header(stripped):
            current = stripped[2:]
            lineno = 0
            previous_blank = False
            continue
        lineno += 1
        previous_blank = not stripped
        if not stripped or stripped.startswith("#"):
            continue
        rule = parse_line(stripped, current, lineno)
        if rule is not None:
            rules.append(rule)
    return rules


def _is_header(line: str) -> bool:
    return line.startswith("# /") and line.endswith(".conf") and " " not in line[2:]


def parse_line(line: str, file: str, lineno: int) -> Rule | None:
    fields = line.split()
    if len(fields) < 2:
        return None
    letter = fields[0].rstrip("!-=~^+")[:1] or fields[0][:1]
    path = fields[1]
    age = fields[5] if len(fields) > 5 else "-"
    return Rule(type=letter, path=path, age=age, file=file, line=lineno, text=line)


def load(root: str | None = None, extra: Sequence[str] = ()) -> list[Rule]:
    """All rules systemd-tmpfiles would use (optionally with --root, or only the given files)."""
    cmd = ["systemd-tmpfiles", "--cat-config"]
    if root:
        cmd.append(f"--root={root}")
    cmd.extend(extra)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30,
                         env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
    return parse_cat_config(out.stdout)


def cleaning_rules(rules: Iterable[Rule], path: str) -> list[Rule]:
    """Rules that age-clean `path` itself or one of its ancestors' contents.

    A rule for directory D cleans entries strictly below D, so it threatens `path` when D is
    a proper ancestor of `path`; a rule naming `path` itself cleans what is inside it."""
    path = os.path.normpath(path)
    out = []
    for rule in rules:
        if not rule.cleans:
            continue
        for anc in _self_and_ancestors(path):
            if rule.matches(anc):
                out.append(rule)
                break
    return out


def named_by_rule(rules: Iterable[Rule], path: str) -> list[Rule]:
    """Cleaning rules whose own path is `path`: a flock on `path` protects nothing from them."""
    path = os.path.normpath(path)
    return [r for r in rules if r.cleans and r.matches(path)]


def excluding_rules(rules: Iterable[Rule], path: str) -> list[Rule]:
    """x lines covering `path` or an ancestor, X lines naming `path` itself."""
    path = os.path.normpath(path)
    out = []
    for rule in rules:
        covers = ((rule.type == "x" and any(rule.matches(a) for a in _self_and_ancestors(path)))
                  or (rule.type == "X" and rule.matches(path)))
        if covers:
            out.append(rule)
    return out


def _self_and_ancestors(path: str) -> list[str]:
    out = [path]
    while path not in ("/", ""):
        path = os.path.dirname(path)
        out.append(path)
    return out
