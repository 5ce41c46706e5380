"""Planning a merge: what each STAGED entry needs in DEST, read through directory fds only, and
every check that can refuse the merge before anything is written."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from holdmount.errors import Exit, die, os_failure
from holdmount.merge.model import Ident, Item, Op, Plan, ident, is_temp_name, rel_join
from holdmount.merge.tree import FILE_FLAGS, Tree, entry_path, same_bytes, xattrs


def _same_meta(s: os.stat_result, d: os.stat_result) -> bool:
    return (s.st_mode == d.st_mode and s.st_uid == d.st_uid and s.st_gid == d.st_gid
            and s.st_mtime_ns == d.st_mtime_ns)


def _listing(tree: Tree, fd: int, rel: str) -> dict[str, os.stat_result]:
    """name -> lstat of every entry of the open directory `fd` (`rel` of `tree`)."""
    out: dict[str, os.stat_result] = {}
    try:
        with os.scandir(fd) as it:
            for e in it:
                try:
                    out[e.name] = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    pass  # gone between readdir and lstat: not there
    except OSError as e:
        raise os_failure("scandir", tree.at(rel), e) from e
    return out


@dataclasses.dataclass
class _Dir:
    """One directory being planned: its fds in STAGED and DEST (-1: DEST has none yet)."""

    rel: str
    sfd: int
    dfd: int
    dest: dict[str, os.stat_result]


class _Planner:
    def __init__(self, staged: Tree, dest: Tree | None) -> None:
        self.staged, self.dest = staged, dest
        self.items: list[Item] = []
        self.temps: list[str] = []
        self.new_bytes = self.new_inodes = 0
        self.first_name: dict[Ident, str] = {}  # STAGED inode -> rel of its first name
        self.first_dest: dict[Ident, Ident | None] = {}  # ... -> its DEST inode if kept
        self.owner: dict[Ident, Ident] = {}  # DEST inode kept -> the STAGED inode it stands for

    def _dest_path(self, rel: str) -> str:
        return self.dest.at(rel) if self.dest else rel

    def directory(self, d: _Dir, name: str, st: os.stat_result) -> Ident | None:
        """Plan the subdirectory `name` of `d`; its DEST identity (None: to be made)."""
        rel = rel_join(d.rel, name)
        have = d.dest.get(name)
        if have is None:
            self.items.append(Item(rel, st, Op.MKDIR))
            self.new_inodes += 1
            return None
        if not stat.S_ISDIR(have.st_mode):
            what = "a symlink" if stat.S_ISLNK(have.st_mode) else "not a directory"
            die(f"merge({self._dest_path(rel)}): {what} in DEST where STAGED has a directory "
                f"({self.staged.at(rel)})",
                hint="move it away in DEST or fix STAGED, then rerun; nothing was written",
                code=Exit.DATAERR)
        same = (_same_meta(st, have) and xattrs(entry_path(d.sfd, name))
                == xattrs(entry_path(d.dfd, name)))
        self.items.append(Item(rel, st, Op.DIROK if same else Op.DIRMETA, existed=True,
                               dest_id=ident(have)))
        return ident(have)

    def entry(self, d: _Dir, name: str, st: os.stat_result) -> None:
        rel = rel_join(d.rel, name)
        if stat.S_ISSOCK(st.st_mode):
            die(f"merge({self.staged.at(rel)}): is a socket, which cannot be merged",
                hint="remove it from STAGED (sockets are created by the program that listens)",
                code=Exit.DATAERR)
        have = d.dest.get(name)
        if have is not None and stat.S_ISDIR(have.st_mode):
            die(f"merge({self._dest_path(rel)}): a directory in DEST where STAGED has a file "
                f"({self.staged.at(rel)})",
                hint="move it away in DEST or fix STAGED, then rerun; nothing was written",
                code=Exit.DATAERR)
        key = ident(st)
        if st.st_nlink > 1 and key in self.first_name:
            kept = self.first_dest[key]
            if have is not None and kept is not None and ident(have) == kept:
                self.items.append(Item(rel, st, Op.SAME, existed=True))
            else:
                self.items.append(Item(rel, st, Op.LINK, link_to=self.first_name[key],
                                       existed=have is not None, dest_id=kept))
            return
        self.first_name[key] = rel
        if (have is not None and self.owner.get(ident(have), key) == key
                and self._same(d, rel, name, st, have)):
            self.items.append(Item(rel, st, Op.SAME, existed=True))
            self.owner[ident(have)] = key
            self.first_dest[key] = ident(have)
            return
        self.items.append(Item(rel, st, Op.COPY, existed=have is not None))
        self.first_dest[key] = None
        self.new_inodes += 1
        if stat.S_ISREG(st.st_mode):
            self.new_bytes += st.st_size

    def _same(self, d: _Dir, rel: str, name: str, s: os.stat_result,
              t: os.stat_result) -> bool:
        if not _same_meta(s, t):
            return False
        if stat.S_ISREG(s.st_mode) and s.st_size != t.st_size:
            return False
        if ((stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode)) and s.st_rdev != t.st_rdev):
            return False
        assert self.dest is not None
        try:
            if stat.S_ISLNK(s.st_mode) and (os.readlink(name, dir_fd=d.sfd)
                                            != os.readlink(name, dir_fd=d.dfd)):
                return False
            if xattrs(entry_path(d.sfd, name)) != xattrs(entry_path(d.dfd, name)):
                return False
        except OSError as e:
            raise os_failure("compare", self.staged.at(rel), e) from e
        if not stat.S_ISREG(s.st_mode):
            return True
        a = self.staged.open_entry(d.sfd, rel, name, s)
        try:
            b = self.dest.open_entry(d.dfd, rel, name, t, FILE_FLAGS)
            try:
                return same_bytes(a, b)
            finally:
                os.close(b)
        finally:
            os.close(a)

    def walk(self, root_st: os.stat_result, dest_root: Ident | None) -> None:
        """Every STAGED directory in turn (parents first, names sorted), each by its fds."""
        stack: list[tuple[str, Ident, Ident | None]] = [(".", ident(root_st), dest_root)]
        while stack:
            rel, sid, did = stack.pop()
            sfd = self.staged.open_dir(rel, sid)
            dfd = -1
            try:
                listing: dict[str, os.stat_result] = {}
                if did is not None and self.dest is not None:
                    dfd = self.dest.open_dir(rel, did)
                    listing = _listing(self.dest, dfd, rel)
                d = _Dir(rel, sfd, dfd, listing)
                subdirs = self._one_dir(d)
            finally:
                os.close(sfd)
                if dfd >= 0:
                    os.close(dfd)
            stack.extend(reversed(subdirs))

    def _one_dir(self, d: _Dir) -> list[tuple[str, Ident, Ident | None]]:
        entries = sorted(_listing(self.staged, d.sfd, d.rel).items())
        names = {name for name, _ in entries}
        for name, have in d.dest.items():
            if is_temp_name(name) and name not in names and not stat.S_ISDIR(have.st_mode):
                self.temps.append(rel_join(d.rel, name))
        subdirs = []
        for name, st in entries:
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((rel_join(d.rel, name), ident(st), self.directory(d, name, st)))
            else:
                self.entry(d, name, st)
        return subdirs


def plan(staged: Tree, dest: Tree | None, root_st: os.stat_result) -> Plan:
    """The plan: one item per STAGED entry, parents before children, DEST's root first."""
    p = _Planner(staged, dest)
    dest_root: Ident | None = None
    if dest is None:
        p.items.append(Item(".", root_st, Op.MKDIR))
        p.new_inodes += 1
    else:
        dst = os.fstat(dest.fd)
        dest_root = ident(dst)
        same = _same_meta(root_st, dst) and xattrs(staged.fd) == xattrs(dest.fd)
        p.items.append(Item(".", root_st, Op.DIROK if same else Op.DIRMETA, existed=True,
                            dest_id=dest_root))
    p.walk(root_st, dest_root)
    return Plan(tuple(p.items), tuple(p.temps), p.new_bytes, p.new_inodes)


def preflight(dest: str, dest_fd: int | None, plan: Plan) -> None:
    """Refuse, before writing, a read-only DEST or one without room for the new entries."""
    where = dest if dest_fd is not None else os.path.dirname(os.path.abspath(dest))
    try:
        vfs = os.statvfs(dest_fd if dest_fd is not None else where)
    except OSError as e:
        raise os_failure("statvfs", where, e) from e
    if vfs.f_flag & os.ST_RDONLY:
        die(f"merge({dest}): {os.strerror(errno.EROFS)}",
            hint="remount DEST's filesystem read-write (or pick another DEST); nothing was "
            "written", code=Exit.CANTCREAT)
    bsize = vfs.f_frsize or vfs.f_bsize or 4096
    need = plan.new_bytes + bsize * (plan.new_inodes + 1)
    have = vfs.f_bavail * bsize
    if need > have:
        die(f"merge({dest}): {os.strerror(errno.ENOSPC)}: the new files need about "
            f"{need} bytes, {have} are available",
            hint="free space on DEST's filesystem (or grow it) and rerun; nothing was written",
            code=Exit.CANTCREAT)
    if vfs.f_files and plan.new_inodes + 1 > vfs.f_favail:
        die(f"merge({dest}): {os.strerror(errno.ENOSPC)}: {plan.new_inodes + 1} inodes "
            f"needed, {vfs.f_favail} free",
            hint="free inodes on DEST's filesystem (or grow it) and rerun; nothing was written",
            code=Exit.CANTCREAT)
