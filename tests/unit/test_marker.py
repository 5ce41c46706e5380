"""The marker watch: creation, rename into place, deletion, parents appearing and vanishing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from holdmount import syscalls
from holdmount.marker import MarkerWatch


def settle(w: MarkerWatch) -> bool:
    w.handle()
    return w.armed


def test_create_rename_delete(tmp_path: Path) -> None:
    marker = tmp_path / "staged"
    w = MarkerWatch(str(marker))
    try:
        assert w.watched == str(tmp_path) and not w.armed
        marker.touch()
        assert w.handle() is True and w.armed
        marker.unlink()
        assert w.handle() is True and not w.armed
        (tmp_path / "tmp").write_text("x")
        (tmp_path / "tmp").rename(marker)
        assert settle(w)
        os.unlink(marker)
        os.symlink("/nonexistent", marker)  # a dangling symlink is a present marker (lstat)
        assert settle(w)
        assert w.handle() is False  # nothing changed
    finally:
        w.close()


def test_parent_appears_later_and_vanishes(tmp_path: Path) -> None:
    marker = tmp_path / "a" / "b" / "c" / "staged"
    w = MarkerWatch(str(marker))
    try:
        assert w.watched == str(tmp_path)
        (tmp_path / "a" / "b").mkdir(parents=True)
        w.handle()
        assert w.watched == str(tmp_path / "a" / "b")
        (tmp_path / "a" / "b" / "c").mkdir()
        marker.touch()  # created before we read the events: still seen
        assert settle(w) and w.watched == str(marker.parent)
        marker.unlink()
        marker.parent.rmdir()
        assert not settle(w) and w.watched == str(tmp_path / "a" / "b")
        os.rename(tmp_path / "a", tmp_path / "z")  # an ancestor moves away
        w.handle()
        assert w.watched == str(tmp_path)
        os.makedirs(marker.parent)
        marker.touch()
        assert settle(w)
    finally:
        w.close()


def test_no_fd_growth(tmp_path: Path) -> None:
    marker = tmp_path / "d" / "staged"
    before = len(os.listdir("/proc/self/fd"))
    w = MarkerWatch(str(marker))
    for _ in range(500):
        marker.parent.mkdir()
        marker.touch()
        w.handle()
        marker.unlink()
        marker.parent.rmdir()
        w.handle()
    assert len(os.listdir("/proc/self/fd")) == before + 1
    w.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_non_utf8_names(tmp_path: Path) -> None:
    """Names that are not UTF-8 — beside the marker, and in the marker's own path — are events
    like any other (decoded as os.listdir does), never a crash."""
    parent = os.path.join(os.fsencode(tmp_path), b"dir-\xff")
    marker = os.fsdecode(os.path.join(parent, b"staged-\xfe"))
    w = MarkerWatch(marker)
    try:
        assert w.watched == str(tmp_path)
        os.mkdir(parent)
        open(os.path.join(parent, b"other-\xc3\x28"), "w").close()
        w.handle()
        assert w.watched == os.fsdecode(parent) and not w.armed
        open(os.fsencode(marker), "w").close()
        assert w.handle() is True and w.armed
    finally:
        w.close()
        w.close()  # closing twice is harmless


def test_inotify_events_raw(tmp_path: Path) -> None:
    """syscalls.inotify_read returns every pending event with its name, [] when none."""
    fd = syscalls.inotify_init()
    try:
        wd = syscalls.inotify_add_watch(fd, str(tmp_path), syscalls.IN_CREATE
                                        | syscalls.IN_DELETE)
        assert syscalls.inotify_read(fd) == []
        names = [b"a", b"b" * 255, b"\xff\xfe"]
        for name in names:
            open(os.path.join(os.fsencode(tmp_path), name), "w").close()
        os.unlink(tmp_path / "a")
        events = syscalls.inotify_read(fd)
        assert [(e[0], e[1], os.fsencode(e[2])) for e in events] == \
            [(wd, syscalls.IN_CREATE, n) for n in names] + [(wd, syscalls.IN_DELETE, b"a")]
        syscalls.inotify_rm_watch(fd, wd)
        assert syscalls.inotify_read(fd) == [(wd, syscalls.IN_IGNORED, "")]
        with pytest.raises(OSError) as err:
            syscalls.inotify_rm_watch(fd, wd)
        assert err.value.errno == errno.EINVAL
        with pytest.raises(OSError) as err:
            syscalls.inotify_add_watch(fd, str(tmp_path / "missing"), syscalls.IN_CREATE)
        assert err.value.errno == errno.ENOENT
    finally:
        os.close(fd)


def test_queue_overflow_still_decides_from_filesystem(tmp_path: Path) -> None:
    """More events than the kernel queues (fs.inotify.max_queued_events): an IN_Q_OVERFLOW
    event arrives (wd -1) and the state is still read from the filesystem."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to overflow it here")
    marker = tmp_path / "staged"
    w = MarkerWatch(str(marker))
    try:
        for i in range(limit + 10):
            os.mkdir(tmp_path / f"n{i}")
        marker.touch()
        fd_events = syscalls.inotify_read(w.fileno())
        assert fd_events[-1][:2] == (-1, syscalls.IN_Q_OVERFLOW)
        assert w.handle() is True and w.armed
    finally:
        w.close()


def test_no_ctypes_util_or_inotify_simple() -> None:
    """The watch must not load ctypes.util (it forks ldconfig) nor the inotify_simple package."""
    code = ("import sys, holdmount.marker; "
            "print(sorted({'ctypes.util', 'inotify_simple', 'subprocess'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
