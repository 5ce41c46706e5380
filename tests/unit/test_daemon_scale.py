"""The daemon with many holds: READY=1 reaches a systemd-like listener (notify messages stay
below 4096 bytes), the holds are taken in one batch, and stopping sends no FDSTOREREMOVE.

Counts, not times: how fast this is lives in bench/ (P6)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, NotifyListener, wait_for

from holdmount import config, hold, notify
from holdmount.daemon import Daemon
from holdmount.errors import Failure
from holdmount.held import HeldPath
from holdmount.mounts import MountTable

SYSTEMD_MAX = 4096  # systemd ignores a notify datagram of this many bytes or more


class SystemdLikeListener(NotifyListener):
    """NotifyListener that, like systemd, ignores a datagram of SYSTEMD_MAX bytes or more as a
    whole (NotifyListener itself records every message, whatever its size)."""

    max_size = SYSTEMD_MAX


def many_dirs(base: Path, n: int) -> list[Path]:
    dirs = []
    for i in range(n):
        d = base / f"a-fairly-long-directory-name-so-the-paths-add-up-{i:04d}"
        d.mkdir()
        dirs.append(d)
    return dirs


def holds_toml(dirs: list[Path], extra: str = "") -> str:
    return "".join(f'[[hold]]\npath = "{d}"\n{extra}' for d in dirs)


@pytest.fixture
def systemd_like(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DaemonProc with SystemdLikeListener as its notify socket."""
    import daemon_harness

    monkeypatch.setattr(daemon_harness, "NotifyListener", SystemdLikeListener)
    yield


def test_ready_reaches_a_systemd_like_listener_with_200_holds(
        tmp_path: Path, systemd_like: None) -> None:
    dirs = many_dirs(tmp_path, 200)
    assert len("\n".join(map(str, dirs))) > 2 * SYSTEMD_MAX  # naming them all cannot fit
    with DaemonProc(tmp_path, holds_toml(dirs)) as d:
        assert isinstance(d.notify, SystemdLikeListener)
        d.wait_ready()
        assert d.notify.ignored == 0
        ready = next(m for m in d.notify.poll() if m.get("READY") == "1")
        assert ready["STATUS"] == f"holding 200: {dirs[0]}, {dirs[1]}, {dirs[2]}, and 197 more"
        # every path really is an open fd of the daemon
        links = {os.readlink(f"/proc/{d.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{d.pid}/fd")}
        assert {str(x) for x in dirs} <= links
        # and `status` lists them all, although its reply is far over the 64 KiB request limit
        from holdmount import control

        status = control.request(d.socket, "status")["status"]
        assert len(control.encode(status)) > control.MAX_MESSAGE
        assert sorted(h["path"] for h in status["holds"]) == sorted(map(str, dirs))
        d.term()
        assert d.wait() == 0, d.log()


def test_stop_sends_no_fdstoreremove(tmp_path: Path) -> None:
    """systemd discards a stopped service's fd store itself; one FDSTOREREMOVE per hold into a
    10-datagram queue could block SEND_TIMEOUT each while the manager is busy stopping."""
    dirs = many_dirs(tmp_path, 30)
    with DaemonProc(tmp_path, holds_toml(dirs)) as d:
        d.wait_ready()
        stored = [m for m in d.notify.poll() if m.get("FDSTORE") == "1"]
        assert len(stored) == 30, "every hold goes to the fd store"
        d.term()
        assert d.wait() == 0, d.log()
        assert wait_for(lambda: d.notify.has("STOPPING", "1"), 5)
        messages = d.notify.poll()
        after = messages[next(i for i, m in enumerate(messages) if m.get("STOPPING") == "1"):]
        assert [m for m in after if "FDSTOREREMOVE" in m] == []
    assert d.log().count("released ") == 30


def test_disarm_still_removes_the_staged_hold_from_the_fd_store(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    marker = tmp_path / "staged"
    marker.touch()
    cfg = f'[marker]\npath = "{marker}"\n[[hold]]\npath = "{held}"\nwhen = "staged"\n'
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        assert d.status()["holds"][0]["held"] is True
        marker.unlink()
        assert wait_for(lambda: d.notify.has("FDSTOREREMOVE", "1"), 10), d.notify.poll()
        removed = [m for m in d.notify.poll() if m.get("FDSTOREREMOVE") == "1"]
        assert [m["FDNAME"] for m in removed] == [f"hold-{held}"]
        d.term()
        assert d.wait() == 0, d.log()


def test_a_bad_always_hold_fails_the_start_and_names_every_bad_path(tmp_path: Path) -> None:
    good = many_dirs(tmp_path, 3)
    bad = [tmp_path / "missing-1", tmp_path / "missing-2"]
    with DaemonProc(tmp_path, holds_toml([good[0], bad[0], good[1], bad[1], good[2]])) as d:
        assert d.wait() == 66, d.log()  # EX_NOINPUT, as before: no READY with a hold missing
        assert not d.notify.has("READY")
        log = d.log()
        assert f"open({bad[0]}): No such file or directory" in log
        assert f"open({bad[1]}): No such file or directory" in log
        assert not d.notify.has("FDSTORE"), "nothing stored from a start that failed"


def test_staged_holds_one_bad_path_does_not_stop_the_others(tmp_path: Path) -> None:
    good = many_dirs(tmp_path, 3)
    bad = tmp_path / "missing"
    marker = tmp_path / "staged"
    cfg = f'[marker]\npath = "{marker}"\n' + holds_toml([good[0], bad, good[1], good[2]],
                                                       'when = "staged"\n')
    with DaemonProc(tmp_path, cfg) as d:
        d.wait_ready()
        marker.touch()
        assert wait_for(lambda: d.status()["marker"]["state"] == "armed"
                        and sum(h["held"] for h in d.status()["holds"]) == 3, 10), d.log()
        holds = {h["path"]: h for h in d.status()["holds"]}
        assert holds[str(bad)]["held"] is False
        assert "No such file or directory" in holds[str(bad)]["error"]
        assert all(holds[str(g)]["held"] and holds[str(g)]["error"] is None for g in good)
        d.term()
        assert d.wait() == 0, d.log()


# --- in-process: how many helper processes and mount-table reads a batch costs ----------

def test_start_batch_is_one_helper_per_protect_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "locked").mkdir()
    plain = many_dirs(tmp_path / "plain", 150)
    locked = many_dirs(tmp_path / "locked", 50)
    cfg = config.loads(holds_toml(plain) + holds_toml(locked, "protect = true\n"))
    opens: list[int] = []
    reads: list[int] = []
    real_open, real_read = hold.open_dirs, MountTable.read.__func__  # type: ignore[attr-defined]

    def counting_open(paths: list[str], timeout: float) -> list[int | OSError]:
        opens.append(len(paths))
        return real_open(paths, timeout)

    def counting_read(cls: type[MountTable], pid: int | str = "self") -> MountTable:
        reads.append(1)
        table: MountTable = real_read(cls, pid)
        return table

    monkeypatch.setattr(hold, "open_dirs", counting_open)
    monkeypatch.setattr(MountTable, "read", classmethod(counting_read))
    daemon = Daemon(cfg, notify.Notifier({}), environ={})
    try:
        daemon.configured.take_all(daemon.configured.holds, fatal=True)
        assert sorted(opens) == [50, 150], "one helper process per protect value"
        assert len(reads) == 2, "one mount-table read per batch, none per path"
        assert all(h.hold is not None and h.error is None for h in daemon.configured.holds)
        assert all(h.hold is not None and h.hold.info.protected is h.protect
                   for h in daemon.configured.holds)
    finally:
        for h in daemon.configured.holds:
            daemon.configured.release(h, stopping=True)
        daemon.selector.close()


def test_take_is_still_all_or_nothing(tmp_path: Path) -> None:
    good = many_dirs(tmp_path, 2)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Failure, match=r"open\(.*/missing\): No such file"):
        hold.take([str(good[0]), str(tmp_path / "missing"), str(good[1])])
    assert len(os.listdir("/proc/self/fd")) == before, "nothing kept open"
    each = hold.take_each([str(good[0]), str(tmp_path / "missing"), str(good[1])])
    assert [type(r).__name__ for r in each] == ["Hold", "Failure", "Hold"]
    hold.release_all([r for r in each if isinstance(r, hold.Hold)])


def test_mount_table_lookups_match_a_scan() -> None:
    table = MountTable.read()
    for m in table.mounts:
        assert table.by_id(m.mnt_id) == next(x for x in table.mounts if x.mnt_id == m.mnt_id)
        assert table.at(m.mount_point) == [x for x in table.mounts
                                           if x.mount_point == m.mount_point]
    assert table.by_id(-1) is None and table.at("/no/such/mount/point") == []
    table.at("/").clear()  # a caller's list must not change the table
    assert table.at("/") == [x for x in table.mounts if x.mount_point == "/"]


# --- notify: nothing systemd would ignore is sent -----------------------------------------

@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_ready_with_a_huge_status_is_cut_to_fit(tmp_path: Path, listener: socket.socket) -> None:
    n = notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert n.ready("holding 10000: " + "/a/é" * 5000)
        data = listener.recv(65536)
        assert len(data) < SYSTEMD_MAX
        lines = data.decode("utf-8").split("\n")  # strict: no character cut in half
        assert lines[0] == "READY=1"
        assert lines[1].startswith("STATUS=holding 10000: /a/é") and lines[1].endswith("…")
        assert n.stopping("x" * 10_000)
        data = listener.recv(65536)
        assert len(data) < SYSTEMD_MAX and data.startswith(b"STOPPING=1\nSTATUS=xxx")
        # short messages are sent as they are
        assert n.status("fine")
        assert listener.recv(65536) == b"STATUS=fine"
    finally:
        n.close()


def test_a_message_that_cannot_fit_is_refused_not_sent(
        tmp_path: Path, listener: socket.socket) -> None:
    n = notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert n.send("READY=1", "X_TOO_LONG=" + "y" * SYSTEMD_MAX) is False
        assert n.send("READY=1", "STATUS=" + "s" * 10, "X=" + "y" * (SYSTEMD_MAX - 8)) is False
        assert n.ready("ok")
        assert listener.recv(65536) == b"READY=1\nSTATUS=ok", "only the message that fits"
    finally:
        n.close()


def test_summary_names_at_most_three_paths(tmp_path: Path) -> None:
    cfg = config.loads(holds_toml([tmp_path / f"d{i}" for i in range(5)]))
    daemon = Daemon(cfg, notify.Notifier({}), environ={})
    try:
        for h in daemon.configured.holds:
            h.error = "x"
        assert daemon.summary() == (f"holding nothing; failed: {tmp_path}/d0, {tmp_path}/d1, "
                                    f"{tmp_path}/d2, and 2 more")
        one: HeldPath = daemon.configured.holds[0]
        one.error = None
        one.hold = hold.Hold(-1, None)  # type: ignore[arg-type]
        assert daemon.summary().startswith(f"holding 1: {tmp_path}/d0; failed: {tmp_path}/d1")
        one.hold = None
    finally:
        daemon.selector.close()


def limited(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
    """DaemonProc's popen with a hard RLIMIT_NOFILE of 700 for the daemon."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        *args, **kwargs,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (700, 700)))


def test_fd_reserve_leaves_room_for_every_hold_from_boot(tmp_path: Path) -> None:
    """Under a hard RLIMIT_NOFILE of 700, 500 holds from boot plus the finalize's fd reserve
    fit: the reserve is counted for the staged holds only and taken after the holds from boot
    (sizing it by every configured hold, before taking them, made the daemon fail with EMFILE
    at 10,000 holds under a hard limit of 20,000: found by bench/run P6)."""
    dirs = many_dirs(tmp_path, 500)
    with DaemonProc(tmp_path, holds_toml(dirs), popen=limited) as d:
        d.wait_ready()
        assert len(d.status()["holds"]) == 500
        d.term()
        assert d.wait() == 0, d.log()


def test_more_holds_than_fds_is_a_configuration_error(tmp_path: Path) -> None:
    """800 holds under a hard RLIMIT_NOFILE of 700: exit 78 (systemd does not restart it in a
    loop) with one line naming the limit and a hint, not "internal error"."""
    dirs = many_dirs(tmp_path, 800)
    with DaemonProc(tmp_path, holds_toml(dirs), popen=limited) as d:
        assert d.wait() == 78, d.log()
        lines = d.log().splitlines()
        assert lines[0] == ("holdmount: open(): Too many open files taking 800 holds "
                            "(RLIMIT_NOFILE 700/700)"), lines
        assert lines[1].startswith("hint: the daemon keeps one fd per held path"), lines
