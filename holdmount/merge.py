"""Merge a staged tree into its destination by copy + rename, never by link() from the stage.

For every non-directory of STAGED: a temp file `.holdmount-merge.<name>.<8 hex>` is written in
the target's own directory (data by copy_file_range where the kernel can, else read/write; owner,
mode, xattrs, timestamps), fsync'ed, then renamed over the target. So at any instant every DEST
file is either the old or the new one, /proc/PID/exe of running programs keeps naming DEST, no
DEST file shares an inode with STAGED, and STAGED may be on another filesystem (tmpfs).

Files hardlinked together inside STAGED stay hardlinked in DEST: later names are linked to the
first name's DEST copy. Directories are created (0700 while they fill) and get their metadata
after their contents, bottom-up. A run that was killed leaves at most recognisable temp files and
directories still waiting for their metadata: the rerun finishes the merge and removes the temps.

Everything that can be checked before writing is checked first (STAGED exists and is a directory,
no file/directory conflicts, DEST writable and not a layer of a mounted overlay, enough space and
inodes), so a refused merge writes nothing.

`merge_tree(staged, dest, *, dry_run=False) -> MergeSummary` is the stable entry point (the CLI
verb and the daemon's `merge` action both call it).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import random
import re
import stat
from collections.abc import Iterator

from holdmount import overlay, syscalls
from holdmount.errors import Exit, Failure, die, os_failure

TEMP_PREFIX = ".holdmount-merge."
_rng = random.Random(os.urandom(16))
_TEMP_NAME = re.compile(r"\.holdmount-merge\..*\.[0-9a-f]{8}", re.DOTALL)
_NAME_MAX = 255
_CHUNK = 1 << 20
# xattr namespaces we own on existing DEST directories (others belong to the system: selinux...)
_OWNED_XATTR_NS = ("user.", "trusted.")

_RERUN_HINT = ("every DEST file is still either the old or the new one: fix the cause and rerun "
               "the same merge; it completes the merge and removes leftover "
               f"{TEMP_PREFIX}* temp files")


def is_temp_name(name: str) -> bool:
    """A name this module gives its temp files (what a rerun cleans up)."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_name(name: str) -> str:
    """`.holdmount-merge.<name>.<8 hex>`, with <name> cut so the result fits NAME_MAX bytes."""
    suffix = f".{_rng.getrandbits(32):08x}"  # unique enough: created O_EXCL
    room = _NAME_MAX - len(TEMP_PREFIX) - len(suffix)
    raw = os.fsencode(name)[:room]
    return TEMP_PREFIX + os.fsdecode(raw) + suffix


@dataclasses.dataclass(frozen=True)
class MergeSummary:
    """What a merge did (or, with dry_run, would do). Paths are relative to DEST ("." = DEST)."""

    staged: str
    dest: str
    dry_run: bool
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed_temp: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "replaced": len(self.replaced),
                "unchanged": len(self.unchanged), "removed_temp": len(self.removed_temp)}

    def to_json(self) -> dict[str, object]:
        return {"staged": self.staged, "dest": self.dest, "dry_run": self.dry_run,
                "counts": self.counts(), "added": list(self.added),
                "replaced": list(self.replaced), "unchanged": list(self.unchanged),
                "removed_temp": list(self.removed_temp)}

    def line(self) -> str:
        c = self.counts()
        verb = "would merge" if self.dry_run else "merged"
        return (f"{verb} {self.staged} into {self.dest}: {c['added']} added, {c['replaced']} "
                f"replaced, {c['unchanged']} unchanged, {c['removed_temp']} temp files removed")


# --- planning ---------------------------------------------------------------------------------

class _Op:
    MKDIR = "mkdir"  # create a directory (metadata later)
    DIRMETA = "dirmeta"  # existing directory: metadata differs
    DIROK = "dirok"  # existing directory, equal
    COPY = "copy"  # write a new copy (regular file, symlink, device node, fifo)
    LINK = "link"  # hardlink to the DEST copy of an earlier name of the same STAGED inode
    SAME = "same"  # equal already


@dataclasses.dataclass
class _Item:
    rel: str
    st: os.stat_result
    op: str
    link_to: str | None = None  # for LINK: rel of the first name
    existed: bool = False  # DEST had something at rel when planned


def _at(base: str, rel: str) -> str:
    return base if rel == "." else os.path.join(base, rel)


def _rel_join(a: str, b: str) -> str:
    return b if a == "." else f"{a}/{b}"


def _xattrs(path: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca = fa.read(_CHUNK)
            if ca != fb.read(_CHUNK):
                return False
            if not ca:
                return True


def _same_meta(s: os.stat_result, d: os.stat_result, *, times: bool = True) -> bool:
    return (s.st_mode == d.st_mode and s.st_uid == d.st_uid and s.st_gid == d.st_gid
            and (not times or s.st_mtime_ns == d.st_mtime_ns))


def _same_entry(src: str, s: os.stat_result, dst: str, d: os.stat_result) -> bool:
    if not _same_meta(s, d):
        return False
    if stat.S_ISREG(s.st_mode):
        if s.st_size != d.st_size:
            return False
    elif stat.S_ISLNK(s.st_mode):
        if os.readlink(src) != os.readlink(dst):
            return False
    elif (stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode)) and s.st_rdev != d.st_rdev:
        return False
    if _xattrs(src) != _xattrs(dst):
        return False
    return not stat.S_ISREG(s.st_mode) or _same_bytes(src, dst)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_failure("lstat", path, e) from e


def _walk(staged: str) -> Iterator[tuple[str, os.stat_result]]:
    """(rel, lstat) of every entry below STAGED, parents before children, sorted by name."""
    stack = ["."]
    while stack:
        rel_dir = stack.pop()
        path = os.path.join(staged, rel_dir)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            raise os_failure("scandir", path, e) from e
        subdirs = []
        for entry in entries:
            rel = _rel_join(rel_dir, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise os_failure("lstat", entry.path, e) from e
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


@dataclasses.dataclass
class _Plan:
    items: list[_Item]
    temps: list[str]  # leftover temp files in DEST (rel)
    new_bytes: int
    new_inodes: int


def _plan(staged: str, dest: str, root_st: os.stat_result) -> _Plan:
    items: list[_Item] = []
    temps: list[str] = []
    new_bytes = 0
    new_inodes = 0
    first_name: dict[tuple[int, int], str] = {}  # STAGED inode -> rel of its first name
    first_dest_ino: dict[tuple[int, int], int | None] = {}  # ... -> its DEST inode if kept
    # DEST inode kept -> the STAGED inode it stands for
    owner: dict[tuple[int, int], tuple[int, int]] = {}
    # DEST's entries of a directory planned but not yet walked (None: DEST has no such directory)
    listings: dict[str, dict[str, os.DirEntry[str]] | None] = {}

    def plan_dir(rel: str, st: os.stat_result) -> None:
        nonlocal new_inodes
        dpath = _at(dest, rel)
        d = _lstat(dpath)
        if d is None:
            items.append(_Item(rel, st, _Op.MKDIR))
            new_inodes += 1
            listings[rel] = None
            return
        if not stat.S_ISDIR(d.st_mode):
            kind = "a symlink" if stat.S_ISLNK(d.st_mode) else "not a directory"
            die(f"merge({dpath}): {kind} in DEST where STAGED has a directory "
                f"({_at(staged, rel)})",
                hint="move it away in DEST or fix STAGED, then rerun; nothing was written",
                code=Exit.DATAERR)
        same = (_same_meta(st, d) and _xattrs(_at(staged, rel)) == _xattrs(dpath))
        items.append(_Item(rel, st, _Op.DIROK if same else _Op.DIRMETA, existed=True))
        try:
            with os.scandir(dpath) as it:
                listing = {ent.name: ent for ent in it}
        except OSError as e:
            raise os_failure("scandir", dpath, e) from e
        listings[rel] = listing
        staged_here: set[str] | None = None
        for name, ent in listing.items():
            if is_temp_name(name):
                if staged_here is None:
                    staged_here = set(os.listdir(_at(staged, rel)))
                if name not in staged_here and not ent.is_dir(follow_symlinks=False):
                    temps.append(_rel_join(rel, name))

    plan_dir(".", root_st)
    cur_parent: str | None = None
    here: dict[str, os.DirEntry[str]] | None = None
    for rel, st in _walk(staged):
        parent, _, name = rel.rpartition("/")
        parent = parent or "."
        if parent != cur_parent:  # _walk yields a directory's entries together
            cur_parent, here = parent, listings.pop(parent)
        spath = _at(staged, rel)
        if stat.S_ISDIR(st.st_mode):
            plan_dir(rel, st)
            continue
        if stat.S_ISSOCK(st.st_mode):
            die(f"merge({spath}): is a socket, which cannot be merged",
                hint="remove it from STAGED (sockets are created by the program that listens)",
                code=Exit.DATAERR)
        dpath = _at(dest, rel)
        found = here.get(name) if here is not None else None
        try:
            d = found.stat(follow_symlinks=False) if found is not None else None
        except FileNotFoundError:
            d = None
        except OSError as e:
            raise os_failure("lstat", dpath, e) from e
        if d is not None and stat.S_ISDIR(d.st_mode):
            die(f"merge({dpath}): a directory in DEST where STAGED has a file ({spath})",
                hint="move it away in DEST or fix STAGED, then rerun; nothing was written",
                code=Exit.DATAERR)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in first_name:
            kept = first_dest_ino[key]
            if d is not None and kept is not None and d.st_ino == kept:
                items.append(_Item(rel, st, _Op.SAME, existed=True))
            else:
                items.append(_Item(rel, st, _Op.LINK, link_to=first_name[key],
                                   existed=d is not None))
            continue
        first_name[key] = rel
        if (d is not None and owner.get((d.st_dev, d.st_ino), key) == key
                and _same_entry(spath, st, dpath, d)):
            items.append(_Item(rel, st, _Op.SAME, existed=True))
            owner[(d.st_dev, d.st_ino)] = key
            first_dest_ino[key] = d.st_ino
        else:
            items.append(_Item(rel, st, _Op.COPY, existed=d is not None))
            first_dest_ino[key] = None
            new_inodes += 1
            if stat.S_ISREG(st.st_mode):
                new_bytes += st.st_size
    return _Plan(items, temps, new_bytes, new_inodes)


# --- preflight --------------------------------------------------------------------------------

def _existing_ancestor(path: str) -> str:
    while not os.path.lexists(path) and path not in ("/", ""):
        path = os.path.dirname(path)
    return path or "/"


def _preflight(dest: str, plan: _Plan) -> None:
    where = _existing_ancestor(dest)
    try:
        vfs = os.statvfs(where)
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


# --- writing ----------------------------------------------------------------------------------

# Temp files are written in batches: a batch is made durable by one syncfs() per filesystem it
# wrote to, then renamed over its targets (and the end of the merge syncfs()es once more). The
# batch is bounded, so a huge merge never has more than this many temp files, or bytes waiting
# for the disk, at once.
_BATCH_FILES = 1000
_BATCH_BYTES = 256 << 20
# FUSE: syncfs() flushes the server's files only when the server implements FUSE_SYNCFS, so there
# every file and changed directory is fsync'ed instead (the per-file way)
_FUSE_SUPER_MAGIC = 0x65735546
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _copy_data(src_fd: int, dst_fd: int) -> None:
    try:
        while os.copy_file_range(src_fd, dst_fd, _CHUNK * 64):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                           errno.ENOTSUP, errno.EBADF):
            raise
    # the kernel cannot: copy by hand from wherever copy_file_range stopped
    os.lseek(dst_fd, os.lseek(src_fd, 0, os.SEEK_CUR), os.SEEK_SET)
    while True:
        buf = os.read(src_fd, _CHUNK)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            view = view[os.write(dst_fd, view):]


def _set_xattrs(target: str | int, values: dict[str, bytes], *, follow: bool = True) -> None:
    for name, value in values.items():
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=follow)


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent or ".", name


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A temp file written (or, for a hardlink, to be linked) and not yet renamed."""

    rel_dir: str
    tmp: str  # "" for a hardlink: its temp name is made when it is installed
    name: str
    link_src: str | None  # hardlink: the DEST path of the inode's first name


class _Writer:
    def __init__(self, staged: str, dest: str) -> None:
        self.staged = staged
        self.dest = dest
        self.dirty: set[str] = set()  # DEST directories whose entries or metadata changed
        self.sync_fds: dict[int, int] = {}  # st_dev -> an fd there, opened before writing
        self.fsync_devs: set[int] = set()  # filesystems where each file is fsync'ed instead
        self.pending: list[_Pending] = []
        self.pending_bytes = 0
        self.pending_devs: set[int] = set()
        # the directory being written: rel, its STAGED and DEST fds, DEST's device
        self.cur_rel: str | None = None
        self.cur_sfd = -1
        self.cur_dfd = -1
        self.cur_dev = 0

    def _fail(self, call: str, path: str, exc: OSError) -> Failure:
        f = os_failure(call, path, exc)
        hint = f"{f.hint}; {_RERUN_HINT}" if f.hint else _RERUN_HINT
        return Failure(f.message, hint=hint, code=f.code)

    def _register(self, fd: int) -> int:
        """The device of `fd` (a DEST directory); the first time: keep an fd for syncfs()."""
        dev = os.fstat(fd).st_dev
        if dev not in self.sync_fds:
            self.sync_fds[dev] = os.dup(fd)
            if syscalls.fstatfs(fd).f_type == _FUSE_SUPER_MAGIC:
                self.fsync_devs.add(dev)
        return dev

    def start(self) -> None:
        """Open DEST's filesystem before writing: syncfs() reports writeback errors from here."""
        try:
            fd = os.open(self.dest, _DIR_FLAGS)
            try:
                self._register(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._fail("open", self.dest, e) from e

    def _leave(self) -> None:
        for fd in (self.cur_sfd, self.cur_dfd):
            if fd >= 0:
                os.close(fd)
        self.cur_rel, self.cur_sfd, self.cur_dfd = None, -1, -1

    def _enter(self, rel: str) -> None:
        """Make `rel` the directory being written (dir_fd-relative calls from here on)."""
        if rel == self.cur_rel:
            return
        self._leave()
        spath, dpath = _at(self.staged, rel), _at(self.dest, rel)
        try:
            self.cur_sfd = os.open(spath, _DIR_FLAGS)
        except OSError as e:
            raise self._fail("open", spath, e) from e
        try:
            self.cur_dfd = os.open(dpath, _DIR_FLAGS)
            self.cur_dev = self._register(self.cur_dfd)
        except OSError as e:
            raise self._fail("open", dpath, e) from e
        self.cur_rel = rel

    def close(self) -> None:
        self._leave()
        for fd in self.sync_fds.values():
            os.close(fd)
        self.sync_fds.clear()

    def _queue(self, p: _Pending, size: int) -> None:
        self.pending.append(p)
        self.pending_bytes += size
        self.pending_devs.add(self.cur_dev)
        if len(self.pending) >= _BATCH_FILES or self.pending_bytes >= _BATCH_BYTES:
            self.flush()

    def copy(self, item: _Item) -> None:
        rel_dir, name = _split(item.rel)
        self._enter(rel_dir)
        dfd = self.cur_dfd
        tmp = temp_name(name)
        st = item.st
        call, where = "create", ""
        try:
            if stat.S_ISREG(st.st_mode):
                self._write_regular(item.rel, name, tmp, st)
            else:
                spath = _at(self.staged, item.rel)
                xattrs = _xattrs(spath)
                if stat.S_ISLNK(st.st_mode):
                    call, where = "readlink", spath
                    link = os.readlink(name, dir_fd=self.cur_sfd)
                    call, where = "symlink", ""
                    os.symlink(link, tmp, dir_fd=dfd)
                else:
                    call = "mknod"
                    os.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dfd)
                call = "set metadata of"
                os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=dfd)
                if xattrs:
                    _set_xattrs(os.path.join(_at(self.dest, rel_dir), tmp), xattrs,
                                follow=False)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd,
                         follow_symlinks=False)
        except OSError as e:
            _unlink_quiet(tmp, dfd)
            raise self._fail(call, where or os.path.join(_at(self.dest, rel_dir), tmp),
                             e) from e
        except BaseException:
            _unlink_quiet(tmp, dfd)
            raise
        self._queue(_Pending(rel_dir, tmp, name, None),
                    st.st_size if stat.S_ISREG(st.st_mode) else 0)

    def _write_regular(self, rel: str, name: str, tmp: str, st: os.stat_result) -> None:
        try:
            sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.cur_sfd)
        except OSError as e:
            raise self._fail("open", _at(self.staged, rel), e) from e
        step = "create"
        try:
            dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=self.cur_dfd)
            try:
                step = "copy_file_range"
                _copy_data(sfd, dfd)
                step = "fchown"  # before chmod: chown drops set-id bits
                os.fchown(dfd, st.st_uid, st.st_gid)
                step = "fchmod"
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                step = "fsetxattr"  # after chown: chown drops security.capability
                names = os.listxattr(sfd)
                if names:
                    _set_xattrs(dfd, {k: os.getxattr(sfd, k) for k in names})
                step = "futimens"
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                if self.cur_dev in self.fsync_devs:
                    step = "fsync"
                    os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._fail(step, os.path.join(_at(self.dest, _split(rel)[0]), tmp), e) from e
        finally:
            os.close(sfd)

    def link(self, item: _Item) -> None:
        """Queued: linked and renamed in order with the batch, after the first name's rename."""
        assert item.link_to is not None
        rel_dir, name = _split(item.rel)
        self._enter(rel_dir)
        self._queue(_Pending(rel_dir, "", name, _at(self.dest, item.link_to)), 0)

    def flush(self) -> None:
        """Make the batch's temp files durable (syncfs), then rename them over their targets."""
        if not self.pending:
            return
        for dev in self.pending_devs - self.fsync_devs:
            try:
                syscalls.syncfs(self.sync_fds[dev])
            except OSError as e:
                raise self._fail("syncfs", self.dest, e) from e
        self.pending_devs.clear()
        open_rel: str | None = None
        dfd, owned, done = -1, False, 0
        try:
            for p in self.pending:
                done += 1  # from here on this entry is ours to finish or to clean up
                dpath = _at(self.dest, p.rel_dir)
                if p.rel_dir != open_rel:
                    if owned:
                        os.close(dfd)
                        owned = False
                    if p.rel_dir == self.cur_rel:
                        dfd = self.cur_dfd
                    else:
                        try:
                            dfd = os.open(dpath, _DIR_FLAGS)
                        except OSError as e:
                            _unlink_quiet(os.path.join(dpath, p.tmp) if p.tmp else "")
                            raise self._fail("open", dpath, e) from e
                        owned = True
                    open_rel = p.rel_dir
                    self.dirty.add(dpath)
                tmp = p.tmp
                if p.link_src is not None:
                    tmp = temp_name(p.name)
                    try:
                        os.link(p.link_src, tmp, dst_dir_fd=dfd, follow_symlinks=False)
                    except OSError as e:
                        raise self._fail("link", os.path.join(dpath, tmp), e) from e
                try:
                    os.rename(tmp, p.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError as e:
                    _unlink_quiet(tmp, dfd)
                    raise self._fail("rename", os.path.join(dpath, p.name), e) from e
                if p.link_src is not None:  # rename() onto the same inode is a no-op
                    _unlink_quiet(tmp, dfd)
        finally:
            if owned:
                os.close(dfd)
            del self.pending[:done]
            if not self.pending:
                self.pending_bytes = 0

    def abort(self) -> None:
        """A merge that fails: remove the temp files not yet renamed (quietly)."""
        for p in self.pending:
            if p.tmp:
                _unlink_quiet(os.path.join(_at(self.dest, p.rel_dir), p.tmp))
        self.pending.clear()

    def mkdir(self, item: _Item) -> None:
        path = _at(self.dest, item.rel)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # a killed run made it; its metadata comes with the others
        except OSError as e:
            raise self._fail("mkdir", path, e) from e
        self.dirty.add(os.path.dirname(path))

    def dirmeta(self, item: _Item) -> None:
        src = _at(self.staged, item.rel)
        path = _at(self.dest, item.rel)
        st = item.st
        try:
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            want = _xattrs(src)
            for name in _xattrs(path):
                if name.startswith(_OWNED_XATTR_NS) and name not in want:
                    os.removexattr(path, name)
            _set_xattrs(path, want)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as e:
            raise self._fail("set metadata of", path, e) from e
        self.dirty.add(path)

    def remove_temp(self, rel: str) -> None:
        path = _at(self.dest, rel)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._fail("unlink", path, e) from e
        self.dirty.add(os.path.dirname(path))

    def finish(self) -> None:
        """Everything durable: syncfs() each filesystem written to; on fsync-only ones (FUSE)
        fsync every changed directory, deepest first."""
        for d in sorted(self.dirty, key=len, reverse=True):
            try:
                fd = os.open(d, _DIR_FLAGS)
                try:
                    if self._register(fd) in self.fsync_devs:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise self._fail("fsync", d, e) from e
        for dev, fd in self.sync_fds.items():
            if dev not in self.fsync_devs:
                try:
                    syscalls.syncfs(fd)
                except OSError as e:
                    raise self._fail("syncfs", self.dest, e) from e


def _unlink_quiet(path: str, dir_fd: int | None = None) -> None:
    if not path:
        return
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


# --- entry point ------------------------------------------------------------------------------

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
    d = _lstat(dest)
    if d is None:
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            die(f"merge({dest}): {os.strerror(errno.ENOENT)} (nor its parent directory)",
                hint="create DEST's parent directory first", code=Exit.NOINPUT)
    elif not stat.S_ISDIR(d.st_mode):
        die(f"merge({dest}): DEST is not a directory",
            hint="name the directory to merge into", code=Exit.DATAERR)
    rs, rd = os.path.realpath(staged), os.path.realpath(dest)
    if rs == rd or rd.startswith(rs.rstrip("/") + "/") or rs.startswith(rd.rstrip("/") + "/"):
        die(f"merge({dest}): DEST and STAGED ({staged}) overlap",
            hint="stage into a directory outside DEST (and DEST outside it)", code=Exit.USAGE)
    return st


def _guard(staged: str, dest: str) -> None:
    overlay.refuse_if_overlay_layer(dest, call="merge")
    for lay, role, d in overlay.layer_dirs_under(dest):
        rel = os.path.relpath(d, os.path.realpath(dest))
        if os.path.lexists(_at(staged, rel)):
            die(f"merge({_at(dest, rel)}): STAGED writes into {role} {d} of the "
                f"overlay mounted on {lay.mount.mount_point}",
                hint=f"{overlay.KERNEL_DOC_REASON}. Leave it out of STAGED or unmount the "
                "overlay first", code=Exit.CANTCREAT)


def merge_tree(staged: str | os.PathLike[str], dest: str | os.PathLike[str], *,
               dry_run: bool = False) -> MergeSummary:
    """Merge the tree STAGED into DEST (see the module docstring). Raises `Failure`."""
    staged_s, dest_s = os.fspath(staged), os.fspath(dest)
    if os.path.islink(dest_s) and os.path.isdir(dest_s):
        dest_s = os.path.realpath(dest_s)  # DEST named through a symlink: merge into its target
    root_st = _check_inputs(staged_s, dest_s)
    _guard(staged_s, dest_s)
    # one merge into a DEST at a time, and the temp files we find are not a live merge's
    lock_fd = _lock(dest_s) if not dry_run and os.path.isdir(dest_s) else None
    try:
        return _merge(staged_s, dest_s, root_st, dry_run=dry_run, lock_fd=lock_fd)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _merge(staged_s: str, dest_s: str, root_st: os.stat_result, *, dry_run: bool,
           lock_fd: int | None) -> MergeSummary:
    plan = _plan(staged_s, dest_s, root_st)
    summary = MergeSummary(
        staged=staged_s, dest=dest_s, dry_run=dry_run,
        added=tuple(i.rel for i in plan.items if i.op == _Op.MKDIR
                    or (i.op in (_Op.COPY, _Op.LINK) and not i.existed)),
        replaced=tuple(i.rel for i in plan.items if i.op == _Op.DIRMETA
                       or (i.op in (_Op.COPY, _Op.LINK) and i.existed)),
        unchanged=tuple(i.rel for i in plan.items if i.op in (_Op.SAME, _Op.DIROK)),
        removed_temp=tuple(plan.temps),
    )
    if dry_run or (not plan.temps
                   and all(i.op in (_Op.SAME, _Op.DIROK) for i in plan.items)):
        return summary
    _preflight(dest_s, plan)
    w = _Writer(staged_s, dest_s)
    root = plan.items[0]
    if root.op == _Op.MKDIR:
        w.mkdir(root)
    own_lock = _lock(dest_s) if lock_fd is None else None  # DEST was only just created
    try:
        w.start()
        for rel in plan.temps:
            w.remove_temp(rel)
        for item in plan.items[1:]:
            if item.op == _Op.MKDIR:
                w.mkdir(item)
            elif item.op == _Op.COPY:
                w.copy(item)
            elif item.op == _Op.LINK:
                w.link(item)
        w.flush()
        # directories last and bottom-up, so filling them does not change their times again
        for item in reversed(plan.items):
            if item.op in (_Op.MKDIR, _Op.DIRMETA):
                w.dirmeta(item)
        w.finish()
    except BaseException:
        w.abort()
        raise
    finally:
        w.close()
        if own_lock is not None:
            os.close(own_lock)
    return summary


def _lock(dest: str) -> int:
    """flock(LOCK_EX) on DEST for the length of the merge: one merge into a DEST at a time."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_failure("open", dest, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            die(f"flock({dest}): another merge into DEST is running",
                hint="wait for it to end, then rerun", code=Exit.TEMPFAIL)
        raise os_failure("flock", dest, e) from e
    return fd
