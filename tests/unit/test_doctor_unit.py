"""doctor's pieces without real components: walking without triggering, triggers from a mount
table, findings and exit codes, the systemd wrapper (names, a fake bus, an unreachable bus), the
daemon hook, and the CLI on bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import holdmount_cmd

from holdmount import control, doctor, systemd
from holdmount.doctor import Finding, Options, Report, Section, Severity
from holdmount.doctor.ask import DaemonView, holder, probe_daemon
from holdmount.doctor.layers import overlay_findings
from holdmount.doctor.walk import Walk, find_trigger, walk, would_trigger
from holdmount.doctor.writable import statfs_findings
from holdmount.mounts import MountTable

TABLE = MountTable.parse([
    "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n",
    "20 1 0:40 / /mnt/direct rw - autofs /etc/auto.direct rw,fd=5,pgrp=999999,timeout=2,"
    "minproto=5,maxproto=5,direct,pipe_ino=1\n",
    "21 1 0:41 / /net rw - autofs /etc/auto.net rw,fd=6,pgrp=999999,timeout=300,minproto=5,"
    "maxproto=5,indirect,pipe_ino=2\n",
    "22 21 0:42 / /net/host rw - nfs4 host:/ rw\n",
    "23 1 0:43 / /mnt/held rw - autofs /etc/auto.direct rw,fd=5,pgrp=999999,timeout=0,direct\n",
    "24 23 0:44 / /mnt/held rw - tmpfs tmpfs rw\n",
    "30 1 0:50 / /merged rw - overlay overlay rw,lowerdir=/l1:/l\\:2,upperdir=/up,"
    "workdir=/wk\n",
])


def test_find_trigger_direct_indirect() -> None:
    t = find_trigger(TABLE, "/mnt/direct/a/b")
    assert t is not None and t.kind == "direct" and t.point == "/mnt/direct" and t.mounted is None
    t = find_trigger(TABLE, "/net/host/x")
    assert t is not None and t.kind == "indirect" and t.point == "/net/host"
    assert t.mounted is not None and t.mounted.fstype == "nfs4"
    t = find_trigger(TABLE, "/net/other/x")
    assert t is not None and t.point == "/net/other" and t.mounted is None
    t = find_trigger(TABLE, "/net")
    assert t is not None and t.point is None  # an indirect map's root
    t = find_trigger(TABLE, "/mnt/held/x")
    assert t is not None and t.mounted is not None and t.mount.autofs_timeout == 0
    assert find_trigger(TABLE, "/mnt/directory") is None  # a prefix, not a parent


def test_would_trigger() -> None:
    assert would_trigger(TABLE, "/mnt/direct", "/mnt/direct/a")
    assert would_trigger(TABLE, "/net", "/net/other")
    assert not would_trigger(TABLE, "/net", "/net/host")  # already mounted
    assert not would_trigger(TABLE, "/net/host", "/net/host/x")
    assert not would_trigger(TABLE, "/mnt/held", "/mnt/held/x")
    assert not would_trigger(TABLE, "/mnt", "/mnt/direct")  # lstat of the point: fine


def test_walk_resolves_symlinks_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "abs").symlink_to(tmp_path / "real" / "sub")
    table = MountTable.parse(["1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"])
    w = walk(str(tmp_path / "link" / "sub" / ".." / "sub"), table)
    assert w.resolved == str(tmp_path / "real" / "sub") and w.error is None
    assert w.st is not None
    w = walk(str(tmp_path / "abs"), table)
    assert w.resolved == str(tmp_path / "real" / "sub")
    (tmp_path / "loop").symlink_to("loop")
    w = walk(str(tmp_path / "loop" / "x"), table)
    assert w.error is not None and w.error.errno == 40  # ELOOP
    w = walk(str(tmp_path / "missing" / "x"), table)
    assert w.error is not None and w.failed_at == str(tmp_path / "missing")


def test_walk_stops_at_an_unmounted_trigger(tmp_path: Path) -> None:
    (tmp_path / "mp").mkdir()
    table = MountTable.parse([
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n",
        f"20 1 0:40 / {tmp_path}/mp rw - autofs map rw,pgrp=1,timeout=2,direct\n"])
    w = walk(str(tmp_path / "mp" / "a" / "b"), table)
    assert w.stopped_at == str(tmp_path / "mp")
    assert w.resolved == str(tmp_path / "mp" / "a" / "b") and w.error is None
    w = walk(str(tmp_path / "mp"), table)  # the point itself: lstat does not trigger
    assert w.stopped_at is None and w.st is not None


def _overlay(path: str, table: MountTable) -> list[tuple[str, Any, Any]]:
    w = Walk(path, path, None, None, None, None, {})
    return [(f.code, f.details.get("role"), f.details.get("layer"))
            for f in overlay_findings(w, table)]


def test_overlay_hits() -> None:
    def hits(path: str) -> list[tuple[str, str]]:
        return [(role, layer) for code, role, layer in _overlay(path, TABLE)
                if code == "overlay-layer"]

    assert hits("/up/x") == [("upperdir", "/up")]
    assert hits("/l:2/y") == [("lowerdir", "/l:2")]  # "\\:" escapes a colon in lowerdir=
    assert hits("/wk") == [("workdir", "/wk")]
    assert hits("/merged/up/x") == [] and hits("/upper") == []
    assert _overlay("/upper", TABLE) == [("no-overlay-layer", None, None)]
    root_overlay = MountTable.parse([
        "1 0 0:50 / / rw - overlay overlay rw,lowerdir=/,upperdir=/ns/upper,workdir=/ns/work\n"])
    # a container's root: not a layer
    assert _overlay("/srv/x", root_overlay) == [("no-overlay-layer", None, None)]


def test_relative_overlay_layers_are_unknown_not_absent() -> None:
    """mountinfo shows layers given relative to the mounter's cwd as they were given: doctor
    cannot place them, so it warns instead of saying "not inside a layer"."""
    table = MountTable.parse([
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n",
        "30 1 0:50 / /merged rw - overlay overlay rw,lowerdir=lower:/abs/lower,upperdir=upper,"
        "workdir=work\n"])
    w = Walk("/srv/x", "/srv/x", None, None, None, None, {})
    [f] = overlay_findings(w, table)
    assert (f.code, f.severity) == ("overlay-layers-unknown", Severity.WARNING)
    assert f.details["relative_layers"] == ["upper", "work", "lower"]
    assert "is inside one is unknown" in f.message and "/merged" in f.message
    assert [c for c, _r, _l in _overlay("/abs/lower/y", table)] == \
        ["overlay-layer", "overlay-layers-unknown"]
    assert [c for c, _r, _l in _overlay("/merged/x", table)] == ["no-overlay-layer"]


def _report(*sev: Severity) -> Report:
    return Report("/p", "/p", tuple(Finding(Section.PATH, s, "c", "m") for s in sev))


def test_exit_codes_and_json() -> None:
    assert doctor.exit_code([_report(Severity.OK)]) == 0
    assert doctor.exit_code([_report(Severity.OK), _report(Severity.WARNING)]) == 1
    assert doctor.exit_code([_report(Severity.WARNING, Severity.PROBLEM)]) == 2
    data = json.loads(doctor.render_json([_report(Severity.WARNING)]))
    assert data["exit"] == 1
    assert data["paths"][0]["findings"][0]["severity"] == "warning"
    with pytest.raises(AttributeError):
        _report(Severity.OK).findings[0].code = "x"  # type: ignore[misc]


def test_statfs_thresholds() -> None:
    from holdmount.syscalls import ST_NOEXEC, ST_RDONLY, StatFs

    def codes(st: StatFs) -> set[str]:
        return {f.code for f in statfs_findings(st, "/x", checked=True)}

    full = StatFs(0x1021994, 4096, 100, 0, 10, 5, 0)
    assert "full" in codes(full)
    assert "low-space" in codes(StatFs(0x1021994, 4096, 100, 2, 10, 5, 0))
    assert codes(StatFs(0x1021994, 4096, 100, 50, 0, 0, ST_NOEXEC | ST_RDONLY)) == \
        {"read-only", "noexec", "space"}


# --- systemd -------------------------------------------------------------------------------------

@pytest.mark.real  # a real component: must not skip in CI
@pytest.mark.parametrize("path", ["/boot", "/var/tmp/a-b", "/srv/with space/x.y", "/",
                                  "/.hidden/dir", "/mnt/ü"])
def test_escape_path_matches_systemd_escape(path: str) -> None:
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape not installed")
    want = subprocess.run([tool, "--path", "--suffix=automount", path], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert systemd.unit_name_for_path(path, "automount") == want


def test_bus_path_encoding() -> None:
    assert systemd.bus_path_for_unit("boot.automount") == \
        b"/org/freedesktop/systemd1/unit/boot_2eautomount"
    assert systemd.bus_path_for_unit("var-tmp\\x2db.mount") == \
        b"/org/freedesktop/systemd1/unit/var_2dtmp_5cx2db_2emount"


class FakeBus:
    """Answers like systemd for one automount unit; counts process() calls (drained?)."""

    def __init__(self, props: dict[tuple[bytes, bytes, bytes], Any]) -> None:
        self.props = props
        self.pending = 0
        self.processed = 0
        self.closed = False

    def open(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def get_fd(self) -> int:
        return 3

    def process(self) -> Any:
        self.processed += 1
        empty = self.pending == 0
        self.pending = max(0, self.pending - 1)

        class Msg:
            def is_empty(self) -> bool:
                return empty
        return Msg()

    def get_property(self, destination: bytes, path: bytes, interface: bytes, prop: bytes,
                     rtype: bytes) -> Any:
        assert destination == b"org.freedesktop.systemd1"
        self.pending += 2  # pretend signals arrived meanwhile
        key = (path, interface, prop)
        if key not in self.props:
            raise RuntimeError(f"org.freedesktop.DBus.Error.UnknownProperty: {prop!r}")
        return self.props[key]


def test_automount_status_from_a_bus() -> None:
    unit = systemd.bus_path_for_unit("boot.automount")
    mount = systemd.bus_path_for_unit("boot.mount")
    bus = FakeBus({
        (unit, systemd.IFACE_UNIT, b"LoadState"): b"loaded",
        (unit, systemd.IFACE_UNIT, b"ActiveState"): b"active",
        (unit, systemd.IFACE_UNIT, b"SubState"): b"waiting",
        (unit, systemd.IFACE_AUTOMOUNT, b"TimeoutIdleUSec"): 120_000_000,
        (mount, systemd.IFACE_UNIT, b"ActiveState"): b"inactive",
    })
    st = systemd.automount_status("/boot", bus=bus)
    assert isinstance(st, systemd.AutomountUnit)
    assert (st.name, st.active_state, st.sub_state, st.timeout_idle_usec) == \
        ("boot.automount", "active", "waiting", 120_000_000)
    assert st.mount_active_state == "inactive" and st.timeout_idle_seconds == 120
    assert systemd.format_usec(st.timeout_idle_usec) == "2min"
    assert bus.pending == 0 and bus.processed >= 5  # every reply was followed by a drain
    assert not bus.closed  # a caller's bus stays open


def test_automount_status_missing_unit_and_errors() -> None:
    unit = systemd.bus_path_for_unit("x.automount")
    bus = FakeBus({
        (unit, systemd.IFACE_UNIT, b"LoadState"): b"not-found",
        (unit, systemd.IFACE_UNIT, b"ActiveState"): b"inactive",
        (unit, systemd.IFACE_UNIT, b"SubState"): b"dead",
        (systemd.bus_path_for_unit("x.mount"), systemd.IFACE_UNIT, b"ActiveState"): b"inactive",
    })
    st = systemd.automount_status("/x", bus=bus)
    assert isinstance(st, systemd.AutomountUnit) and not st.exists
    assert st.timeout_idle_usec is None
    st2 = systemd.automount_status("/y", bus=FakeBus({}))
    assert isinstance(st2, systemd.QueryFailed) and "UnknownProperty" in st2.message


def test_no_systemd_without_the_marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(systemd, "BOOTED_MARKER", str(tmp_path / "nope"))
    st = systemd.automount_status("/boot")
    assert isinstance(st, systemd.NoSystemd) and "not running" in st.reason


@pytest.mark.real  # a real component: must not skip in CI
def test_unreachable_bus_is_no_systemd(tmp_path: Path) -> None:
    """A real pystemd DBusAddress connection to a socket nobody listens on."""
    pytest.importorskip("pystemd")
    dead = tmp_path / "private"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()  # bound, never listening: ECONNREFUSED
    st = systemd.automount_status("/boot", address=f"unix:path={dead}")
    assert isinstance(st, systemd.NoSystemd) and "cannot reach systemd" in st.reason
    st = systemd.automount_status("/boot", address=f"unix:path={tmp_path}/absent")
    assert isinstance(st, systemd.NoSystemd)


def test_no_pystemd_degrades(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pystemd.dbuslib", None)  # import raises ImportError
    st = systemd.open_bus("unix:path=/run/systemd/private")
    assert isinstance(st, systemd.NoSystemd) and "pystemd" in st.reason


# --- the daemon hook -----------------------------------------------------------------------------

def test_daemon_probe_without_a_daemon(tmp_path: Path) -> None:
    v = probe_daemon(str(tmp_path / "none"), "/x")
    assert not v.running and "not running" in v.detail and "No such file" in v.detail
    stale = tmp_path / "stale"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(stale))
    s.close()  # bound, never listening: what a daemon that died leaves behind
    v = probe_daemon(str(stale), "/x")
    assert not v.running and "Connection refused" in v.detail and "not running" in v.detail


def test_holder_reads_configured_and_delegated_holds() -> None:
    status = {"holds": [{"path": "/boot", "held": True, "resolved": "/efi"},
                        {"path": "/var/tmp/job", "held": False}],
              "delegated": [{"path": "/srv", "held": True, "resolved": "/srv",
                             "holders": [{"lease": 1, "pid": 42}, {"lease": 2, "pid": 43}]}]}
    assert holder(status, "/boot") == "configured hold on /boot"
    assert holder(status, "/boot/grub") == "configured hold on /boot"
    assert holder(status, "/efi/x") == "configured hold on /efi"  # as resolved
    assert holder(status, "/var/tmp/job") is None  # configured, but not held now
    assert holder(status, "/srv/a") == "held for a client: /srv"
    assert holder(status, "/srvx") is None and holder(status, "/") is None
    assert holder({}, "/boot") is None


def test_daemon_probe_asks_the_control_server(tmp_path: Path) -> None:
    """The real control server (holdmount.control.Server) answering `status` as the daemon
    registers it; doctor asks through the real client."""
    import selectors
    import threading

    sel = selectors.DefaultSelector()
    server = control.Server(str(tmp_path / "control"), sel)
    status = {"holds": [], "delegated": [{"path": "/boot", "held": True, "holders": []}]}
    server.register("status", lambda _req: {"status": status})
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for key, mask in sel.select(0.05):
                key.data(mask)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        v = probe_daemon(server.path, "/boot")
        assert v == DaemonView(True, True, f"the holdmount daemon ({server.path}) holds it "
                               "(held for a client: /boot)")
        v = probe_daemon(server.path, "/srv")
        assert (v.running, v.holds) == (True, False) and v.detail.endswith("does not hold it")
    finally:
        stop.set()
        t.join()
        server.close()


def test_daemon_hook_is_pluggable(tmp_path: Path) -> None:
    def probe(sock: str, path: str) -> DaemonView:
        return DaemonView(True, True, f"fake daemon at {sock} holds {path}")

    rep = doctor.diagnose(str(tmp_path), Options(daemon_probe=probe, socket_path="/s"))
    [f] = [f for f in rep.findings if f.code == "daemon"]
    assert f.message == f"fake daemon at /s holds {tmp_path}"


def test_socket_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def probe(sock: str, path: str) -> DaemonView:
        seen.append(sock)
        return DaemonView(False, False, "none")

    monkeypatch.setenv("HOLDMOUNT_SOCKET", str(tmp_path / "s"))
    doctor.diagnose(str(tmp_path), Options(daemon_probe=probe))
    monkeypatch.delenv("HOLDMOUNT_SOCKET")
    doctor.diagnose(str(tmp_path), Options(daemon_probe=probe))
    assert seen == [str(tmp_path / "s"), "/run/holdmount/control"]


# --- the CLI on bad input ----------------------------------------------------------------------

def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*holdmount_cmd(), "doctor", *args],
                          capture_output=True, text=True, timeout=60, **kw)


def test_missing_path_is_a_finding(tmp_path: Path) -> None:
    r = _cli("--json", str(tmp_path / "nope" / "x"), str(tmp_path))
    assert "Traceback" not in r.stderr and r.returncode == 2, r.stderr
    data = json.loads(r.stdout)
    assert data["exit"] == 2
    first, second = data["paths"]
    [f] = [f for f in first["findings"] if f["section"] == "path"]
    assert (f["code"], f["severity"]) == ("path-missing", "problem")
    assert f["message"] == f"lstat({tmp_path / 'nope'}): No such file or directory"
    assert second["severity"] != "problem"


def test_text_output_lists_sections(tmp_path: Path) -> None:
    r = _cli(str(tmp_path))
    assert r.returncode in (0, 1), r.stderr
    for section in ("Path", "Mount", "Holds", "Namespace", "Writable", "Tmpfiles", "Overlay"):
        assert f"\n  {section}\n" in r.stdout


def test_usage_error() -> None:
    r = _cli()
    assert r.returncode == 64 and "holdmount: doctor:" in r.stderr


def test_no_flag_no_create(tmp_path: Path) -> None:
    """Without --check-writable nothing is created; with it a probe file comes and goes."""
    before = set(os.listdir(tmp_path))
    r = _cli("--json", str(tmp_path))
    assert set(os.listdir(tmp_path)) == before
    codes = {f["code"] for f in json.loads(r.stdout)["paths"][0]["findings"]}
    assert "create-not-checked" in codes and "writable" not in codes
    r = _cli("--json", "--check-writable", str(tmp_path))
    codes = {f["code"] for f in json.loads(r.stdout)["paths"][0]["findings"]}
    assert "writable" in codes and set(os.listdir(tmp_path)) == before
