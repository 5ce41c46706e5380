"""A private mount namespace for the merge and overlay tests, and the tree snapshots they compare.

`NsLab`: a keeper process (`unshare -m --propagation private ... sleep infinity`, in the test's own
Cgroup) holds the namespace. The pytest process never mounts: commands run in the namespace
through `nsenter -t KEEPER -m`, and the namespace's files are read from here through
`/proc/KEEPER/root/...`. When the keeper ends, its mounts go with it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import holdmount_cmd
from sandbox import Cgroup

TEMP_PREFIX = ".holdmount-merge."


class NsLab:
    def __init__(self, cg: Cgroup) -> None:
        self.cg = cg
        self.keeper = cg.popen(
            ["unshare", "-m", "--propagation", "private", "--",
             "sh", "-c", "echo ready; exec sleep infinity"],
            stdout=subprocess.PIPE, text=True)
        assert self.keeper.stdout is not None
        line = self.keeper.stdout.readline()
        assert line.strip() == "ready", line
        self.pid = self.keeper.pid

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "--", *args]

    def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return self.cg.run(self.argv(args), **kw)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return self.cg.popen(self.argv(args), **kw)

    def sh(self, script: str) -> str:
        r = self.run(["sh", "-ec", script])
        assert r.returncode == 0, f"{script}\n{r.stdout}{r.stderr}"
        return r.stdout

    def hm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([*holdmount_cmd(), *args])

    def mount_tmpfs(self, where: Path, opts: str = "size=256m") -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.sh(f"mount -t tmpfs -o {opts} tmpfs '{where}'")

    def path(self, p: Path | str) -> Path:
        """`p` (as seen in the namespace) reached from the host through /proc/KEEPER/root."""
        return Path(f"/proc/{self.pid}/root{os.path.abspath(p)}")

    def mountinfo(self) -> str:
        return Path(f"/proc/{self.pid}/mountinfo").read_text()

    def close(self) -> None:
        self.keeper.kill()
        self.keeper.wait()
        if self.keeper.stdout:
            self.keeper.stdout.close()


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    cg = Cgroup("merge")
    try:
        yield cg
    finally:
        cg.remove()


@pytest.fixture
def nslab(cgroup: Cgroup) -> Iterator[NsLab]:
    lab = NsLab(cgroup)
    try:
        yield lab
    finally:
        lab.close()


# --- tree snapshots ---------------------------------------------------------------------------

def xattrs(path: Path | str) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith(("user.", "trusted.")):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below root, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            yield os.path.relpath(p, root), os.lstat(p)


def entry(path: str, st: os.stat_result, *, times: bool = False) -> tuple[Any, ...]:
    """What "equal" means for one entry: type, mode, owner, content or target, xattrs."""
    if stat.S_ISREG(st.st_mode):
        body: Any = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        body = st.st_rdev
    else:
        body = None
    t = st.st_mtime_ns if times and not stat.S_ISDIR(st.st_mode) else None
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body,
            sorted(xattrs(path).items()), t)


def snapshot(root: Path, *, times: bool = False) -> dict[str, tuple[Any, ...]]:
    return {rel: entry(os.path.join(root, rel), st, times=times) for rel, st in walk(root)}


def link_groups(root: Path) -> set[frozenset[str]]:
    """The hardlink partition of the non-directories below root (groups of 2 or more)."""
    by_ino: dict[tuple[int, int], set[str]] = {}
    for rel, st in walk(root):
        if not stat.S_ISDIR(st.st_mode):
            by_ino.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return {frozenset(v) for v in by_ino.values() if len(v) > 1}


def temps(root: Path) -> list[str]:
    return [rel for rel, _ in walk(root) if os.path.basename(rel).startswith(TEMP_PREFIX)]

