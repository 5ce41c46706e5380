"""Structured journal records in a real systemd (252 and 257, systemd-nspawn on the Debian 12
and Debian 13 roots): holdmount.service logs its
events through the journal's native protocol; `journalctl -o json` reads back each MESSAGE_ID
with its HOLDMOUNT_* fields, and `journalctl -x` explains them from the installed catalog.

Boot 1: holds (one on a missing path fails, one is detached and taken again), the marker armed,
disarmed and armed again, a client refused, then a poweroff that runs three staged actions (one
succeeds, one fails, one hangs past its timeout) and writes the failure stamp. Boot 2: the
finalize succeeds and clears the stamp. Every event is seen at least once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from nspawn import Container, OsRoot
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from nspawn import root_container_factory as _fixture  # noqa: F401  (registers the fixture)
from system_units import dropin

from holdmount.log import EVENTS

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

Factory = Callable[..., Container]
REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "packaging" / "catalog" / "holdmount.catalog"
STAMP = "/var/lib/holdmount/failure.stamp"
MARKER = "/run/hmj/staged"

CONFIG = f"""
[daemon]
stamp = "{STAMP}"
[marker]
path = "{MARKER}"
[[hold]]
path = "/srv/hmj/always"
[[hold]]
path = "/srv/hmj/staged"
when = "staged"
[[hold]]
path = "/srv/hmj/missing"
when = "staged"
[[hold]]
path = "/srv/hmj/lostable"
[[action]]
name = "good"
exec = ["/bin/sh", "-c", "echo all fine"]
when = "staged"
[[action]]
name = "bad"
exec = ["/bin/sh", "-c", "echo first line; echo disk full >&2; exit 3"]
when = "staged"
[[action]]
name = "stuck"
exec = ["/bin/sleep", "600"]
when = "staged"
timeout = "1s"
"""


def records(c: Container) -> list[dict[str, str]]:
    """holdmount's records of the last boot, as journalctl -o json gives them."""
    out = c.journal("-b", "0", "-o", "json", "SYSLOG_IDENTIFIER=holdmount")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def by_event(recs: list[dict[str, str]], event: str) -> list[dict[str, str]]:
    return [r for r in recs if r.get("HOLDMOUNT_EVENT") == event]


def test_events_in_the_journal_and_the_catalog(root_container_factory: Factory,
                                               os_root: OsRoot) -> None:
    hm = os_root.holdmount
    c = root_container_factory(
        "journal",
        units={"holdmount.service": (REPO / "units" / "holdmount.service").read_text(),
               **dict([dropin("holdmount.service", os_root)]),
               "srv-hmj-lostable.mount": "[Mount]\nWhat=tmpfs\nWhere=/srv/hmj/lostable\n"
               "Type=tmpfs\nOptions=size=1m\n"},
        files={"/etc/holdmount/holdmount.toml": CONFIG, "/srv/hmj/always/.keep": "",
               "/srv/hmj/staged/.keep": "", "/srv/hmj/private/.keep": "",
               "/usr/lib/systemd/catalog/holdmount.catalog": CATALOG.read_text()},
        wants=["srv-hmj-lostable.mount", "holdmount.service"])
    c.boot()
    c.path("/srv/hmj/private").chmod(0o700)  # O_PATH works for nobody, reading does not
    assert c.systemctl("is-active", "holdmount.service").stdout.strip() == "active", \
        c.journal("-u", "holdmount.service")
    c.exec(["sh", "-c", f"mkdir -p /run/hmj && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: by_event(records(c), "marker-armed") != [], 10), records(c)
    c.exec(["rm", MARKER], check=True)
    assert c.wait_for(lambda: by_event(records(c), "marker-disarmed") != [], 10)
    c.exec(["touch", MARKER], check=True)
    assert c.wait_for(lambda: len(by_event(records(c), "marker-armed")) == 2, 10)
    # a detached mount: lost, and taken again once something is mounted there
    c.exec(["umount", "-l", "/srv/hmj/lostable"], check=True)
    assert c.wait_for(lambda: by_event(records(c), "hold-lost") != [], 10)
    c.exec(["mount", "-t", "tmpfs", "-o", "size=1m", "again", "/srv/hmj/lostable"], check=True)
    assert c.wait_for(lambda: by_event(records(c), "hold-retaken") != [], 10)
    # a user may not hold a directory it could not open itself: refused, and recorded
    r = c.exec(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", hm, "hold",
                "/srv/hmj/private", "--until-pid", "1"])
    assert r.returncode == 77, r.stderr
    assert c.wait_for(lambda: by_event(records(c), "client-refused") != [], 10)
    # journalctl -x explains the records from the catalog the packages install
    c.exec(["journalctl", "--update-catalog"], check=True)
    text = explained(c, "client-refused")
    assert "Subject: holdmount refused a client" in text, text
    assert "HOLDMOUNT_UID and HOLDMOUNT_PID" in text, text
    text = explained(c, "marker-armed")  # @FIELD@ filled in from the record
    assert f"Subject: holdmount marker {MARKER} present: armed" in text, text
    # multi-line values take the protocol's binary-length form and come back whole
    c.py("from holdmount.log import log; log.setup(journal=True); "
         "log.event('hold-failed', 'two\\nlines', path='/multi\\nline', status='a=b')",
         check=True)
    assert c.wait_for(lambda: any(r.get("HOLDMOUNT_PATH") == "/multi\nline"
                                  for r in records(c)), 10)
    assert c.poweroff() == 0

    recs = records(c)
    (multi,) = [r for r in recs if r.get("HOLDMOUNT_PATH") == "/multi\nline"]
    assert (multi["MESSAGE"], multi["HOLDMOUNT_STATUS"]) == ("two\nlines", "a=b"), multi
    recs.remove(multi)  # the rest are the daemon's own
    for rec in recs:  # every record is holdmount's, through the native socket, with a priority
        assert rec["_TRANSPORT"] == "journal" and rec["PRIORITY"].isdigit(), rec
    for rec in (r for r in recs if "HOLDMOUNT_EVENT" in r):
        event = rec["HOLDMOUNT_EVENT"]
        assert rec["MESSAGE_ID"] == EVENTS[event][0], rec
        assert rec["PRIORITY"] == str(EVENTS[event][1]), rec
        assert rec.get("_SYSTEMD_UNIT") == "holdmount.service", rec
    taken = {r["HOLDMOUNT_PATH"] for r in by_event(recs, "hold-taken")}
    assert taken == {"/srv/hmj/always", "/srv/hmj/staged", "/srv/hmj/lostable"}, taken
    failed = by_event(recs, "hold-failed")[0]  # the staged hold on a missing path
    assert failed["HOLDMOUNT_PATH"] == "/srv/hmj/missing", failed
    assert failed["HOLDMOUNT_STATUS"].startswith("open(/srv/hmj/missing): No such file"), failed
    (lost,) = by_event(recs, "hold-lost")
    assert (lost["HOLDMOUNT_PATH"], lost["HOLDMOUNT_MOUNT_POINT"]) == ("/srv/hmj/lostable",) * 2
    assert {r["HOLDMOUNT_MARKER"] for r in by_event(recs, "marker-armed")} == {MARKER}
    refused = by_event(recs, "client-refused")[0]
    assert refused["HOLDMOUNT_UID"] == "65534" and refused["HOLDMOUNT_OP"] == "hold", refused
    assert "/srv/hmj/private" in refused["HOLDMOUNT_STATUS"], refused
    started = [r["HOLDMOUNT_ACTION"] for r in by_event(recs, "action-started")]
    assert started == ["good", "bad", "stuck"], started
    (good,) = by_event(recs, "action-finished")
    assert good["HOLDMOUNT_ACTION"] == "good" and good["HOLDMOUNT_EXIT_CODE"] == "0", good
    (bad,) = by_event(recs, "action-failed")
    assert (bad["HOLDMOUNT_ACTION"], bad["HOLDMOUNT_STATUS"], bad["HOLDMOUNT_EXIT_CODE"]) == \
        ("bad", "exit status 3", "3"), bad
    (stuck,) = by_event(recs, "action-timed-out")
    assert stuck["HOLDMOUNT_ACTION"] == "stuck" and stuck["HOLDMOUNT_SIGNAL"] == "SIGTERM", stuck
    assert stuck["HOLDMOUNT_STATUS"] == "timed out after 1s, killed by SIGTERM", stuck
    (written,) = by_event(recs, "stamp-written")
    assert (written["HOLDMOUNT_STAMP"], written["HOLDMOUNT_FAILED"]) == (STAMP, "bad stuck")
    released = {r["HOLDMOUNT_PATH"] for r in by_event(recs, "hold-released")}
    assert {"/srv/hmj/always", "/srv/hmj/staged"} <= released, released
    # the action's output is in the journal, between its start and its end
    messages = [r["MESSAGE"] for r in recs]
    assert messages.index("bad: disk full") < messages.index("action bad: exit status 3")
    # the query docs/journal.md gives for "which machines failed to finalize"
    fleet = c.journal("-o", "json", f"MESSAGE_ID={EVENTS['stamp-written'][0]}")
    (row,) = [json.loads(x) for x in fleet.splitlines()]
    assert row["_HOSTNAME"] and row["_BOOT_ID"] and row["HOLDMOUNT_FAILED"] == "bad stuck"

    # boot 2: only the good action: the finalize succeeds and clears the stamp
    c.write_file("/etc/holdmount/holdmount.toml", CONFIG.split("[[action]]")[0] +
                 '[[action]]\nname = "good"\nexec = ["/bin/true"]\nwhen = "staged"\n')
    c.boot()
    c.exec(["sh", "-c", f"mkdir -p /run/hmj && touch {MARKER}"], check=True)
    assert c.wait_for(lambda: by_event(records(c), "marker-armed") != [], 10), records(c)
    assert c.poweroff() == 0
    later = records(c)
    (cleared,) = by_event(later, "stamp-cleared")
    assert cleared["HOLDMOUNT_STAMP"] == STAMP and cleared["MESSAGE_ID"] == \
        EVENTS["stamp-cleared"][0] and cleared["_SYSTEMD_UNIT"] == "holdmount.service"
    assert not c.path(STAMP).exists()
    seen = {e for r in recs + later if (e := r.get("HOLDMOUNT_EVENT"))}
    assert seen == set(EVENTS), f"events never seen: {set(EVENTS) - seen}"


def explained(c: Container, event: str) -> str:
    """journalctl -x for one event, in the container (-x reads the running system's catalog
    database, which `journalctl --update-catalog` builds from /usr/lib/systemd/catalog)."""
    r = c.exec(["journalctl", "--no-pager", "-x", "-b", "0", f"MESSAGE_ID={EVENTS[event][0]}"])
    assert r.returncode == 0, r.stderr
    return r.stdout
