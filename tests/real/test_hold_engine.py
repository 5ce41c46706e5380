"""The hold engine itself: batches, verification, bounded triggers, no fd leaks."""

from __future__ import annotations

import errno
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


SHARED_HELPER = textwrap.dedent("""
    import json, os, signal, sys, time
    from holdmount import hold, trigger
    mp, cold, automount_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    first = trigger.start()
    [h] = hold.take([mp])
    out = {"held": [h.info.automount, h.info.fstype, trigger.helper_pid() == first]}
    # it answered, so it is in its loop; it closes its copy of the fd just after sending it
    for _ in range(500):
        out["fds"] = sorted(os.listdir(f"/proc/{first}/fd"))
        if len(out["fds"]) <= 4:
            break
        time.sleep(0.01)
    h.release()
    if automount_pid:
        os.kill(automount_pid, signal.SIGSTOP)
        [f] = hold.take_each([cold], timeout=1.0)  # never mounted yet: asks the daemon
        out["hung"] = [type(f).__name__, int(getattr(f, "code", 0))]
        try:
            os.kill(first, 0)
            out["first_alive"] = True
        except ProcessLookupError:
            out["first_alive"] = False
        os.kill(automount_pid, signal.SIGCONT)
        [h] = hold.take([cold], timeout=30.0)
        out["again"] = [h.info.automount, trigger.helper_pid() not in (None, first)]
        h.release()
    trigger.stop()
    out["stopped"] = trigger.helper_pid()
    print(json.dumps(out))
""")


@pytest.mark.real
def test_staged_hold_through_the_long_lived_helper(autofs: AutofsLab) -> None:
    """trigger.start(): holds are taken by one long-lived helper that keeps no fd but its
    socket and stdio (a copy of a held fd would keep the mount busy after a release)."""
    r = autofs.py(SHARED_HELPER, autofs.mp["a"], "", "0")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["fds"]) == 4, out  # stdio and its socket
    assert out["held"] == [True, "tmpfs", True]
    assert out["stopped"] is None


@pytest.mark.real
def test_hung_trigger_kills_and_reforks_the_long_lived_helper(
        autofs_factory: Callable[..., AutofsLab]) -> None:
    """A stopped automount daemon: the trigger misses its deadline (exit code 75 failure), the
    helper stuck in open() is ended by SIGKILL, a new one is forked, and once the automount
    daemon runs again the next trigger through the new helper mounts."""
    lab = autofs_factory({"a": DEFAULT_ENTRY, "b": DEFAULT_ENTRY})
    try:
        r = lab.py(SHARED_HELPER, lab.mp["a"], lab.mp["b"], str(lab.pid))
    finally:
        os.kill(lab.pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["hung"] == ["Failure", int(hold.Exit.TEMPFAIL)]
    assert out["first_alive"] is False
    assert out["again"] == [True, True]


def test_one_shot_helper_when_none_was_started(tmp_path: Path) -> None:
    """Without trigger.start() each batch forks a helper that ends with the batch."""
    from holdmount import trigger

    def children() -> set[str]:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return set(f.read().split())

    assert trigger.helper_pid() is None
    before = children()
    holds = hold.take([str(tmp_path)])
    assert trigger.helper_pid() is None
    hold.release_all(holds)
    assert children() == before  # the helper ended and was reaped (no zombie either)


def test_long_batch_spans_several_requests(tmp_path: Path) -> None:
    """More path bytes than one request carries: the batch goes in pieces, answers in order."""
    from holdmount import trigger

    long = tmp_path / ("x" * 200)
    long.mkdir()
    paths = [str(long)] * 400 + [str(tmp_path / "missing")] + [str(tmp_path)]
    trigger.start()
    try:
        results = trigger.open_dirs(paths, timeout=10.0)
    finally:
        trigger.stop()
    assert [isinstance(r, int) for r in results] == [True] * 400 + [False, True]
    assert isinstance(results[400], OSError) and results[400].errno == errno.ENOENT
    for r in results:
        if isinstance(r, int):
            os.close(r)


def test_long_lived_helper_killed_by_someone_else_is_replaced(tmp_path: Path) -> None:
    """The OOM killer or a stray kill ends the long-lived helper between batches: the next
    batch finds out, forks a new one and still gets its answers (no false timeout)."""
    from holdmount import trigger

    first = trigger.start()
    try:
        os.kill(first, signal.SIGKILL)  # left a zombie: the engine reaps it when it finds out
        results = trigger.open_dirs([str(tmp_path), str(tmp_path)], timeout=10.0)
        assert all(isinstance(r, int) for r in results), results
        assert trigger.helper_pid() not in (None, first)
        for r in results:
            os.close(r)  # type: ignore[arg-type]
    finally:
        trigger.stop()
