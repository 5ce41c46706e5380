"""What a user reads: each message of issue 16 names the right cause (each test failed on the
code before the fix), `--debug` anywhere, and no heavy import (secrets) in the run path."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_holdmount as hm
from daemon_harness import DaemonProc

from holdmount import hold

REPO = Path(__file__).resolve().parents[2]


def two_lines(r: subprocess.CompletedProcess[str], code: int) -> tuple[str, str]:
    """The error format: one line of what failed, one hint, the code, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: "), r.stderr
    return lines[0], lines[1]


# --- daemon --check and the configuration ------------------------------------------------------

def test_check_missing_config_names_the_path_not_permissions(tmp_path: Path) -> None:
    first, hint = two_lines(hm("daemon", "--check", "--config", str(tmp_path / "no.toml")), 78)
    assert first == f"holdmount: config({tmp_path / 'no.toml'}): No such file or directory"
    assert "--config" in hint and "permission" not in hint


def test_check_config_directory_hint(tmp_path: Path) -> None:
    first, hint = two_lines(hm("daemon", "--check", "--config", str(tmp_path)), 78)
    assert first.endswith("Is a directory")
    assert "names a file" in hint and "permission" not in hint


def test_check_hint_is_not_self_referential(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[action]]\nname = "x"\nexec = "/bin/true"\n')
    _, hint = two_lines(hm("daemon", "--check", "--config", str(bad)), 78)
    assert "--check" not in hint and "holdmount.toml(5)" in hint
    # elsewhere (report loads the same config) pointing at --check is the useful hint
    _, hint = two_lines(hm("report", "--config", str(bad)), 78)
    assert "holdmount daemon --check" in hint


def test_entries_are_named_the_same_way_everywhere(tmp_path: Path) -> None:
    """A type error (read per file) and a missing key (found after merging) name `x` alike."""
    bad = tmp_path / "a.toml"
    bad.write_text('[[action]]\nname = "x"\nexec = "/bin/true"\n')
    first, _ = two_lines(hm("daemon", "--check", "--config", str(bad)), 78)
    assert f"config({bad}): action[x].exec: must be a list" in first
    bad.write_text('[[action]]\nname = "x"\n')
    first, _ = two_lines(hm("daemon", "--check", "--config", str(bad)), 78)
    assert f"config({bad}): action[x].exec: missing" in first
    bad.write_text('[[hold]]\npath = "/boot"\nprotect = "yes"\n')
    first, _ = two_lines(hm("daemon", "--check", "--config", str(bad)), 78)
    assert "hold[/boot].protect:" in first


# --- run ----------------------------------------------------------------------------------------

def test_symlink_loop_has_a_hint(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    first, hint = two_lines(hm("run", "--hold", str(tmp_path / "a"), "--", "true"), 65)
    assert first == f"holdmount: open({tmp_path / 'a'}): Too many levels of symbolic links"
    assert "loop" in hint


def test_trigger_timeout_zero_is_a_usage_error_not_autofs(tmp_path: Path) -> None:
    first, _ = two_lines(hm("run", "--hold", str(tmp_path), "--trigger-timeout", "0", "--",
                            "true"), 64)
    assert "--trigger-timeout: '0': must be more than 0" in first
    assert "automount" not in first


def test_timeout_on_a_plain_directory_does_not_blame_autofs(tmp_path: Path) -> None:
    """The message for a path with no autofs trigger above it (e.g. a hung NFS directory)."""
    failure = hold._explain(str(tmp_path), TimeoutError(errno.ETIMEDOUT, "no answer"), 0.5)
    assert failure.message == f"open({tmp_path}): no answer within 0.5s"
    assert failure.hint is not None and "autofs" not in failure.hint
    assert "automount" not in failure.message + failure.hint


def test_require_writable_on_proc_is_not_a_dangling_symlink() -> None:
    first, hint = two_lines(hm("run", "--hold", "/proc", "--require-writable", "--", "true"), 73)
    assert first.startswith("holdmount: open(/proc/.holdmount-probe.")
    assert "symlink" not in hint and "does not let anyone create files" in hint


def test_checks_do_not_import_secrets() -> None:
    """secrets pulls in OpenSSL's libcrypto (+4.5 MiB) for a probe name."""
    r = subprocess.run([sys.executable, "-c", "import sys, holdmount.checks; "
                        "print('secrets' in sys.modules, 'hashlib' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


# --- release, report, --debug -------------------------------------------------------------------

def test_release_twice_has_a_hint(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        env.update(HOLDMOUNT_SOCKET=d.socket, PYTHONPATH=str(REPO))
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            r = hm("hold", str(held), "--until-pid", str(sleeper.pid), env=env)
            assert r.returncode == 0, r.stderr
            r = hm("release", str(held), env=env)
            assert r.returncode == 0 and r.stdout == f"released {held}\n", r.stderr
            first, hint = two_lines(hm("release", str(held), env=env), 66)
        finally:
            sleeper.kill()
            sleeper.wait()
    assert first == f"holdmount: release {held}: no delegated hold of yours on it"
    assert "released already" in hint and "holdmount status" in hint


def test_report_refuses_a_file_that_is_not_a_stamp() -> None:
    r = hm("report", "--stamp", "/etc/passwd")
    first, hint = two_lines(r, 65)
    assert first == "holdmount: read(/etc/passwd): not a holdmount failure stamp (not JSON)"
    assert "root:" not in r.stdout + r.stderr and "--stamp" in hint


@pytest.mark.parametrize(("argv", "code"), [
    (["--debug", "report", "--stamp", "/etc/passwd"], 65),
    (["report", "--debug", "--stamp", "/etc/passwd"], 65),
    (["report", "--stamp", "/etc/passwd", "--debug"], 65),
    (["daemon", "--check", "--debug", "--config", "/nonexistent.toml"], 78),
])
def test_debug_anywhere_and_the_failure_comes_first(argv: list[str], code: int) -> None:
    r = hm(*argv)
    assert r.returncode == code, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("holdmount: ") and lines[1].startswith("hint: "), r.stderr
    assert "Traceback (most recent call last):" in r.stderr
    assert not r.stderr.startswith("error: failure")


def test_debug_after_the_command_belongs_to_the_command(tmp_path: Path) -> None:
    r = hm("run", "--hold", str(tmp_path), "--", "echo", "--debug")
    assert r.returncode == 0 and r.stdout == "--debug\n" and r.stderr == "", r.stderr


# --- the audit: hints that named the wrong cause -------------------------------------------------

def test_exec_of_a_non_program_is_not_a_path_problem(tmp_path: Path) -> None:
    first, hint = two_lines(hm("run", "--", str(tmp_path)), 126)
    assert first.endswith("Permission denied") and "PATH" not in hint and "directory" in hint
    script = tmp_path / "script"
    script.write_text("echo no shebang\n")
    script.chmod(0o755)
    first, hint = two_lines(hm("run", "--", str(script)), 126)
    assert first.endswith("Exec format error") and "#!" in hint


@pytest.mark.parametrize(("stamp", "why"), [("", "not its directory"),
                                            ("file/x", "part of the stamp's path is a file")])
def test_stamp_path_mistakes_speak_of_the_stamp(tmp_path: Path, stamp: str, why: str) -> None:
    (tmp_path / "file").write_text("")
    first, hint = two_lines(hm("report", "--stamp", str(tmp_path / stamp)), 65)
    assert first.startswith(f"holdmount: open({tmp_path / stamp}".rstrip("/"))
    assert why in hint and "holdmount holds directories" not in hint
