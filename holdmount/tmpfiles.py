"""systemd-tmpfiles age rules: which ones would clean a path, and what exempts it.

The configuration is read the way systemd reads it, through `systemd-tmpfiles --cat-config`
(which applies /etc over /run over /usr/lib overrides), and every rule keeps its file and line.

Facts this module encodes (systemd 252, measured; docs/doctor.md lists them with the rest):
- a rule with an age cleans entries *below* its directory, never the directory itself;
- a directory below the rule's directory that another process holds a BSD flock on is skipped
  with its subtree; a lock on the configured directory itself protects nothing;
- mount points are never entered;
- x excludes a path and its subtree, X only the path itself.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence

from holdmount.record import Record, asdict

# Types whose age field makes --clean remove old entries below the path.
AGE_TYPES = frozenset("dDevqQC")
EXCLUDE_TYPES = frozenset("xX")
DEFAULT_AGE_BY = "abcmABM"  # systemd 252's default when a rule names no age-by letters
DEFAULT_AGE_BY_FILE = "abcm"
DEFAULT_AGE_BY_DIR = "ABM"


class Rule(Record):
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

    @property
    def effective_age_by(self) -> tuple[str, str]:
        """(letters for files, letters for directories) as systemd 252 applies them: lower case
        letters set the file times, upper case the directory times (A, B, M; ctime is never
        used for directories); a side given no letters keeps its default (abcm / ABM)."""
        letters = self.age_by
        files = "".join(c for c in letters if c in "abcm")
        dirs = "".join(c for c in letters if c in "ABM")
        return (files or DEFAULT_AGE_BY_FILE, dirs or DEFAULT_AGE_BY_DIR)

    @property
    def shallow_kept(self) -> bool:
        """`~` before the age: entries directly inside the directory are kept, deeper ones
        are aged."""
        return self.age.startswith("~")

    def matches(self, path: str) -> bool:
        """The rule's path (a glob for some types) names exactly `path`."""
        if not _is_glob(self.path):
            return path == self.path
        # glob(3) as systemd-tmpfiles expands it: a wildcard never matches a "/"
        want = self.path.split("/")
        have = path.split("/")
        return len(want) == len(have) and all(
            fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=True))

    def as_dict(self) -> dict[str, object]:
        files, dirs = self.effective_age_by
        return {**asdict(self), "age_by": self.age_by, "age_span": self.age_span,
                "age_by_files": files, "age_by_dirs": dirs}


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


# --- what protects a path from a rule ------------------------------------------------------------

class Flock(Record):
    """One BSD flock from /proc/locks (device as major/minor, inode)."""

    pid: int
    write: bool
    major: int
    minor: int
    ino: int


def read_flocks(text: str | None = None) -> list[Flock]:
    """Granted FLOCK locks from /proc/locks. Its device field is MAJOR:MINOR in hex, then the
    inode in decimal (`08:01:1234`); blocked waiters (`->` lines) hold nothing."""
    if text is None:
        try:
            with open("/proc/locks", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            return []
    out: list[Flock] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        try:
            major, minor, ino = fields[5].split(":")
            out.append(Flock(pid=int(fields[4]), write=fields[3] == "WRITE",
                             major=int(major, 16), minor=int(minor, 16), ino=int(ino)))
        except ValueError:
            continue
    return out


class Coverage(Record):
    """A cleaning rule that reaches `path`, and what (if anything) exempts it."""

    rule: Rule
    directory: str  # the directory the rule ages, as seen by us (root prefix applied)
    names_path: bool  # the rule names `path` itself: its contents are aged, it stays
    exempt: str | None  # why the path survives, or None
    exempt_kind: str | None  # "exclude", "mount", "flock"
    protect_dir: str | None  # a directory below the rule's, at or above `path`, to flock


def coverage(rules: Sequence[Rule], path: str, *, root: str | None = None,
             mount_points: Iterable[str] = (), flocks: Sequence[Flock] = (),
             known: Mapping[str, os.stat_result] | None = None) -> list[Coverage]:
    """Every cleaning rule that reaches `path` (absolute, symlinks resolved) and its verdict.

    `root` is the --root that the rules are relative to; `mount_points` are the mount points
    visible to us; `flocks` the held locks; `known` maps directories to stat results already taken
    (a directory missing from it is lstat'ed here, unless the caller could not look at it)."""
    path = os.path.normpath(path)
    root = os.path.normpath(root) if root and root != "/" else None
    rel = _strip_root(path, root)
    if rel is None:
        return []
    mounts = {os.path.normpath(m) for m in mount_points}
    held = {(f.major, f.minor, f.ino) for f in flocks}
    out: list[Coverage] = []
    for rule in cleaning_rules(rules, rel):
        rdir = next(a for a in _self_and_ancestors(rel) if rule.matches(a))
        real_dir = _apply_root(rdir, root)
        chain = _below(rdir, rel)  # directories strictly below the rule's, down to path
        exempt: str | None = None
        kind: str | None = None
        for excl in excluding_rules(rules, rel):
            hit = [c for c in chain if excl.matches(c)]
            if (excl.type == "x" and hit) or (excl.type == "X" and rel in hit):
                exempt, kind = f"excluded by {excl.file}:{excl.line} ({excl.text})", "exclude"
            if exempt:
                break
        if exempt is None:
            for c in chain:
                real = _apply_root(c, root)
                if real in mounts:
                    exempt, kind = (f"{real} is a mount point: systemd-tmpfiles never enters "
                                    "another mount"), "mount"
                    break
        if exempt is None and held:
            for c in chain:
                real = _apply_root(c, root)
                st = (known or {}).get(real)
                if st is None and known is not None and real not in known:
                    continue  # the caller did not (or could not) look there
                if st is None:
                    try:
                        st = os.lstat(real)
                    except OSError:
                        continue
                if not stat.S_ISDIR(st.st_mode):
                    continue  # 252 honours locks on directories only
                if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held:
                    exempt = (f"{real} is flock()ed by another process: systemd-tmpfiles "
                              "skips it and its subtree")
                    kind = "flock"
                    break
        protect = _apply_root(chain[0], root) if chain else None
        out.append(Coverage(rule=rule, directory=real_dir, names_path=not chain, exempt=exempt,
                            exempt_kind=kind, protect_dir=protect))
    return out


def _strip_root(path: str, root: str | None) -> str | None:
    if root is None:
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return None


def _apply_root(path: str, root: str | None) -> str:
    return path if root is None else os.path.normpath(root + "/" + path)


def _below(directory: str, path: str) -> list[str]:
    """Paths strictly below `directory` down to and including `path`, shallowest first."""
    out = []
    cur = path
    while cur != directory and cur not in ("/", ""):
        out.append(cur)
        cur = os.path.dirname(cur)
    return list(reversed(out))
