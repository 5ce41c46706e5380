"""The small logger: plain lines without the journal, `<N>` lines when the journal's socket is
not there, light imports, and the event table the docs and the catalog must agree with.
(The native protocol itself is read back by real journald in test_journal_nspawn.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from holdmount import log as logmod
from holdmount.log import EVENTS, Logger

REPO = Path(__file__).resolve().parents[2]


def test_plain_lines_without_the_journal(capsys: pytest.CaptureFixture[str]) -> None:
    lg = Logger()
    lg.setup(journal=False)
    lg.debug("hidden %d", 1)
    lg.info("holding %s", "/boot")
    lg.warning("careful")
    lg.event("action-failed", "action %s: %s", "x", "exit status 3", action="x")
    assert capsys.readouterr().err == "holding /boot\nwarning: careful\n" \
        "error: action x: exit status 3\n"
    lg.setup(debug=True, journal=False)
    lg.debug("shown %d", 2)
    assert capsys.readouterr().err == "shown 2\n"


def test_priority_prefixes_when_the_journal_socket_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(logmod, "JOURNAL_SOCKET", str(tmp_path / "no-socket"))
    lg = Logger()
    lg.setup(journal=True)
    lg.error("two\nlines")
    lg.event("hold-taken", "holding %s", "/boot", path="/boot")
    assert capsys.readouterr().err == "<3>two\n<3>lines\n<6>holding /boot\n"


def test_native_datagram_format() -> None:
    data = logmod.encode(6, "a\nb", logmod.event_fields("hold-lost", {"path": "/p", "x": None}))
    assert data.startswith(b"PRIORITY=6\nSYSLOG_IDENTIFIER=holdmount\nMESSAGE\n"
                           b"\x03\x00\x00\x00\x00\x00\x00\x00a\nb\n")
    assert data.endswith(b"MESSAGE_ID=074e47518ba34fa688edfed3dc4a5f79\n"
                         b"HOLDMOUNT_EVENT=hold-lost\nHOLDMOUNT_PATH=/p\n")


def test_log_module_stays_light() -> None:
    """log.py is on the daemon's start path (issue 15): none of these may come with it."""
    code = ("import sys, holdmount.log; print(' '.join(m for m in ('logging', 'json', "
            "'datetime', 'ctypes', 'typing', 'traceback') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       check=True, cwd=REPO)
    assert r.stdout.strip() == ""


def test_ids_are_unique_and_match_catalog_and_docs() -> None:
    ids = [mid for mid, _ in EVENTS.values()]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    catalog = (REPO / "packaging" / "catalog" / "holdmount.catalog").read_text()
    assert re.findall(r"^-- ([0-9a-f]{32})$", catalog, re.M) == ids
    doc = (REPO / "docs" / "journal.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| `([0-9a-f]{32})` \|", doc, re.M))
    assert rows == {name: mid for name, (mid, _) in EVENTS.items()}
