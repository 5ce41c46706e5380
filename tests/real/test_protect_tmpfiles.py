"""`run --protect` against the real `systemd-tmpfiles --clean` (systemd 252)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import holdmount_cmd
from sandbox import Cgroup

pytestmark = pytest.mark.real

HM = holdmount_cmd()
OLD = time.time() - 40 * 86400


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    cg = Cgroup("tmpfiles")
    yield cg
    cg.remove()


def make_tree(base: Path) -> Path:
    clean = base / "clean"
    for rel in ["protected/f", "protected/sub/f", "unprotected/f", "unprotected/sub/f"]:
        p = clean / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for dirpath, dirnames, filenames in os.walk(clean, topdown=False):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (OLD, OLD))
    return clean


def clean_under_holdmount(cg: Cgroup, base: Path, *opts: str) -> subprocess.CompletedProcess[str]:
    clean = make_tree(base)
    conf = base / "age.conf"
    # age by atime/mtime only, so back-dated entries count as 40 days old (ctime can't be faked)
    conf.write_text(f"d {clean} 0755 root root amAM:1d\n")
    return cg.run([*HM, "run", "--hold", str(clean / "protected"), *opts, "--",
                   "systemd-tmpfiles", "--clean", str(conf)],
                  capture_output=True, text=True, timeout=60)


def test_protected_subtree_survives_the_real_clean(cgroup: Cgroup, tmp_path: Path) -> None:
    r = clean_under_holdmount(cgroup, tmp_path, "--protect")
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean"
    assert (clean / "protected/f").exists()
    assert (clean / "protected/sub/f").exists()
    assert not (clean / "unprotected/f").exists()
    assert not (clean / "unprotected/sub").exists()


def test_without_protect_the_same_clean_removes_it(cgroup: Cgroup, tmp_path: Path) -> None:
    """The control: a plain hold (an open fd, no flock) does not stop tmpfiles."""
    r = clean_under_holdmount(cgroup, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "clean/protected/f").exists()


def test_warns_when_the_locked_dir_is_the_rules_own_dir(cgroup: Cgroup, tmp_path: Path) -> None:
    """A lock on the directory a rule names protects nothing: say so. The rule lives in
    /etc/tmpfiles.d of a private mount namespace (a tmpfs over it), not on the host."""
    tmp_path.chmod(0o755)
    target = tmp_path / "aged"
    target.mkdir()
    script = (
        "set -e; mount -t tmpfs tmpfs /etc/tmpfiles.d; "
        f"echo 'd {target} 0755 root root 30d' > /etc/tmpfiles.d/holdmount-test.conf; "
        f"exec {shlex.join(HM)} run --protect --hold {target} --hold {tmp_path} -- true"
    )
    r = cgroup.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                   capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, r.stderr  # only for `target`, not for its parent
    assert warnings[0].startswith(
        f"warning: --protect on {target} protects nothing from "
        "/etc/tmpfiles.d/holdmount-test.conf:1")
