"""Issue 12, configuration side: limits that keep a bad file a configuration error (exit 78,
naming file and key, never 70: systemd restarts a 70), and `daemon --check`, which verifies
what the daemon will rely on at shutdown and reports every error, not the first."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import holdmount_cmd

from holdmount import config

HM = holdmount_cmd()


def daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HM, "daemon", "--allow-foreign-namespace", *args],
                          capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, "HOLDMOUNT_SOCKET": "/nonexistent/control"})


@pytest.mark.parametrize("shape", ["array", "inline-table"])
@pytest.mark.parametrize("check", [True, False])
def test_deep_nesting_is_a_config_error(tmp_path: Path, shape: str, check: bool) -> None:
    deep = "[" * 3000 + "]" * 3000 if shape == "array" else "{a = " * 3000 + "}" * 3000
    f = tmp_path / "deep.toml"
    f.write_text(f'# a comment with [[[ brackets\n[[hold]]\npath = "/x[" \nwhen = {deep}\n')
    r = daemon(*(["--check"] if check else []), "--config", str(f))
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines() == [
        f"holdmount: config({f}): hold.when: nested more than {config.MAX_NESTING} arrays or "
        "tables deep (line 4)",
        "hint: fix the key named above (holdmount.toml(5) lists every key), then check again"
        if check else "hint: fix the file; `holdmount daemon --check` validates it"], r.stderr


def test_nesting_up_to_the_limit_is_parsed() -> None:
    ok = "[" * config.MAX_NESTING + "]" * config.MAX_NESTING
    with pytest.raises(config.Failure) as exc:  # parsed: the error is about the value's type
        config.loads(f'[[hold]]\npath = "/x"\nwhen = {ok}\n', name="f")
    assert exc.value.message.startswith("config(f): hold[/x].when: must be a string, not an "
                                        "array [[[["), exc.value.message


def test_big_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "big.toml"
    f.write_text("# padding\n" * (config.MAX_FILE_SIZE // 10 + 1))
    r = daemon("--check", "--config", str(f))
    assert r.returncode == 78
    assert r.stderr.splitlines()[0] == \
        f"holdmount: config({f}): larger than {config.MAX_FILE_SIZE} bytes"


def test_check_reports_every_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    f = tmp_path / "c.toml"
    f.write_text(f'''
[control]
group = "holdmount-no-such-group"
[[hold]]
path = "/tmp/a\\nb"
[[hold]]
path = "/tmp/fine"
[[action]]
name = "missing"
exec = ["/nonexistent/program"]
when = "always"
[[action]]
name = "notexec"
exec = ["{plain}"]
when = "always"
[[action]]
name = "dir"
exec = ["/usr"]
when = "always"
[[action]]
name = "relative"
exec = ["true"]
when = "always"
''')
    r = daemon("--check", "--config", str(f))
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines() == [
        f"holdmount: config({f}): hold[1].path: contains a control character ('\\n'): "
        "'/tmp/a\\nb'",
        f"holdmount: config({f}): action[relative].exec: the program must be an absolute path, not "
        "'true'",
        f"holdmount: config({f}): control.group: getgrnam(holdmount-no-such-group): no such "
        "group",
        f"holdmount: config({f}): action[missing].exec: stat(/nonexistent/program): No such "
        "file or directory",
        f"holdmount: config({f}): action[notexec].exec: {plain}: not an executable file",
        f"holdmount: config({f}): action[dir].exec: /usr: not an executable file",
        "hint: fix the key named above (holdmount.toml(5) lists every key), then check again",
    ], r.stderr
    # the daemon itself refuses the same file on what it parses (the first error first)
    r = daemon("--config", str(f))
    assert r.returncode == 78
    assert r.stderr.splitlines()[0].endswith("hold[1].path: contains a control character "
                                             "('\\n'): '/tmp/a\\nb'")


def test_check_accepts_what_the_system_has(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[control]\ngroup = "root"\n[[action]]\nname = "t"\nexec = ["/bin/true"]\n'
                 'when = "always"\n')
    r = daemon("--check", "--config", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("configuration OK")
