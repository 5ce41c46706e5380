"""Gentoo bug 626092: merging must keep /proc/PID/exe of running programs truthful.

The regression tests run a copy of /bin/sleep from DEST and merge a new one over it. The
measurement test records what this kernel does for plain rename() and for hardlink + rename
from a staging directory (short names and names longer than DNAME_INLINE_LEN, 32 bytes before
6.14 and 40 since), and what remains wrong with a hardlink merge on any kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import merge_nslab as _lab
import pytest
from merge_nslab import NsLab, walk
from sandbox import Cgroup

from holdmount.merge import merge_tree

pytestmark = pytest.mark.real

SLEEP = shutil.which("sleep") or "/bin/sleep"

cgroup = _lab.cgroup  # the shared fixture
nslab = _lab.nslab  # the shared fixture


def exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def make_prog(path: Path, tag: bytes) -> None:
    """A runnable copy of sleep whose bytes differ per tag (trailing bytes don't matter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(SLEEP).read_bytes() + tag)
    os.chmod(path, 0o755)


@pytest.fixture
def running(cgroup: Cgroup) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def start(cg: Cgroup, procs: list[subprocess.Popen[bytes]], prog: Path) -> int:
    p = cg.popen([str(prog), "300"])  # returns after the exec succeeded
    procs.append(p)
    return p.pid


def inodes(root: Path) -> set[tuple[int, int]]:
    return {(st.st_dev, st.st_ino) for _, st in walk(root)}


def test_running_program_keeps_dest_path_same_fs(
        tmp_path: Path, cgroup: Cgroup, running: list[subprocess.Popen[bytes]]) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    make_prog(dest / "bin/prog", b"old")
    make_prog(staged / "bin/prog", b"new")
    (staged / "bin/other").write_text("x\n")
    assert os.stat(staged).st_dev == os.stat(dest).st_dev
    pid = start(cgroup, running, dest / "bin/prog")
    assert exe(pid) == f"{dest}/bin/prog"
    merge_tree(staged, dest)
    assert exe(pid) == f"{dest}/bin/prog (deleted)"
    assert str(staged) not in exe(pid)
    assert not inodes(staged) & inodes(dest)
    assert (dest / "bin/prog").read_bytes() == (staged / "bin/prog").read_bytes()
    pid2 = start(cgroup, running, dest / "bin/prog")
    shutil.rmtree(staged)  # the stage goes away: the new program is not affected
    assert exe(pid2) == f"{dest}/bin/prog"


def test_running_program_keeps_dest_path_staged_on_tmpfs(
        tmp_path: Path, nslab: NsLab, cgroup: Cgroup,
        running: list[subprocess.Popen[bytes]]) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    nslab.mount_tmpfs(staged, "size=64m")
    make_prog(dest / "bin/prog", b"old")
    make_prog(nslab.path(staged) / "bin/prog", b"new")
    assert os.stat(nslab.path(staged)).st_dev != os.stat(dest).st_dev
    pid = start(cgroup, running, dest / "bin/prog")
    r = nslab.hm("merge", str(staged), str(dest))  # rename() could not cross filesystems
    assert r.returncode == 0, r.stderr
    assert exe(pid) == f"{dest}/bin/prog (deleted)"
    assert not inodes(nslab.path(staged)) & inodes(dest)
    assert (dest / "bin/prog").read_bytes() == (nslab.path(staged) / "bin/prog").read_bytes()
    pid2 = start(cgroup, running, dest / "bin/prog")
    assert exe(pid2) == f"{dest}/bin/prog"


# --- measurement: what rename and hardlink + rename do on this kernel --------------------------

NAMES = {"short": "prog", "33-bytes": "p" * 33, "64-bytes": "long-program-name-" + "x" * 46}


@pytest.mark.parametrize("how", ["rename", "link+rename"])
@pytest.mark.parametrize("length", list(NAMES))
def test_measure_exe_after_rename_merge(
        tmp_path: Path, cgroup: Cgroup, running: list[subprocess.Popen[bytes]],
        how: str, length: str) -> None:
    """Measured on 6.18: the old process shows `TARGET (deleted)` in every case; the
    dentry-name swap of bug 626092 (exe showing the staging path) does not happen."""
    name = NAMES[length]
    stage, target = tmp_path / "stage" / name, tmp_path / "dest/bin" / name
    make_prog(target, b"old")
    make_prog(stage, b"new")
    pid = start(cgroup, running, target)
    if how == "rename":
        os.rename(stage, target)
    else:
        tmp = target.with_name(".tmp-" + name)
        os.link(stage, tmp)
        os.rename(tmp, target)
    print(f"{how} {length}: old process exe -> {exe(pid)}")
    assert exe(pid) == f"{target} (deleted)"
    pid2 = start(cgroup, running, target)
    if how == "link+rename":
        os.unlink(stage)
    assert exe(pid2) == str(target)


@pytest.mark.parametrize("length", list(NAMES))
def test_measure_hardlink_merge_of_a_program_run_from_the_stage(
        tmp_path: Path, cgroup: Cgroup, running: list[subprocess.Popen[bytes]],
        length: str) -> None:
    """What a hardlink merge still gets wrong on any kernel: a program started from the staging
    path keeps that path after the merge, `STAGE (deleted)` once the stage is removed — though
    the very inode is installed and alive at TARGET; and the live file shares the stage's inode,
    so a write to the stage copy changes the installed program."""
    name = NAMES[length]
    stage, target = tmp_path / "stage" / name, tmp_path / "dest/bin" / name
    make_prog(stage, b"new")
    pid = start(cgroup, running, stage)
    target.parent.mkdir(parents=True)
    os.link(stage, target)
    assert os.stat(stage).st_ino == os.stat(target).st_ino
    os.unlink(stage)
    print(f"hardlink merge, run from stage, {length}: exe -> {exe(pid)}")
    assert exe(pid) == f"{stage} (deleted)"
