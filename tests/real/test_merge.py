"""`holdmount merge`: copy + rename merge of a staged tree (what, metadata, reruns, bad input)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import merge_nslab as _lab
import pytest
from conftest import holdmount_cmd
from daemon_harness import strict_json
from merge_nslab import NsLab, link_groups, snapshot, temps, walk

from holdmount import merge
from holdmount.errors import Exit, Failure
from holdmount.merge import is_temp_name, merge_tree, temp_name

cgroup = _lab.cgroup  # the shared fixture
nslab = _lab.nslab  # the shared fixture


def make_staged(root: Path) -> None:
    """A small tree with everything merge must carry: modes, owners, xattrs, symlinks,
    hardlinks (across directories), an empty directory, a fifo, set-id bits."""
    (root / "bin").mkdir(parents=True)
    (root / "lib/deep/er").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o4755)
    (root / "lib/data").write_bytes(os.urandom(300_000))
    os.chown(root / "lib/data", 1234, 4321)
    os.setxattr(root / "lib/data", "user.origin", b"staged")
    os.setxattr(root / "lib/data", "trusted.note", b"t")
    (root / "lib/deep/er/one").write_text("one\n")
    os.link(root / "lib/deep/er/one", root / "bin/one-link")
    os.link(root / "lib/deep/er/one", root / "lib/one-again")
    os.symlink("../lib/data", root / "bin/data-link")
    os.symlink("/nonexistent/target", root / "lib/dangling")
    os.mkfifo(root / "lib/fifo", 0o640)
    os.chmod(root / "lib/deep", 0o750)
    os.chown(root / "lib/deep", 55, 66)
    os.setxattr(root / "lib/deep", "user.dir", b"d")
    os.utime(root / "lib/deep/er/one", ns=(1_000_000_000, 2_000_000_000))


def assert_equal_trees(staged: Path, dest: Path) -> None:
    assert snapshot(dest, times=True) == snapshot(staged, times=True)
    assert link_groups(dest) == link_groups(staged)
    assert [t for t in temps(dest) if not os.path.lexists(staged / t)] == []
    staged_inodes = {(st.st_dev, st.st_ino) for _, st in walk(staged)}
    assert not staged_inodes & {(st.st_dev, st.st_ino) for _, st in walk(dest)}


def test_merge_into_new_dest_copies_everything(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    s = merge_tree(staged, dest)
    assert_equal_trees(staged, dest)
    # directory times are set after filling them
    assert os.lstat(dest / "lib/deep").st_mtime_ns == os.lstat(staged / "lib/deep").st_mtime_ns
    assert set(s.added) == {".", *(rel for rel, _ in walk(staged))}
    assert s.replaced == () and s.unchanged == () and s.removed_temp == ()
    again = merge_tree(staged, dest)
    assert again.added == () and again.replaced == ()
    assert set(again.unchanged) == set(s.added)


def test_merge_replaces_changed_keeps_extra(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    merge_tree(staged, dest)
    (dest / "mine").write_text("not in staged\n")
    (staged / "bin/tool").write_bytes(b"#!/bin/sh\necho v2\n")
    os.chmod(staged / "bin/tool", 0o755)
    os.chmod(staged / "lib/data", 0o600)  # metadata only
    os.unlink(staged / "bin/data-link")
    os.symlink("elsewhere", staged / "bin/data-link")
    (staged / "bin/new").write_text("new\n")
    old_tool = os.lstat(dest / "bin/tool").st_ino
    s = merge_tree(staged, dest)
    assert set(s.replaced) >= {"bin/tool", "lib/data", "bin/data-link"}
    assert "bin/new" in s.added
    assert "lib/deep/er/one" in s.unchanged and "bin/one-link" in s.unchanged
    assert os.lstat(dest / "bin/tool").st_ino != old_tool  # a new inode, renamed in
    assert (dest / "mine").read_text() == "not in staged\n"
    os.unlink(dest / "mine")
    assert_equal_trees(staged, dest)


def test_hardlinks_in_dest_not_in_staged_are_split(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    dest.mkdir()
    for d in (staged, dest):
        (d / "a").write_text("same\n")
        os.utime(d / "a", ns=(5, 5))
    os.link(dest / "a", dest / "b")
    shutil.copy2(staged / "a", staged / "b")
    os.utime(staged / "b", ns=(5, 5))
    s = merge_tree(staged, dest)
    assert s.unchanged.count("a") + s.unchanged.count("b") == 1
    assert link_groups(dest) == set()
    assert_equal_trees(staged, dest)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    merge_tree(staged, dest)
    (staged / "bin/tool").write_text("v3\n")
    (staged / "added").write_text("x\n")
    (dest / "bin" / temp_name("tool")).write_text("leftover\n")
    before = snapshot(dest, times=True)
    s = merge_tree(staged, dest, dry_run=True)
    assert s.dry_run and s.added == ("added",) and "bin/tool" in s.replaced
    assert len(s.removed_temp) == 1
    assert snapshot(dest, times=True) == before


def test_rerun_removes_leftover_temps_only(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    # a staged file that merely looks like a temp file is content, not litter
    looks_like = ".holdmount-merge.x.0123abcd"
    assert is_temp_name(looks_like)
    (staged / looks_like).write_text("real content\n")
    merge_tree(staged, dest)
    litter = dest / "lib/deep" / temp_name("er")
    litter.write_text("half a file")
    link_litter = dest / "bin" / temp_name("data-link")
    os.symlink("x", link_litter)
    s = merge_tree(staged, dest)
    assert sorted(s.removed_temp) == sorted([f"lib/deep/{litter.name}",
                                             f"bin/{link_litter.name}"])
    assert (dest / looks_like).read_text() == "real content\n"
    assert_equal_trees(staged, dest)


def test_temp_names_fit_name_max() -> None:
    long = "x" * 255
    t = temp_name(long)
    assert len(os.fsencode(t)) <= 255 and is_temp_name(t)
    assert is_temp_name(temp_name("ä" * 120))
    assert not is_temp_name("prog") and not is_temp_name(".holdmount-merge.x")


# --- the CLI and bad input --------------------------------------------------------------------

def hm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*holdmount_cmd(), *args], capture_output=True, text=True, timeout=60)


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: Exit, call: str,
                          path: Path | str) -> None:
    assert r.returncode == int(code), r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"holdmount: {call}({path}"), r.stderr
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in r.stderr


def test_cli_json(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    r = hm("merge", str(staged), str(dest), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dry_run"] is True and not dest.exists()
    assert out["counts"]["added"] == len(out["added"]) == 1 + len(list(walk(staged)))
    r = hm("merge", str(staged), str(dest), "--json")
    out = json.loads(r.stdout)
    assert out["counts"] == {"added": 1 + len(list(walk(staged))), "replaced": 0,
                             "unchanged": 0, "removed_temp": 0}
    r = hm("merge", str(staged), str(dest))
    assert r.returncode == 0
    assert r.stdout.startswith(f"merged {staged} into {dest}: 0 added, 0 replaced, ")


def test_cli_json_non_utf8_names(tmp_path: Path) -> None:
    import base64

    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    name = b"caf\xe9-\xff"
    with open(os.path.join(os.fsencode(staged), name), "wb") as f:
        f.write(b"x")
    (staged / "plain-é").write_text("y")
    r = subprocess.run([*holdmount_cmd(), "merge", str(staged), str(dest), "--json"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = strict_json(r.stdout)
    assert isinstance(out, dict)
    assert sorted(out["added"]) == sorted([".", "caf\\xe9-\\xff", "plain-é"])
    assert out["non_utf8"] == [{"path": "caf\\xe9-\\xff",
                                "bytes_b64": base64.b64encode(name).decode()}]
    assert os.path.exists(os.path.join(os.fsencode(dest), name))


def test_staged_missing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    r = hm("merge", str(tmp_path / "nope"), str(dest))
    assert_one_line_error(r, Exit.NOINPUT, "merge", tmp_path / "nope")
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("shape", ["file-where-dir-staged", "dir-where-file-staged",
                                   "symlink-where-dir-staged"])
def test_type_conflicts_write_nothing(tmp_path: Path, shape: str) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    merge_tree(staged, dest)
    (staged / "bin/tool").write_text("v2\n")  # would be replaced, if the merge ran
    if shape == "file-where-dir-staged":
        shutil.rmtree(dest / "lib/deep")
        (dest / "lib/deep").write_text("a file\n")
        where = dest / "lib/deep"
    elif shape == "dir-where-file-staged":
        os.unlink(dest / "lib/deep/er/one")
        (dest / "lib/deep/er/one").mkdir()
        where = dest / "lib/deep/er/one"
    else:
        shutil.rmtree(dest / "lib/deep")
        os.symlink("/tmp", dest / "lib/deep")
        where = dest / "lib/deep"
    before = snapshot(dest, times=True)
    r = hm("merge", str(staged), str(dest))
    assert_one_line_error(r, Exit.DATAERR, "merge", where)
    assert snapshot(dest, times=True) == before


def test_dest_inside_staged_refused(tmp_path: Path) -> None:
    make_staged(tmp_path / "s")
    r = hm("merge", str(tmp_path / "s"), str(tmp_path / "s/bin/sub"))
    assert_one_line_error(r, Exit.USAGE, "merge", tmp_path / "s/bin/sub")


@pytest.mark.real
def test_read_only_dest(nslab: NsLab, tmp_path: Path) -> None:
    staged, ro = tmp_path / "staged", tmp_path / "ro"
    make_staged(staged)
    nslab.mount_tmpfs(ro, "size=8m")
    merge_tree(staged, nslab.path(ro / "dest"))
    (staged / "bin/tool").write_text("v2\n")
    nslab.sh(f"mount -o remount,ro '{ro}'")
    before = snapshot(nslab.path(ro / "dest"), times=True)
    r = nslab.hm("merge", str(staged), str(ro / "dest"))
    assert_one_line_error(r, Exit.CANTCREAT, "merge", ro / "dest")
    assert "Read-only file system" in r.stderr
    assert snapshot(nslab.path(ro / "dest"), times=True) == before


@pytest.mark.real
def test_no_space_refused_before_writing(nslab: NsLab, tmp_path: Path) -> None:
    staged, small = tmp_path / "staged", tmp_path / "small"
    make_staged(staged)
    nslab.mount_tmpfs(small, "size=2m")
    merge_tree(staged, nslab.path(small / "dest"))
    (staged / "bin/big").write_bytes(os.urandom(3 << 20))
    (staged / "bin/tool").write_text("v2\n")
    before = snapshot(nslab.path(small / "dest"), times=True)
    r = nslab.hm("merge", str(staged), str(small / "dest"))
    assert_one_line_error(r, Exit.CANTCREAT, "merge", small / "dest")
    assert "No space left on device" in r.stderr
    assert snapshot(nslab.path(small / "dest"), times=True) == before


@pytest.mark.real
def test_no_space_midway_leaves_old_or_new(nslab: NsLab, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight estimate can be wrong (others write too): a mid-merge ENOSPC removes its
    temp file, leaves every file old or new, and a rerun with space completes the merge."""
    staged, small = tmp_path / "staged", tmp_path / "small"
    (staged / "d").mkdir(parents=True)
    old = {f"d/f{i:02}": os.urandom(100_000) for i in range(20)}
    new = {f"d/f{i:02}": os.urandom(100_000) for i in range(45)}  # 20 replaced, 25 added
    nslab.mount_tmpfs(small, "size=4m")
    dest = nslab.path(small / "dest")
    (dest / "d").mkdir(parents=True)
    for k, v in old.items():
        (dest / k).write_bytes(v)
    for k, v in new.items():
        (staged / k).write_bytes(v)
    monkeypatch.setattr(merge.plan, "preflight", lambda dest, dest_fd, plan: None)
    with pytest.raises(Failure) as exc:
        merge_tree(staged, dest)
    assert exc.value.code == Exit.CANTCREAT
    assert "No space left on device" in exc.value.message and "rerun" in (exc.value.hint or "")
    assert temps(dest) == []
    got = {rel: (dest / rel).read_bytes() for rel, st in walk(dest) if stat.S_ISREG(st.st_mode)}
    assert set(old) <= set(got) < set(new)
    assert all(got[k] in (old.get(k), new[k]) for k in got)
    nslab.sh(f"mount -o remount,size=16m '{small}'")
    merge_tree(staged, dest)
    assert_equal_trees(staged, dest)


def test_one_merge_per_dest_at_a_time(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_staged(staged)
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    st = os.fstat(fd)
    lock_file = Path(merge.lock.LOCK_DIR) / f"{st.st_dev}-{st.st_ino}.lock"
    held = merge.lock.take(fd, str(dest))  # what a running merge holds
    try:
        assert lock_file.exists()
        with pytest.raises(Failure) as exc:
            merge_tree(staged, dest)
        assert exc.value.code == Exit.TEMPFAIL
        assert exc.value.message == f"flock({dest}): another merge into DEST is running"
        assert list(dest.iterdir()) == []
    finally:
        held.release()
        os.close(fd)
    assert not lock_file.exists()
    lock_dir = os.lstat(merge.lock.LOCK_DIR)
    assert lock_dir.st_uid == 0 and stat.S_IMODE(lock_dir.st_mode) == 0o700
    merge_tree(staged, dest)
    assert not lock_file.exists()


def test_dest_named_through_a_symlink(tmp_path: Path) -> None:
    staged, real = tmp_path / "staged", tmp_path / "real"
    make_staged(staged)
    real.mkdir()
    os.symlink("real", tmp_path / "alias")
    merge_tree(staged, tmp_path / "alias")
    assert (tmp_path / "alias").is_symlink()
    assert_equal_trees(staged, real)
