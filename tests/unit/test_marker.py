"""The marker watch: creation, rename into place, deletion, parents appearing and vanishing."""

from __future__ import annotations

import os
from pathlib import Path

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
