"""`status --json` and `report --json` against their contract in docs/json.md: the tables there
are parsed and the real output of a real daemon (and a real stamp) checked against them —
every documented field present when "always", no undocumented field, types as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import run_holdmount as hm
from daemon_harness import DaemonProc

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "json.md"
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}

Schema = dict[str, dict[str, tuple[tuple[type, ...], bool]]]


def schema() -> Schema:
    """section -> field -> (allowed Python types, always present), from the doc's tables."""
    out: Schema = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if m := re.fullmatch(r"### (\S+)", line):
            section = m.group(1)
            out[section] = {}
        elif m := re.match(r"\| `(\w+)` \| ([a-z ]+) \| (yes|no) \|", line):
            names = m.group(2).split(" or ")
            kinds = tuple(t for n in names for t in TYPES[n])
            out[section][m.group(1)] = (kinds, m.group(3) == "yes")
    return out


def check(value: dict[str, Any], section: str, s: Schema, seen: set[str]) -> None:
    seen.add(section)
    fields = s[section]
    assert set(value) <= set(fields), f"{section}: undocumented {set(value) - set(fields)}"
    for name, (kinds, always) in fields.items():
        if name not in value:
            assert not always, f"{section}.{name}: documented as always present, missing"
            continue
        v = value[name]
        ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
        assert ok, f"{section}.{name}: {v!r} is not {kinds}"
        if isinstance(v, dict) and f"{section}.{name}" in s:
            check(v, f"{section}.{name}", s, seen)
        if isinstance(v, list) and f"{section}.{name}[]" in s:
            for item in v:
                check(item, f"{section}.{name}[]", s, seen)


def test_status_and_report_json_match_the_doc(tmp_path: Path) -> None:
    s = schema()
    assert {"status", "status.holds[]", "report", "report.failures[]"} <= set(s)
    (tmp_path / "held").mkdir()
    (tmp_path / "client").mkdir()
    stamp = tmp_path / "stamp"
    config = f"""
[daemon]
stamp = "{stamp}"
[marker]
path = "{tmp_path}/marker"
inhibit = "{tmp_path}/inhibit"
[[hold]]
path = "{tmp_path}/held"
[[hold]]
path = "{tmp_path}/staged"
when = "staged"
[[action]]
name = "fails"
exec = ["/bin/sh", "-c", "echo out; exit 3"]
when = "always"
[[action]]
name = "merges"
merge = {{ from = "{tmp_path}/staged-tree", to = "{tmp_path}/dest" }}
"""
    seen: set[str] = set()
    with DaemonProc(tmp_path, config) as d:
        d.wait_ready()
        env = dict(os.environ, HOLDMOUNT_SOCKET=d.socket)
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            assert hm("hold", str(tmp_path / "client"), "--until-pid", str(sleeper.pid),
                      env=env).returncode == 0
            r = hm("status", "--json", env=env)
            assert r.returncode == 0, r.stderr
            status = json.loads(r.stdout)
            assert status["holdmount_status"] == 1
            check(status, "status", s, seen)
            d.term()
            assert d.wait() == 1, d.log()
        finally:
            sleeper.kill()
            sleeper.wait()
    # the next start sees the previous shutdown's failure in "last"
    (tmp_path / "again").mkdir()
    with DaemonProc(tmp_path / "again", config) as d:
        d.wait_ready()
        r = hm("status", "--json", env=dict(os.environ, HOLDMOUNT_SOCKET=d.socket))
        status = json.loads(r.stdout)
        assert status["actions"][0]["last"]["ok"] is False
        check(status, "status", s, seen)

    r = hm("report", "--json", "--stamp", str(stamp))
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["holdmount_report"] == 1 and report["failed"] is True
    assert report["failures"][0]["name"] == "fails"
    assert report["failures"][0]["output"] == ["out"]
    check(report, "report", s, seen)
    stamp.unlink()
    r = hm("report", "--json", "--stamp", str(stamp))
    assert r.returncode == 0 and json.loads(r.stdout)["failures"] == []
    check(json.loads(r.stdout), "report", s, seen)
    assert set(s) == seen, f"documented objects the test never saw: {set(s) - seen}"
