"""A root merge against an unprivileged user who can write into part of DEST or into STAGED.

The attacker really is `nobody` (setpriv), the merge is the real CLI running as root, on the
disk. What must hold whatever the attacker does: nothing outside DEST changes (a sentinel tree of
root-only files and directories keeps its checksums and modes), the merge never hangs, and it
never copies something other than the entry it planned; an entry that changed under it is an
error naming it. And no user's flock on DEST blocks a merge.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import merge_nslab as _lab
import pytest
from conftest import holdmount_cmd
from sandbox import Cgroup, wait_for

from holdmount.errors import Exit

cgroup = _lab.cgroup  # the shared fixture

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
UID = 65534
pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv to nobody)")]


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0755 directory on the disk (pytest's tmp_path is below a 0700 one): nobody reaches it."""
    b = Path(tempfile.mkdtemp(prefix="holdmount-merge-attack-", dir="/var/tmp"))
    b.chmod(0o755)
    yield b
    shutil.rmtree(b, ignore_errors=True)


def make_sentinel(base: Path) -> Path:
    """Root-only things outside DEST that a followed symlink would reach."""
    s = base / "sentinel"
    (s / "dir/sub").mkdir(parents=True)
    (s / "dir/key").write_text("SECRET\n")
    (s / "dir/sub/deeper").write_text("SECRET too\n")
    (s / "file").write_text("SECRET file\n")
    for p, mode in ((s / "dir/key", 0o600), (s / "dir/sub/deeper", 0o600), (s / "file", 0o600),
                    (s / "dir/sub", 0o700), (s / "dir", 0o700), (s, 0o755)):
        os.chmod(p, mode)
    return s


def fingerprint(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """mode, uid, gid and content hash (or symlink target) of root and everything below it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = ""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def run_merge(cg: Cgroup, staged: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    # a timeout only to end a hung merge (the bug): no outcome depends on how long it took
    return cg.run([*holdmount_cmd(), "merge", str(staged), str(dest)], capture_output=True,
                  text=True, timeout=300)


def assert_clean_error(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode:
        assert r.returncode != Exit.SOFTWARE, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("holdmount: ") \
            and lines[1].startswith("hint: "), r.stderr


# --- a user who owns a directory inside DEST plants symlinks at every new entry --------------

PLANTER = textwrap.dedent("""
    import os, sys, time
    home, secret_dir, secret_file, stop = sys.argv[1:5]
    dirs = {"zdir", "zdir2"}
    targets = ["zdir", "zdir2", "zempty", "zfile", "zlink", "zfifo"]
    trash = os.path.join(home, "trash")
    os.mkdir(trash)
    hits = 0
    n = 0
    def plant(name):
        global hits, n
        p = os.path.join(home, name)
        to = secret_dir if name.split(".")[0] in dirs or name in dirs else secret_file
        try:
            if os.path.islink(p) and os.readlink(p) == to:
                return
            if os.path.lexists(p):
                n += 1
                os.rename(p, os.path.join(trash, f"{n}"))
            os.symlink(to, p)
            hits += 1
        except OSError:
            pass
    # the merge has planned once it writes the big file's temp file: strike from then on
    while not any(n.startswith(".holdmount-merge.big.") for n in os.listdir(home)):
        if os.path.exists(stop):
            break
    while not os.path.exists(stop):
        for name in targets:
            plant(name)
        for name in os.listdir(home):
            if name.startswith(".holdmount-merge."):
                plant(name)
    print(hits)
""")


def make_home_staged(staged: Path, big: int) -> None:
    home = staged / "home"
    (home / "zdir/inner").mkdir(parents=True)
    (home / "zdir2").mkdir()
    (home / "big").write_bytes(os.urandom(1 << 20) * big)
    (home / "zempty").write_bytes(b"")
    os.chmod(home / "zempty", 0o755)
    (home / "zfile").write_text("payload\n")
    os.symlink("zfile", home / "zlink")
    os.mkfifo(home / "zfifo", 0o644)
    for i in range(20):
        (home / "zdir" / f"f{i}").write_text(f"payload {i}\n")
    (home / "zdir/inner/key").write_text("payload key\n")
    (home / "zdir2/key").write_text("payload key\n")
    os.chmod(home / "zdir", 0o755)
    os.chmod(home / "zdir2", 0o755)
    os.chown(home, UID, UID)
    os.chmod(home, 0o755)


def test_symlink_planter_never_reaches_outside_dest(cgroup: Cgroup, base: Path) -> None:
    sentinel = make_sentinel(base)
    before = fingerprint(sentinel)
    staged = base / "staged"
    make_home_staged(staged, big=64)
    outcomes: list[int] = []
    total_hits = 0
    for attempt in range(8):
        dest = base / f"dest{attempt}"
        (dest / "home").mkdir(parents=True)
        os.chown(dest / "home", UID, UID)
        stop = base / f"stop{attempt}"
        planter = cgroup.popen([*NOBODY, sys.executable, "-c", PLANTER, str(dest / "home"),
                                str(sentinel / "dir"), str(sentinel / "file"), str(stop)],
                               stdout=subprocess.PIPE, text=True)
        try:
            r = run_merge(cgroup, staged, dest)
        finally:
            stop.touch()
            out, _ = planter.communicate(timeout=60)
        assert_clean_error(r)
        assert fingerprint(sentinel) == before, (attempt, r.stderr)
        outcomes.append(r.returncode)
        total_hits += int(out)
        if r.returncode == Exit.TEMPFAIL:
            assert "changed while the merge ran" in r.stderr, r.stderr
    assert total_hits > 0, "the planter never struck: the test proves nothing"
    assert Exit.TEMPFAIL in outcomes, outcomes  # the swaps were seen and named


# --- STAGED changed under the merge ----------------------------------------------------------

def stop_while_copying(cg: Cgroup, staged: Path, dest: Path,
                       big: str) -> subprocess.Popen[str] | None:
    """Start the merge and SIGSTOP it while it copies `big` (its temp file exists and is not
    full yet), so what follows `big` in STAGED has been planned but not opened. None: it was
    past that point when stopped (the caller tries again)."""
    size = (staged / big).stat().st_size
    proc = cg.popen([*holdmount_cmd(), "merge", str(staged), str(dest)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def temp() -> list[Path]:
        return [p for p in dest.glob(f".holdmount-merge.{big}.*")] if dest.exists() else []

    assert wait_for(lambda: bool(temp()) or proc.poll() is not None, 120, 0.001)
    proc.send_signal(signal.SIGSTOP)
    t = temp()
    if proc.poll() is None and t and t[0].exists() and t[0].stat().st_size < size \
            and not list(dest.glob(".holdmount-merge.[!b]*")):
        return proc
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=300)
    return None


@pytest.mark.parametrize("swap", ["fifo", "symlink-to-root-only-dir"])
def test_staged_entry_swapped_mid_merge(cgroup: Cgroup, base: Path, swap: str) -> None:
    sentinel = make_sentinel(base)
    before = fingerprint(sentinel)
    staged = base / "staged"
    staged.mkdir()
    (staged / "big").write_bytes(os.urandom(1 << 20) * 512)
    (staged / "sub").mkdir()
    (staged / "sub/key").write_text("decoy\n")  # the name of a root-only file, staged 0644
    (staged / "target").write_text("planned content\n")
    for dirpath, dirnames, filenames in os.walk(staged):
        for name in [".", *dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), UID, UID)
    for attempt in range(5):
        dest = base / f"dest{attempt}"
        proc = stop_while_copying(cgroup, staged, dest, "big")
        if proc is None:
            shutil.rmtree(dest, ignore_errors=True)
            continue
        try:
            if swap == "fifo":  # as nobody, who may write STAGED
                subprocess.run([*NOBODY, "sh", "-ec", f"rm '{staged}/target'; "
                                f"mkfifo '{staged}/target'"], check=True)
                named = staged / "target"
            else:  # nobody owns STAGED/sub: moves it aside, a symlink in its place
                subprocess.run([*NOBODY, "sh", "-ec", f"mv '{staged}/sub' '{staged}/.was'; "
                                f"ln -s '{sentinel}/dir' '{staged}/sub'"], check=True)
                named = staged / "sub"
        finally:
            proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)  # the old merge hung here on the fifo
        assert proc.returncode == Exit.TEMPFAIL, err
        assert err.startswith(f"holdmount: merge({named}): changed while the merge ran"), err
        assert_clean_error(subprocess.CompletedProcess([], proc.returncode, _out, err))
        assert fingerprint(sentinel) == before
        for dirpath, _dirs, files in os.walk(dest):
            for f in files:
                p = Path(dirpath, f)
                if not p.is_symlink() and stat.S_ISREG(p.lstat().st_mode):
                    assert b"SECRET" not in p.read_bytes(), p
        return
    pytest.fail("never stopped the merge while it copied the big file")


# --- locks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["-s", "-x"])
@pytest.mark.parametrize("how", ["cli", "daemon-action"])
def test_flock_by_nobody_does_not_block_merge(cgroup: Cgroup, base: Path, mode: str,
                                              how: str) -> None:
    """`flock -s DEST` is also what a delegated `hold --protect DEST` holds (for tmpfiles)."""
    from holdmount import finalize
    from holdmount.config import ActionConfig, MergeSpec, When

    staged, dest = base / "staged", base / "dest"
    staged.mkdir()
    (staged / "f").write_text("new\n")
    dest.mkdir()
    if how == "cli":
        argv = [*holdmount_cmd(), "merge", str(staged), str(dest)]
    else:  # exactly what the daemon's merge action runs at shutdown
        action = ActionConfig(name="m", merge=MergeSpec(str(staged), str(dest)),
                              when=When.ALWAYS)
        argv = finalize.action_argv(action)
    holder = cgroup.popen([*NOBODY, "flock", mode, str(dest), "sh", "-c",
                           "echo locked; exec sleep infinity"], stdout=subprocess.PIPE,
                          text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        r = cgroup.run(argv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert (dest / "f").read_text() == "new\n"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
