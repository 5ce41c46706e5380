"""Merge a staged tree into its destination by copy + rename, never by link() from the stage.

For every non-directory of STAGED: a temp file `.holdmount-merge.<name>.<8 hex>` is written in
the target's own directory (data by copy_file_range where the kernel can, else read/write; owner,
mode, xattrs, timestamps), made durable, then renamed over the target. So at any instant every
DEST file is either the old or the new one, /proc/PID/exe of running programs keeps naming DEST,
no DEST file shares an inode with STAGED, and STAGED may be on another filesystem (tmpfs).

Files hardlinked together inside STAGED stay hardlinked in DEST: later names are linked to the
first name's DEST copy. Directories are created (0700 while they fill) and get their metadata
after their contents, bottom-up. A run that was killed leaves at most recognisable temp files and
directories still waiting for their metadata: the rerun finishes the merge and removes the temps.

Both trees are reached through directory fds only (tree.py): nothing that changes in STAGED or
DEST during the merge (a symlink, a fifo, another directory swapped in) is followed, waited on or
copied; it fails the merge with a message naming it. Everything that can be checked before
writing is checked first (plan.py), so a refused merge writes nothing. One merge into a DEST at a
time, by a lock only root can take (lock.py).

Modules: model (records), tree (fd access), plan, write, durable (batches, syncfs), lock.
`merge_tree(staged, dest, *, dry_run=False) -> MergeSummary` is the stable entry point (the CLI
verb and the daemon's `merge` action both call it).
"""

from __future__ import annotations

import errno
import os
import stat

from holdmount import overlay
from holdmount.errors import Exit, die, os_failure
from holdmount.merge import lock, plan
from holdmount.merge.model import (
    TEMP_PREFIX,
    MergeSummary,
    Op,
    Plan,
    at,
    ident,
    is_temp_name,
    temp_name,
)
from holdmount.merge.tree import DIR_FLAGS, Tree, changed
from holdmount.merge.write import Writer
from holdmount.mounts import MountTable
from holdmount.paths import under

__all__ = ["TEMP_PREFIX", "MergeSummary", "is_temp_name", "merge_tree", "temp_name"]


def _check_inputs(staged: str, dest: str) -> os.stat_result:
    try:
        st = os.stat(staged)
    except OSError as e:
        raise os_failure("merge", staged, e,
                         hint="STAGED must be the directory the new files were staged in"
                         ) from e
    if not stat.S_ISDIR(st.st_mode):
        die(f"merge({staged}): STAGED is not a directory",
            hint="name the directory that holds the staged tree", code=Exit.DATAERR)
    try:
        d: os.stat_result | None = os.lstat(dest)
    except FileNotFoundError:
        d = None
    except OSError as e:
        raise os_failure("lstat", dest, e) from e
    if d is None:
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            die(f"merge({dest}): {os.strerror(errno.ENOENT)} (nor its parent directory)",
                hint="create DEST's parent directory first", code=Exit.NOINPUT)
    elif not stat.S_ISDIR(d.st_mode):
        die(f"merge({dest}): DEST is not a directory",
            hint="name the directory to merge into", code=Exit.DATAERR)
    rs, rd = os.path.realpath(staged), os.path.realpath(dest)
    if under(rd, rs) or under(rs, rd):
        die(f"merge({dest}): DEST and STAGED ({staged}) overlap",
            hint="stage into a directory outside DEST (and DEST outside it)", code=Exit.USAGE)
    return st


def _guard(staged: Tree, dest: str) -> None:
    table = MountTable.read()
    overlay.refuse_if_overlay_layer(dest, table, call="merge")
    overlay.refuse_if_unknown_layers(dest, table, call="merge")
    for lay, role, d in overlay.layer_dirs_under(dest, table):
        rel = os.path.relpath(d, os.path.realpath(dest))
        try:
            os.stat(rel, dir_fd=staged.fd, follow_symlinks=False)
        except OSError:
            continue
        die(f"merge({at(dest, rel)}): STAGED writes into {role} {d} of the "
            f"overlay mounted on {lay.mount.mount_point}",
            hint=f"{overlay.KERNEL_DOC_REASON}. Leave it out of STAGED or unmount the "
            "overlay first", code=Exit.CANTCREAT)


def _open_dir(path: str, flags: int, want: os.stat_result | None = None) -> int:
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise os_failure("open", path, e) from e
    if want is not None and ident(os.fstat(fd)) != ident(want):
        os.close(fd)
        raise changed(path, "another directory than the one checked")
    return fd


def merge_tree(staged: str | os.PathLike[str], dest: str | os.PathLike[str], *,
               dry_run: bool = False) -> MergeSummary:
    """Merge the tree STAGED into DEST (see the module docstring). Raises `Failure`."""
    staged_s, dest_s = os.fspath(staged), os.fspath(dest)
    if os.path.islink(dest_s) and os.path.isdir(dest_s):
        dest_s = os.path.realpath(dest_s)  # DEST named through a symlink: merge into its target
    root_st = _check_inputs(staged_s, dest_s)
    s_tree = Tree(staged_s, _open_dir(staged_s, DIR_FLAGS & ~os.O_NOFOLLOW, root_st))
    d_tree: Tree | None = None
    held: lock.Lock | None = None
    try:
        _guard(s_tree, dest_s)
        if os.path.lexists(dest_s):
            d_tree = Tree(dest_s, _open_dir(dest_s, DIR_FLAGS))
            # one merge into a DEST at a time, and the temp files we find are not a live merge's
            held = None if dry_run else lock.take(d_tree.fd, dest_s)
        p = plan.plan(s_tree, d_tree, root_st)
        summary = _summary(staged_s, dest_s, p, dry_run)
        if dry_run or (not p.temps and all(i.op in (Op.SAME, Op.DIROK) for i in p.items)):
            return summary
        plan.preflight(dest_s, d_tree.fd if d_tree else None, p)
        if d_tree is None:
            d_tree = Tree(dest_s, _make_root(dest_s))
            held = lock.take(d_tree.fd, dest_s)  # DEST was only just created
        _write(s_tree, d_tree, p)
        return summary
    finally:
        if held is not None:
            held.release()
        for t in (s_tree, d_tree):
            if t is not None:
                os.close(t.fd)


def _make_root(dest: str) -> int:
    """mkdir DEST (0700 until its metadata is set) in its parent, and open it O_NOFOLLOW."""
    parent = os.path.dirname(os.path.abspath(dest))
    pfd = _open_dir(parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    name = os.path.basename(os.path.abspath(dest))
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass  # a concurrent merge made it: the lock decides
        except OSError as e:
            raise os_failure("mkdir", dest, e) from e
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            raise changed(dest, f"planned a new directory: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(pfd)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise changed(dest, "a directory of another user where DEST was made")
    return fd


def _summary(staged: str, dest: str, p: Plan, dry_run: bool) -> MergeSummary:
    return MergeSummary(
        staged=staged, dest=dest, dry_run=dry_run,
        added=tuple(i.rel for i in p.items if i.op == Op.MKDIR
                    or (i.op in (Op.COPY, Op.LINK) and not i.existed)),
        replaced=tuple(i.rel for i in p.items if i.op == Op.DIRMETA
                       or (i.op in (Op.COPY, Op.LINK) and i.existed)),
        unchanged=tuple(i.rel for i in p.items if i.op in (Op.SAME, Op.DIROK)),
        removed_temp=p.temps,
    )


def _write(staged: Tree, dest: Tree, p: Plan) -> None:
    w = Writer(staged, dest, p.items)
    try:
        w.start(ident(os.fstat(dest.fd)))
        for rel in p.temps:
            w.remove_temp(rel)
        for item in p.items[1:]:
            if item.op == Op.MKDIR:
                w.mkdir(item)
            elif item.op == Op.COPY:
                w.copy(item)
            elif item.op == Op.LINK:
                w.link(item)
        w.flush()
        # directories last and bottom-up, so filling them does not change their times again
        for item in reversed(p.items):
            if item.op in (Op.MKDIR, Op.DIRMETA):
                w.dirmeta(item)
        w.finish()
    except BaseException:
        w.abort()
        raise
    finally:
        w.close()
