"""`holdmount run` as a process wrapper: options, exit status, signals, fds, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import holdmount_cmd

HM = holdmount_cmd()
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def hm(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HM, *args], capture_output=True, text=True, timeout=60,
                          **kw)  # type: ignore[call-overload]


def assert_clean_error(r: subprocess.CompletedProcess[str], code: int, first: str) -> None:
    """One line naming the call and the path, one hint line, the code, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(first), lines[0]
    assert lines[1].startswith("hint: ") and len(lines[1]) > len("hint: ")
    assert "Traceback" not in r.stderr


def test_console_script_and_module_agree() -> None:
    exe = Path(sys.executable).with_name("holdmount")
    a = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    b = hm("--version")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and b.stdout.startswith("holdmount ")


def test_exit_status_is_the_commands(tmp_path: Path) -> None:
    assert hm("run", "--hold", str(tmp_path), "--", "sh", "-c", "exit 7").returncode == 7
    assert hm("run", "--hold", str(tmp_path), "true").returncode == 0
    assert hm("run", "--hold", str(tmp_path), "--", "sh", "-c", "kill -KILL $$").returncode \
        == 128 + signal.SIGKILL


def test_options_stop_at_first_non_option(tmp_path: Path) -> None:
    """Like systemd-inhibit: everything after the command belongs to the command."""
    r = hm("run", "--hold", str(tmp_path), "echo", "--hold", "--protect", "-x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "--hold --protect -x\n"
    r = hm("run", "--hold", str(tmp_path), "--", "echo", "--", "a")
    assert r.stdout == "-- a\n"


def test_child_inherits_no_held_fds(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    r = hm("run", "--hold", str(held), "--protect", "--", sys.executable, "-c",
           "import os\n"
           "for n in os.listdir('/proc/self/fd'):\n"
           "    try: print(os.readlink(f'/proc/self/fd/{n}'))\n"
           "    except OSError: pass\n")
    assert r.returncode == 0, r.stderr
    assert str(held) not in r.stdout.splitlines()
    # and the holder really held it while the child ran (the control for the check above)
    r = hm("run", "--hold", str(held), "--", "sh", "-c",
           "for p in /proc/$PPID/fd/*; do readlink $p; done")
    assert str(held) in r.stdout.splitlines()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_reach_the_child(tmp_path: Path, sig: signal.Signals) -> None:
    got = tmp_path / "got"
    script = (f"trap 'echo {sig.name} > {got}; exit 42' {sig.name.removeprefix('SIG')}; "
              "echo ready; while :; do sleep 0.05; done")
    proc = subprocess.Popen([*HM, "run", "--hold", str(tmp_path), "--", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)  # to holdmount only (kill(2), not the terminal's process group)
    assert proc.wait(20) == 42
    assert got.read_text().strip() == sig.name


def test_uncaught_signal_gives_128_plus_n(tmp_path: Path) -> None:
    proc = subprocess.Popen([*HM, "run", "--hold", str(tmp_path), "--", "sh", "-c",
                             "echo ready; exec sleep 60"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.1)  # let sh exec sleep
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 128 + signal.SIGTERM


def test_hold_released_after_the_command(tmp_path: Path) -> None:
    r = hm("run", "--hold", str(tmp_path), "--protect", "--", "true")
    assert r.returncode == 0
    # no lock left on it: an exclusive non-blocking flock now succeeds
    import fcntl

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# --- bad input: every one gives a one-line error, a hint, a sysexits code --------------------

def test_missing_path(tmp_path: Path) -> None:
    assert_clean_error(hm("run", "--hold", str(tmp_path / "nope"), "--", "true"), 66,
                       f"holdmount: open({tmp_path}/nope): No such file or directory")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(hm("run", "--hold", str(f), "--", "true"), 65,
                       f"holdmount: open({f}): Not a directory")


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    assert_clean_error(hm("run", "--hold", str(link), "--", "true"), 66,
                       f"holdmount: open({link}): No such file or directory")


@pytest.mark.real  # a real component: must not skip in CI
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_permission_denied(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    r = subprocess.run([*NOBODY, *HM, "run", "--hold", str(secret), "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert_clean_error(r, 77, f"holdmount: open({secret}): Permission denied")


def test_command_not_run_when_a_hold_fails(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    r = hm("run", "--hold", str(tmp_path), "--hold", str(tmp_path / "nope"), "--",
           "touch", str(marker))
    assert r.returncode == 66
    assert not marker.exists()


def test_empty_command(tmp_path: Path) -> None:
    assert_clean_error(hm("run", "--hold", str(tmp_path)), 64, "holdmount: run: no command given")
    assert_clean_error(hm("run", "--hold", str(tmp_path), "--"), 64,
                       "holdmount: run: no command given")


def test_unknown_option(tmp_path: Path) -> None:
    assert_clean_error(hm("run", "--frobnicate", "--hold", str(tmp_path), "true"), 64,
                       "holdmount: run: unrecognized arguments: --frobnicate")


def test_command_not_found(tmp_path: Path) -> None:
    assert_clean_error(hm("run", "--hold", str(tmp_path), "--", "no-such-command-xyz"), 127,
                       "holdmount: execvp(no-such-command-xyz): No such file or directory")


def test_bad_trigger_timeout(tmp_path: Path) -> None:
    assert_clean_error(hm("run", "--trigger-timeout", "soon", "--hold", str(tmp_path), "true"),
                       64, "holdmount: run: argument --trigger-timeout: invalid time span")


def test_debug_shows_traceback_only_with_debug(tmp_path: Path) -> None:
    r = hm("--debug", "run", "--hold", str(tmp_path / "nope"), "--", "true")
    assert r.returncode == 66
    assert "Traceback" in r.stderr
