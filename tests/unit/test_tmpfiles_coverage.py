"""tmpfiles: effective age-by letters, /proc/locks parsing, and which rule reaches a path."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from holdmount import tmpfiles
from holdmount.tmpfiles import Flock, coverage, parse_cat_config, read_flocks

CAT = """\
# /etc/tmpfiles.d/lorax.conf
# long builds live here
q /var/tmp 1777 root root 30d
d /srv/build 0755 root root mM:10d
x /var/tmp/keep
X /var/tmp/only-self

# /usr/lib/tmpfiles.d/other.conf
D /tmp 1777 root root -
e /srv/cache/* - - - ~1h
d /srv/noage 0755 root root -
"""


def rules() -> list[tmpfiles.Rule]:
    return parse_cat_config(CAT)


def test_rules_keep_file_and_line() -> None:
    r = {x.path: x for x in rules()}
    assert (r["/var/tmp"].file, r["/var/tmp"].line) == ("/etc/tmpfiles.d/lorax.conf", 2)
    assert (r["/srv/cache/*"].file, r["/srv/cache/*"].line) == ("/usr/lib/tmpfiles.d/other.conf", 2)


@pytest.mark.parametrize(("age", "files", "dirs"), [
    ("30d", "abcm", "ABM"),  # 252's defaults
    ("mM:10d", "m", "M"),
    ("m:10d", "m", "ABM"),  # a side without letters keeps its default
    ("AM:1s", "abcm", "AM"),
    ("~amAM:1s", "am", "AM"),
])
def test_effective_age_by(age: str, files: str, dirs: str) -> None:
    rule = tmpfiles.parse_line(f"d /x 0755 root root {age}", "f", 1)
    assert rule is not None
    assert rule.effective_age_by == (files, dirs)


def test_read_flocks_hex_device_decimal_inode() -> None:
    text = ("1: FLOCK  ADVISORY  READ  1234 fd:01:131074 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 999 fd:01:131074 0 EOF\n"
            "2: POSIX  ADVISORY  WRITE 77 00:1a:42 0 EOF\n"
            "3: FLOCK  ADVISORY  WRITE 55 08:11:7 0 EOF\n")
    assert read_flocks(text) == [
        Flock(pid=1234, write=False, major=0xFD, minor=1, ino=131074),
        Flock(pid=55, write=True, major=8, minor=0x11, ino=7),
    ]


def test_read_flocks_sees_a_real_lock(tmp_path: Path) -> None:
    d = tmp_path / "locked"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.stat(d)
        key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        assert key in {(f.major, f.minor, f.ino) for f in read_flocks()}
    finally:
        os.close(fd)
    assert key not in {(f.major, f.minor, f.ino) for f in read_flocks()}


def _cov(path: str, **kw: object) -> list[tmpfiles.Coverage]:
    return coverage(rules(), path, known={}, **kw)  # type: ignore[arg-type]


def test_rule_reaches_descendants_not_unrelated_paths() -> None:
    [c] = _cov("/var/tmp/build/sub/file")
    assert c.rule.path == "/var/tmp" and c.directory == "/var/tmp"
    assert not c.names_path and c.exempt is None
    assert c.protect_dir == "/var/tmp/build"
    assert _cov("/var/lib/x") == []
    assert _cov("/srv/noage/x") == []  # no age: never cleaned
    assert _cov("/tmp/x") == []  # D without age


def test_rule_naming_the_path_ages_its_contents() -> None:
    [c] = _cov("/var/tmp")
    assert c.names_path and c.protect_dir is None


def test_glob_rule() -> None:
    [c] = _cov("/srv/cache/a/b")
    assert c.directory == "/srv/cache/a" and c.rule.shallow_kept


def test_x_excludes_subtree_and_X_only_itself() -> None:
    [c] = _cov("/var/tmp/keep/deep/f")
    assert c.exempt_kind == "exclude"
    [c] = _cov("/var/tmp/only-self")
    assert c.exempt_kind == "exclude"
    [c] = _cov("/var/tmp/only-self/f")
    assert c.exempt is None


def test_mount_point_below_the_rule_exempts() -> None:
    [c] = _cov("/var/tmp/mnt/f", mount_points=["/", "/var/tmp/mnt"])
    assert c.exempt_kind == "mount"
    [c] = _cov("/var/tmp/f", mount_points=["/", "/var/tmp"])  # the rule's own dir: no help
    assert c.exempt is None


def test_flock_below_the_rule_exempts_but_not_on_the_rule_dir(tmp_path: Path) -> None:
    root = tmp_path
    job = root / "var" / "tmp" / "job"
    (job / "sub").mkdir(parents=True)
    st_job = os.stat(job)
    st_top = os.stat(root / "var" / "tmp")
    lock_job = Flock(1, False, os.major(st_job.st_dev), os.minor(st_job.st_dev), st_job.st_ino)
    lock_top = Flock(1, False, os.major(st_top.st_dev), os.minor(st_top.st_dev), st_top.st_ino)
    [c] = coverage(rules(), str(job / "sub"), root=str(root), flocks=[lock_job])
    assert c.exempt_kind == "flock" and str(job) in (c.exempt or "")
    assert c.directory == str(root / "var" / "tmp")
    [c] = coverage(rules(), str(job / "sub"), root=str(root), flocks=[lock_top])
    assert c.exempt is None and c.protect_dir == str(job)
    # a lock on a regular file protects nothing on 252
    f = job / "file"
    f.write_text("x")
    st_f = os.stat(f)
    lock_f = Flock(1, True, os.major(st_f.st_dev), os.minor(st_f.st_dev), st_f.st_ino)
    [c] = coverage(rules(), str(f), root=str(root), flocks=[lock_f])
    assert c.exempt is None


def test_path_outside_root_is_not_covered(tmp_path: Path) -> None:
    assert coverage(rules(), "/var/tmp/x", root=str(tmp_path)) == []


@pytest.mark.real  # a real component: must not skip in CI
def test_load_with_root_names_the_files(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "tmpfiles.d"
    conf.mkdir(parents=True)
    (conf / "a.conf").write_text("# one\n\nd /aged 0755 root root 10d\n")
    try:
        loaded = tmpfiles.load(root=str(tmp_path))
    except FileNotFoundError:
        pytest.skip("systemd-tmpfiles not installed")
    except subprocess.CalledProcessError as e:  # pragma: no cover - depends on the host
        pytest.fail(f"--cat-config failed: {e.stderr}")
    [rule] = [r for r in loaded if r.path == "/aged"]
    assert rule.file == str(conf / "a.conf") and rule.line == 3
