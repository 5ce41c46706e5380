"""The hold engine itself: batches, verification, bounded triggers, no fd leaks."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from autofs import DEFAULT_ENTRY, AutofsLab

from holdmount import hold


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_batch_of_plain_directories_no_leak(tmp_path: Path) -> None:
    dirs = []
    for i in range(1000):
        d = tmp_path / f"d{i}"
        d.mkdir()
        dirs.append(str(d))
    before = open_fds()
    holds = hold.take(dirs)
    assert [h.info.path for h in holds] == dirs
    assert all(not h.info.automount and h.info.fstype for h in holds)
    assert len({h.fd for h in holds}) == 1000
    assert all(os.get_inheritable(h.fd) is False for h in holds)
    hold.release_all(holds)
    assert open_fds() == before


def test_all_or_nothing(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(hold.Failure) as e:
        hold.take([str(tmp_path), str(tmp_path / "missing"), str(tmp_path)])
    assert e.value.message == f"open({tmp_path}/missing): No such file or directory"
    assert open_fds() == before


@pytest.mark.real
def test_automount_hold_describes_the_real_fs(autofs: AutofsLab) -> None:
    code = textwrap.dedent("""
        import json, sys
        from holdmount import hold
        [h] = hold.take([sys.argv[1]])
        print(json.dumps(h.info.as_dict()))
    """)
    r = autofs.py(code, autofs.mp["a"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["automount"] is True
    assert info["fstype"] == "tmpfs" and info["source"] == "tmpfs"
    assert info["mount_point"] == autofs.mp["a"]


@pytest.mark.real
def test_hung_trigger_does_not_block_the_rest(
        autofs_factory: Callable[..., AutofsLab], tmp_path: Path) -> None:
    """One stopped automount daemon: its path times out, the paths after it are still held."""
    lab = autofs_factory({"a": DEFAULT_ENTRY, "b": DEFAULT_ENTRY})
    tmp_path.chmod(0o755)
    code = textwrap.dedent("""
        import sys
        from holdmount import hold
        results = hold.open_dirs(sys.argv[1:], timeout=1.0)
        print([type(r).__name__ if isinstance(r, OSError) else "fd" for r in results])
    """)
    os.kill(lab.pid, signal.SIGSTOP)
    try:
        r = lab.py(code, str(tmp_path), lab.mp["a"], str(tmp_path))
    finally:
        os.kill(lab.pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['fd', 'TimeoutError', 'fd']"
