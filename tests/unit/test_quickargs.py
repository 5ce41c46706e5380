"""holdmount.quickargs reads `daemon`, `run`, `status` and `overlay changes` exactly as argparse
(holdmount.cli) does, and leaves every other command line — and every usage error — to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from holdmount import cli, quickargs

TAKEN = [
    ["daemon"], ["--debug", "daemon", "--check"],
    ["daemon", "--config", "a.toml", "--config=b.toml", "--no-config", "--hold", "/x"],
    ["daemon", "--allow-foreign-namespace", "--hold=/y", "--debug"],
    ["run", "--hold", "/x", "--", "true"], ["run", "true"], ["run", "--", "-x", "a"],
    ["run", "--hold=/x", "--hold", "/y", "--protect", "--require-writable", "--require-exec",
     "--trigger-timeout", "1min 5s", "--delegate=never", "echo", "--hold", "--", "-x"],
    ["--debug", "run", "--debug", "--trigger-timeout=500ms", "--delegate", "always", "cmd"],
    ["status"], ["status", "--json", "--socket", "/s"], ["--debug", "status", "--socket=/s"],
    ["overlay", "changes", "/m"], ["overlay", "changes", "--json", "/m", "--debug"],
]
LEFT = [
    [], ["--help"], ["run", "--help"], ["run", "--hol", "/x", "true"], ["run", "--hold"],
    ["run", "--hold", "/x"], ["run", "--hold", "/x", "--"], ["run", "--trigger-timeout", "0", "x"],
    ["run", "--trigger-timeout", "soon", "x"], ["run", "--delegate", "maybe", "x"],
    ["run", "--protect=yes", "x"], ["status", "x"], ["status", "--socket"],
    ["overlay", "changes"], ["overlay", "changes", "/a", "/b"], ["overlay", "changes", "-q"],
    ["daemon", "--check=1"], ["daemon", "--config", "--no-config"], ["daemon", "extra"],
    ["doctor", "/x"], ["merge", "a", "b"], ["--version"], ["report"],
]
ATTRS = {"daemon": ("config", "no_config", "hold", "allow_foreign_namespace", "check"),
         "run": ("hold", "protect", "require_writable", "require_exec", "trigger_timeout",
                 "delegate"),
         "status": ("json", "socket"), "changes": ("merged", "json")}


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_taken_as_argparse_reads_it(argv: list[str]) -> None:
    quick = quickargs.parse(argv)
    assert quick is not None
    full = cli.parse(argv)
    assert bool(quick.debug) == bool(full.debug)
    for attr in ATTRS[quick.verb]:
        assert getattr(quick, attr) == (getattr(full, attr) or ([] if attr == "config" else
                                                                getattr(full, attr))), attr
    if quick.verb == "run":
        command = list(full.command)
        assert quick.command == (command[1:] if command[:1] == ["--"] else command)


@pytest.mark.parametrize("argv", LEFT, ids=" ".join)
def test_left_to_argparse(argv: list[str]) -> None:
    assert quickargs.parse(argv) is None


def test_usage_error_still_argparse_s() -> None:
    """A bad value on a verb the reader knows: argparse's message and EX_USAGE (64)."""
    r = subprocess.run([sys.executable, "-m", "holdmount", "run", "--delegate", "maybe", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr
    assert r.stderr.startswith("holdmount: run: argument --delegate: invalid choice: 'maybe'")
