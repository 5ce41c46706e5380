"""Crash safety: `holdmount merge` killed with SIGKILL at random points over a tree of a few
thousand files. After every kill each DEST file is byte-exactly its old or its new version (with
its metadata), never torn; the rerun ends with DEST equal to STAGED and no temp files.

The trees live on a tmpfs in the lab's private mount namespace (fsync is cheap there, so the
kill points spread over the whole merge, not over disk flushes); the merge runs as
`python -m holdmount merge` in that namespace, inside the test's cgroup.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import merge_nslab as _lab
import pytest
from conftest import holdmount_cmd
from merge_nslab import NsLab, entry, link_groups, snapshot, temps, walk

pytestmark = [pytest.mark.real, pytest.mark.slow]

DIRS = 25
FILES_PER_DIR = 100
MIN_KILLS = 50

cgroup = _lab.cgroup  # the shared fixture
nslab = _lab.nslab  # the shared fixture


def build(old: Path, new: Path, rnd: random.Random) -> None:
    """OLD (what DEST holds) and NEW (STAGED): changed, unchanged, added and metadata-only
    entries, symlinks, hardlink groups, xattrs, new directories, files only in OLD."""
    for d in range(DIRS):
        for root in (old, new):
            (root / f"d{d:02}").mkdir(parents=True, exist_ok=True)
        if d % 10 == 0:
            (new / f"d{d:02}/newdir/sub").mkdir(parents=True)
            (new / f"d{d:02}/newdir/sub/f").write_bytes(os.urandom(2000))
        for i in range(FILES_PER_DIR):
            rel = f"d{d:02}/f{i:03}"
            size = 200_000 if i % 97 == 0 else rnd.randrange(0, 6000)
            body = os.urandom(size)
            kind = rnd.random()
            if kind < 0.1:  # only in STAGED
                (new / rel).write_bytes(body)
            elif kind < 0.15:  # only in DEST: must survive
                (old / rel).write_bytes(body)
            elif kind < 0.25:  # unchanged
                for root in (old, new):
                    (root / rel).write_bytes(body)
                    os.utime(root / rel, ns=(10**18, 10**18))
            elif kind < 0.3:  # metadata only
                for root in (old, new):
                    (root / rel).write_bytes(body)
                os.chmod(new / rel, 0o600)
                os.chown(new / rel, 1000 + i, 1000 + d)
            elif kind < 0.33:  # symlink changed
                os.symlink(f"old-{i}", old / rel)
                os.symlink(f"new-{i}", new / rel)
            else:  # content changed
                (old / rel).write_bytes(os.urandom(size))
                (new / rel).write_bytes(body)
                if kind < 0.4:
                    os.setxattr(new / rel, "user.v", b"2")
                    os.setxattr(old / rel, "user.v", b"1")
        # a hardlink group across directories in STAGED
        if d > 0:
            src = new / f"d{d:02}/group"
            src.write_bytes(os.urandom(3000))
            os.link(src, new / f"d{d - 1:02}/group-link-{d:02}")


def merge_argv(staged: Path, dest: Path) -> list[str]:
    return [*holdmount_cmd(), "merge", str(staged), str(dest)]


def test_kill_nine_at_random_points(nslab: NsLab, tmp_path: Path) -> None:
    rnd = random.Random(int.from_bytes(os.urandom(4), "big"))
    base = tmp_path / "t"
    nslab.mount_tmpfs(base, "size=1g")
    old, staged, dest = base / "old", base / "staged", base / "dest"
    h_old, h_staged, h_dest = nslab.path(old), nslab.path(staged), nslab.path(dest)
    build(h_old, h_staged, rnd)
    old_snap, new_snap = snapshot(h_old), snapshot(h_staged)
    assert len(new_snap) + len(old_snap) > 4000  # old and new: ~2700 paths in all

    def reset() -> None:
        nslab.sh(f"rm -rf '{dest}' && cp -a '{old}' '{dest}'")

    changing = {p for p in new_snap if old_snap.get(p) != new_snap[p]
                and not stat.S_ISDIR(new_snap[p][0])}

    def check_old_or_new() -> int:
        """Asserts every file is old or new; returns how many entries that change are new."""
        n_new = 0
        for rel, st in walk(h_dest):
            if os.path.basename(rel).startswith(".holdmount-merge."):
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            got = entry(str(h_dest / rel), st)
            assert got in (old_snap.get(rel), new_snap.get(rel)), f"torn or foreign: {rel}"
            n_new += rel in changing and got == new_snap[rel]
        for rel in old_snap:  # merge never deletes
            assert os.path.lexists(h_dest / rel), rel
        return n_new

    def check_complete() -> None:
        got = snapshot(h_dest)
        want = {**old_snap, **new_snap}
        # directories: STAGED's metadata wins; old-only files stay as they were
        assert got == want
        assert temps(h_dest) == []
        assert link_groups(h_staged) <= link_groups(h_dest)

    # one uninterrupted run: how long a whole merge takes (the range of kill points)
    reset()
    t0 = time.monotonic()
    r = nslab.run(merge_argv(staged, dest))
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    check_complete()
    # a rerun with nothing to do: start-up and planning, before the first write
    t0 = time.monotonic()
    assert nslab.run(merge_argv(staged, dest)).returncode == 0
    before_writing = min(time.monotonic() - t0, full)

    kills = attempts = 0
    midway: list[float] = []  # kills that stopped a merge with part of DEST written
    while kills < MIN_KILLS and attempts < 4 * MIN_KILLS:
        reset()
        for _ in range(2):  # kills pile up: each rerun starts from the last crash's leftovers
            attempts += 1
            p = nslab.popen(merge_argv(staged, dest), stdout=subprocess.DEVNULL)
            # half the kill points anywhere, half where the writing happens
            time.sleep(rnd.uniform(0 if attempts % 2 else before_writing / 2, full))
            p.send_signal(signal.SIGKILL)
            killed = p.wait() == -signal.SIGKILL
            kills += killed
            done = check_old_or_new() / len(changing)
            # midway: part of DEST written, as renamed files or as a batch of temp files not
            # yet renamed (merge renames in batches after one syncfs, see merge-and-overlay.md)
            if killed and (0 < done < 1 or (done < 1 and temps(h_dest))):
                midway.append(done)
        r = nslab.run(merge_argv(staged, dest))
        assert r.returncode == 0, r.stderr
        check_complete()
    print(f"full merge {full:.2f}s, no-op merge {before_writing:.2f}s; "
          f"{kills} kills landed in {attempts} attempts; "
          f"{len(midway)} stopped it midway, at {sorted(round(x, 3) for x in midway)}")
    assert kills >= MIN_KILLS
    assert len(midway) >= MIN_KILLS // 5  # the kill points do cover the writing
