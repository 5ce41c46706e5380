"""The pieces under merge's guarantees: resolving below a directory fd without following a
symlink (openat2, and the per-component fallback for kernels before 5.6), the entry checks, and
the lock directory's ownership check."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from holdmount import syscalls
from holdmount.errors import Exit, Failure
from holdmount.merge import lock, merge_tree
from holdmount.merge.tree import DIR_FLAGS, Tree


@pytest.fixture(params=["openat2", "fallback"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":  # what a kernel without openat2 (ENOSYS) gets
        monkeypatch.setattr(syscalls, "_openat2_works", False)
    return str(request.param)


def test_open_beneath_follows_no_symlink(tmp_path: Path, resolver: str) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink("../outside", tmp_path / "a/link")
    os.symlink("b", tmp_path / "a/inner")
    root = os.open(tmp_path / "a", DIR_FLAGS)
    try:
        fd = syscalls.open_beneath(root, "b", DIR_FLAGS)
        assert os.fstat(fd).st_ino == os.stat(tmp_path / "a/b").st_ino
        os.close(fd)
        # a symlink met with O_DIRECTORY | O_NOFOLLOW: ENOTDIR or ELOOP (openat2 and 6.18's
        # openat differ by case); either way it is not followed
        sym = (errno.ELOOP, errno.ENOTDIR)
        for path, codes in (("link", sym), ("inner", sym), ("link/x", sym),
                            ("../outside", (errno.EXDEV,)), ("b/../../outside", (errno.EXDEV,))):
            with pytest.raises(OSError) as exc:
                syscalls.open_beneath(root, path, DIR_FLAGS)
            assert exc.value.errno in codes, (resolver, path, exc.value)
    finally:
        os.close(root)


def test_open_dir_names_a_swapped_directory(tmp_path: Path, resolver: str) -> None:
    (tmp_path / "t/d").mkdir(parents=True)
    want = os.stat(tmp_path / "t/d")
    tree = Tree(str(tmp_path / "t"), os.open(tmp_path / "t", DIR_FLAGS))
    try:
        os.close(tree.open_dir("d", (want.st_dev, want.st_ino)))
        os.rename(tmp_path / "t/d", tmp_path / "t/was")
        (tmp_path / "t/d").mkdir()  # another directory by the same name
        with pytest.raises(Failure) as exc:
            tree.open_dir("d", (want.st_dev, want.st_ino))
        assert exc.value.code == Exit.TEMPFAIL
        assert exc.value.message == (f"merge({tmp_path}/t/d): changed while the merge ran "
                                     "(another inode than planned)")
        os.rmdir(tmp_path / "t/d")
        os.symlink("was", tmp_path / "t/d")
        with pytest.raises(Failure) as exc:
            tree.open_dir("d", (want.st_dev, want.st_ino))
        assert exc.value.message.startswith(f"merge({tmp_path}/t/d): changed while the merge "
                                            "ran (planned a directory: ")
    finally:
        os.close(tree.fd)


def test_merge_with_the_fallback_resolver(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "_openat2_works", False)
    staged = tmp_path / "staged"
    (staged / "a/b").mkdir(parents=True)
    (staged / "a/b/f").write_text("deep\n")
    os.link(staged / "a/b/f", staged / "a/g")
    merge_tree(staged, tmp_path / "dest")
    assert (tmp_path / "dest/a/b/f").read_text() == "deep\n"
    assert os.stat(tmp_path / "dest/a/g").st_ino == os.stat(tmp_path / "dest/a/b/f").st_ino


def test_lock_dir_must_be_roots_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("root's lock directory")
    (tmp_path / "run/holdmount").mkdir(parents=True)
    os.chmod(tmp_path / "run/holdmount", 0o775)  # group-writable: someone else could swap it
    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path / "run/holdmount/merge"))
    (tmp_path / "dest").mkdir()
    fd = os.open(tmp_path / "dest", DIR_FLAGS)
    try:
        with pytest.raises(Failure) as exc:
            lock.take(fd, str(tmp_path / "dest"))
    finally:
        os.close(fd)
    assert exc.value.code == Exit.NOPERM
    assert exc.value.message == (f"merge({tmp_path}/run/holdmount): the merge lock directory "
                                 "is not root's alone (owner 0, mode 0775)")
    assert "remove" in (exc.value.hint or "")


def test_hardlinked_symlinks_and_fifos_stay_linked(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    os.symlink("target", staged / "s1")
    os.link(staged / "s1", staged / "s2", follow_symlinks=False)
    os.mkfifo(staged / "p1")
    os.link(staged / "p1", staged / "p2")
    merge_tree(staged, dest)
    for a, b in (("s1", "s2"), ("p1", "p2")):
        assert os.lstat(dest / a).st_ino == os.lstat(dest / b).st_ino
        assert os.lstat(dest / a).st_ino != os.lstat(staged / a).st_ino
    assert os.readlink(dest / "s2") == "target"
