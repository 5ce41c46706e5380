"""overlayfs: layers from mountinfo, the guard against writing into a mounted overlay's layers,
and `holdmount overlay changes` checked against a full comparison of lower view and merged."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import merge_nslab as _lab
import pytest
from merge_nslab import NsLab, snapshot

from holdmount.errors import Exit, Failure
from holdmount.mounts import MountTable
from holdmount.overlay import layers, refuse_if_overlay_layer, split_lowerdir

cgroup = _lab.cgroup  # the shared fixture
nslab = _lab.nslab  # the shared fixture


def table(super_options: str, mp: str = "/m") -> MountTable:
    return MountTable.parse([
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n",
        f"99 22 0:40 / {mp} rw,relatime - overlay overlay rw,{super_options}\n",
    ])


# --- parsing ----------------------------------------------------------------------------------

def test_split_lowerdir() -> None:
    assert split_lowerdir("/a:/b") == (["/a", "/b"], [])
    assert split_lowerdir("/a\\:b:/c") == (["/a:b", "/c"], [])
    assert split_lowerdir("/l1:/l2::/d1::/d2") == (["/l1", "/l2"], ["/d1", "/d2"])


def test_layers_from_mountinfo_escapes() -> None:
    # what 6.18 shows for lowerdir=/x/l1:/x/l\:3 (the backslash itself is octal-escaped)
    t = table("lowerdir=/x/l1:/x/l\\134:3,upperdir=/x/up\\040per,workdir=/x/w,redirect_dir=on")
    lay = layers(t.overlays()[0])
    assert lay.lowerdirs == ("/x/l1", "/x/l:3")
    assert lay.upperdir == "/x/up per" and lay.workdir == "/x/w"
    assert not lay.userxattr and lay.xattr_prefix == "trusted.overlay."
    t = table("lowerdir+=/a,lowerdir+=/b\\054c,datadir+=/d,userxattr")
    lay = layers(t.overlays()[0])
    assert lay.lowerdirs == ("/a", "/b,c") and lay.datadirs == ("/d",)
    assert lay.upperdir is None and lay.userxattr and lay.xattr_prefix == "user.overlay."


# --- the guard, from a mount table (no mounts needed) -----------------------------------------

@pytest.mark.parametrize("role", ["upperdir", "workdir", "lowerdir", "datadir"])
def test_guard_refuses_every_layer(tmp_path: Path, role: str) -> None:
    for d in ("up", "work", "lo1", "lo:2", "data", "merged", "elsewhere"):
        (tmp_path / d / "sub").mkdir(parents=True)
    lo2 = str(tmp_path / "lo:2").replace(":", "\\134:")
    t = table(f"lowerdir={tmp_path}/lo1:{lo2}::{tmp_path}/data,upperdir={tmp_path}/up,"
              f"workdir={tmp_path}/work", mp=str(tmp_path / "merged"))
    inside = {"upperdir": "up", "workdir": "work", "lowerdir": "lo:2", "datadir": "data"}[role]
    target = tmp_path / inside / "sub/not-yet"
    with pytest.raises(Failure) as exc:
        refuse_if_overlay_layer(target, t, call="merge")
    assert exc.value.code == Exit.CANTCREAT
    assert exc.value.message.startswith(f"merge({target}): inside {role} ")
    assert "undefined" in (exc.value.hint or "") and "not allow" in (exc.value.hint or "")
    # through a symlink: the same directory
    os.symlink(tmp_path / inside, tmp_path / "alias")
    with pytest.raises(Failure):
        refuse_if_overlay_layer(tmp_path / "alias/sub", t)
    # the merged mount and unrelated directories are fine
    refuse_if_overlay_layer(tmp_path / "merged/sub", t)
    refuse_if_overlay_layer(tmp_path / "elsewhere/sub", t)
    refuse_if_overlay_layer(tmp_path / "up-not", t)


# --- real overlays ----------------------------------------------------------------------------

def subtree(snap: Mapping[str, object], top: str) -> set[str]:
    return {p for p in snap if p.startswith(top + "/")}


def populate_lowers(l1: Path, l2: Path, prefix: str) -> None:
    """Two lower layers; l1 (top) hides part of l2 with its own whiteout and opaque dir."""
    for p in ("dir", "dir2", "dir3", "mvdir/in", "gone/deep", "d2f/x", "l2dir", "hidden",
              "opq"):
        (l2 / p).mkdir(parents=True)
    files = {"a": "a", "dir/x": "x", "dir/keep": "k", "dir2/y": "y", "dir2/keep": "k",
             "mvdir/m": "m", "mvdir/in/n": "n", "gone/deep/g": "g", "d2f/x/f": "f",
             "f2d": "file", "fromlower2": "2", "l2dir/old": "o", "hidden/h": "h",
             "opq/under": "u", "samefile": "s"}
    for p, text in files.items():
        (l2 / p).write_text(text + "\n")
    os.symlink("a", l2 / "link")
    (l1 / "opq").mkdir(parents=True)
    os.setxattr(l1 / "opq", prefix + "opaque", b"y")
    (l1 / "opq/top").write_text("top\n")
    os.mknod(l1 / "hidden", stat.S_IFCHR | 0o600, 0)  # a whiteout inside the lower stack
    (l1 / "samefile").write_text("l1 wins\n")


CHANGES = """
cd '{m}'
rm a fromlower2                                   # whiteouts
rm -r dir && mkdir dir && echo new > dir/z && echo again > dir/x   # opaque dir
echo changed > dir2/y                             # copy-up
chmod 600 dir2/keep                               # metadata copy-up
chmod 700 dir3                                    # directory metadata
echo n > newfile && mkdir -p newdir/s && echo q > newdir/s/q && ln -s target newlink
mv mvdir moved                                    # a moved lower directory
rm -r gone                                        # a deleted lower tree
echo x > l2dir/new                                # a new file in a lower-only dir
rm f2d && mkdir f2d && echo in > f2d/in           # a file becomes a directory
rm -r d2f && echo now-a-file > d2f                # a directory becomes a file
echo more >> opq/top                              # copy-up under an l1-opaque dir
"""


@pytest.mark.real
@pytest.mark.parametrize("opts", ["", "redirect_dir=on", "userxattr"])
def test_changes_equal_full_comparison(nslab: NsLab, tmp_path: Path, opts: str) -> None:
    base = tmp_path / "ov"
    nslab.mount_tmpfs(base, "size=64m")
    h = nslab.path(base)
    for d in ("l1", "l2", "upper", "work", "work2", "m", "lv"):
        (h / d).mkdir()
    prefix = "user.overlay." if "userxattr" in opts else "trusted.overlay."
    populate_lowers(h / "l1", h / "l2", prefix)
    extra = f",{opts}" if opts else ""
    nslab.sh(f"mount -t overlay overlay -o lowerdir={base}/l1:{base}/l2,upperdir={base}/upper,"
             f"workdir={base}/work{extra} {base}/m")
    # the lower view, for the ground truth: the same lowers, no upper
    nslab.sh(f"mount -t overlay overlay -o lowerdir={base}/l1:{base}/l2{extra} {base}/lv")
    nslab.sh(CHANGES.format(m=base / "m"))

    r = nslab.hm("overlay", "changes", str(base / "m"), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["upperdir"] == f"{base}/upper"
    assert got["lowerdirs"] == [f"{base}/l1", f"{base}/l2"]

    low, merged = snapshot(h / "lv"), snapshot(h / "m")
    truth_added = set(merged) - set(low)
    truth_deleted = set(low) - set(merged)
    truth_modified = {p for p in set(low) & set(merged) if low[p] != merged[p]}

    renamed = {r["path"]: r["from"] for r in got["renamed"]}
    added = set(got["added"]) | set(renamed)
    for new, origin in renamed.items():
        added |= {new + p[len(origin):] for p in subtree(low, origin)}
    deleted: set[str] = set()
    for d in got["deleted"]:
        deleted |= {d} | subtree(low, d)
    for o in got["opaque"]:
        deleted |= subtree(low, o) - set(merged)
    for p in got["modified"]:  # a non-directory over a lower directory hides its tree
        if stat.S_ISDIR(low[p][0]) and not stat.S_ISDIR(merged[p][0]):
            deleted |= subtree(low, p)
    assert added == truth_added
    assert deleted == truth_deleted
    assert set(got["modified"]) == truth_modified

    # the kinds of change this scenario must have produced
    assert {"a", "fromlower2", "gone"} <= set(got["deleted"])
    assert {"dir", "f2d"} <= set(got["opaque"])
    assert {"dir2/y", "dir2/keep", "dir3", "dir/x", "opq/top", "f2d", "d2f"} <= set(
        got["modified"])
    if "redirect_dir=on" in opts:
        assert renamed == {"moved": "mvdir"} and "mvdir" in got["deleted"]
    else:  # mv fell back to a copy (EXDEV): the new tree is added, the old one whited out
        assert renamed == {} and {"moved", "moved/in/n", "moved/m"} <= set(got["added"])
        assert "mvdir" in got["deleted"]

    text = nslab.hm("overlay", "changes", str(base / "m"))
    assert text.returncode == 0
    assert "D a" in text.stdout.splitlines() and "O dir" in text.stdout.splitlines()


@pytest.mark.real
def test_changes_of_a_non_overlay(nslab: NsLab, tmp_path: Path) -> None:
    r = nslab.hm("overlay", "changes", str(tmp_path))
    assert r.returncode == int(Exit.DATAERR)
    assert r.stderr.startswith(f"holdmount: overlay changes({tmp_path}): not an overlay")


@pytest.mark.real
def test_guard_refuses_merge_into_a_mounted_upperdir(nslab: NsLab, tmp_path: Path) -> None:
    base = tmp_path / "ov"
    nslab.mount_tmpfs(base, "size=16m")
    h = nslab.path(base)
    for d in ("lower", "upper/sub", "work", "m"):
        (h / d).mkdir(parents=True)
    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub/f").write_text("new\n")
    nslab.sh(f"mount -t overlay overlay -o lowerdir={base}/lower,upperdir={base}/upper,"
             f"workdir={base}/work {base}/m")
    for dest, role in ((base / "upper", "upperdir"), (base / "upper/sub", "upperdir"),
                       (base / "lower", "lowerdir"), (base / "work", "workdir")):
        before = sorted(os.listdir(h / dest.relative_to(base)))
        r = nslab.hm("merge", str(staged), str(dest))
        assert r.returncode == int(Exit.CANTCREAT), r.stderr
        lines = r.stderr.splitlines()
        assert lines[0].startswith(f"holdmount: merge({dest}): inside {role} "), r.stderr
        assert "undefined" in lines[1] and f"merged mount ({base}/m)" in lines[1]
        assert sorted(os.listdir(h / dest.relative_to(base))) == before
    # STAGED that would write into an upperdir below DEST
    (staged / "upper/sub").mkdir(parents=True)
    r = nslab.hm("merge", str(staged), str(base))
    assert r.returncode == int(Exit.CANTCREAT), r.stderr
    assert f"STAGED writes into upperdir {base}/upper" in r.stderr
    # through the merged mount is how it is meant to be done
    r = nslab.hm("merge", str(staged / "sub"), str(base / "m/sub"))
    assert r.returncode == 0, r.stderr
    assert (h / "m/sub/f").read_text() == "new\n"
    assert (h / "upper/sub/f").read_text() == "new\n"  # written by the overlay itself


def test_guard_ignores_paths_seen_through_the_overlay_itself() -> None:
    """Inside a container whose root is overlay(lowerdir=/), every path would "be" in the
    lowerdir by its text; writing through the merged view is fine and must not be refused."""
    from holdmount import overlay
    from holdmount.mounts import MountTable

    table = MountTable.parse([
        "100 90 0:50 / / rw,relatime - overlay overlay "
        "rw,lowerdir=/,upperdir=/tmp/l/upper,workdir=/tmp/l/work",
    ])
    assert overlay.overlay_layer_of("/var/lib/thing", table) is None
    overlay.refuse_if_overlay_layer("/var/lib/thing", table)


@pytest.mark.real
def test_changes_of_a_missing_path(nslab: NsLab, tmp_path: Path) -> None:
    r = nslab.hm("overlay", "changes", str(tmp_path / "nonexistent"))
    assert r.returncode == int(Exit.NOINPUT), r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == (f"holdmount: overlay changes({tmp_path}/nonexistent): No such file or "
                        "directory"), r.stderr
    assert lines[1].startswith("hint: ") and len(lines) == 2


@pytest.mark.real
def test_relative_layer_paths_are_unknown_layers(nslab: NsLab, tmp_path: Path) -> None:
    """An overlay mounted from a shell with `-o lowerdir=lo,upperdir=up,workdir=wk`: mountinfo
    shows those strings, so nobody can tell where its layers are. merge refuses (saying why),
    `overlay changes` says so instead of scanning `up/` relative to its own cwd, and doctor's
    `unknown_layers` names the overlay."""
    from holdmount import overlay
    from holdmount.mounts import MountTable

    base = tmp_path / "ov"
    nslab.mount_tmpfs(base, "size=16m")
    h = nslab.path(base)
    for d in ("lo", "up/sub", "wk", "m", "other"):
        (h / d).mkdir(parents=True)
    (h / "up/sub/old").write_text("old\n")
    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub/f").write_text("new\n")
    nslab.sh(f"cd '{base}' && mount -t overlay overlay -o lowerdir=lo,upperdir=up,workdir=wk m")
    assert ",upperdir=up," in nslab.mountinfo()  # the premise: the kernel keeps them relative
    for dest in (base / "up", base / "other"):
        before = sorted(os.listdir(h / dest.relative_to(base)))
        r = nslab.hm("merge", str(staged), str(dest))
        assert r.returncode == int(Exit.CANTCREAT), r.stderr
        lines = r.stderr.splitlines()
        assert lines[0] == (f"holdmount: merge({dest}): may be inside a layer of the overlay "
                            f"mounted on {base}/m, whose upperdir is given relative to the "
                            "directory it was mounted from (upperdir=up), so where its layers "
                            "are cannot be known"), r.stderr
        assert "absolute" in lines[1] and len(lines) == 2
        assert sorted(os.listdir(h / dest.relative_to(base))) == before
    r = nslab.hm("merge", str(staged / "sub"), str(base / "m/sub"))  # through the overlay: fine
    assert r.returncode == 0, r.stderr
    r = nslab.hm("overlay", "changes", str(base / "m"))
    assert r.returncode == int(Exit.DATAERR), r.stderr
    assert r.stderr.splitlines()[0] == (
        f"holdmount: overlay changes({base}/m): the overlay gives its upperdir relative to the "
        "directory it was mounted from (upperdir=up), so where it is cannot be known"), r.stderr
    table = MountTable.parse(nslab.mountinfo().splitlines(keepends=True))
    hits = overlay.unknown_layers(str(base / "up/sub"), table)
    assert {(m.mount_point, role, d) for m, role, d in hits} == {
        (f"{base}/m", "lowerdir", "lo"), (f"{base}/m", "upperdir", "up"),
        (f"{base}/m", "workdir", "wk")}
    assert overlay.unknown_layers(str(base / "m/sub"), table) == []
