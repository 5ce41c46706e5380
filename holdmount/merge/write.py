"""Writing a planned merge: temp entries in the target's own directory, made durable in
batches, renamed over their targets; directories' metadata last. Every call is relative to a
directory fd checked to be the planned directory (tree.py), and every new entry's metadata is set
through an fd of the entry itself (or, for a symlink, by name without following it)."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from holdmount.errors import Failure
from holdmount.merge import durable
from holdmount.merge.entry import fail, set_meta, write_temp
from holdmount.merge.model import Ident, Item, Op, ident, split, temp_name
from holdmount.merge.tree import (
    Tree,
    changed,
    check,
    xattrs,
)

# xattr namespaces we own on existing DEST directories (others belong to the system: selinux...)
_OWNED_XATTR_NS = ("user.", "trusted.")


def unlink_quiet(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A temp entry written (or, for a hardlink, to be linked) and not yet renamed."""

    rel_dir: str
    tmp: str  # "" for a hardlink: its temp name is made when it is installed
    name: str
    link: Item | None  # hardlink: the item to link


class Writer:
    def __init__(self, staged: Tree, dest: Tree, items: tuple[Item, ...]) -> None:
        self.staged, self.dest = staged, dest
        self.fs = durable.Filesystems()
        # identities of the directories: STAGED's as planned, DEST's as planned or made
        self.staged_ids = {i.rel: ident(i.st) for i in items if stat.S_ISDIR(i.st.st_mode)}
        self.dest_ids: dict[str, Ident] = {i.rel: i.dest_id for i in items
                                           if i.dest_id is not None and i.op != Op.LINK}
        self.copies: dict[str, Ident] = {}  # rel of a first name -> its DEST copy
        self.dirty: set[str] = set()  # DEST directories whose entries or metadata changed
        self.pending: list[_Pending] = []
        self.pending_bytes = 0
        self.pending_devs: set[int] = set()
        # the directory being written: rel, its STAGED and DEST fds, DEST's device
        self.cur_rel: str | None = None
        self.cur_sfd = self.cur_dfd = -1
        self.cur_dev = 0

    def start(self, root: Ident) -> None:
        """Open DEST's filesystem before writing: syncfs() reports writeback errors from here."""
        self.dest_ids["."] = root
        self.fs.register(self.dest.fd)

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
        self.cur_sfd = self.staged.open_dir(rel, self.staged_ids[rel])
        self.cur_dfd = self.dest.open_dir(rel, self.dest_ids[rel])
        self.cur_dev = self.fs.register(self.cur_dfd)
        self.cur_rel = rel

    def close(self) -> None:
        self._leave()
        self.fs.close()

    def _queue(self, p: _Pending, size: int) -> None:
        self.pending.append(p)
        self.pending_bytes += size
        self.pending_devs.add(self.cur_dev)
        if len(self.pending) >= durable.BATCH_FILES or self.pending_bytes >= durable.BATCH_BYTES:
            self.flush()

    def copy(self, item: Item) -> None:
        rel_dir, name = split(item.rel)
        self._enter(rel_dir)
        tmp = temp_name(name)
        try:
            got = write_temp(self.staged, self.cur_sfd, self.cur_dfd, item, name, tmp,
                             where=self._tmp_path(tmp), sync=self.fs.per_file(self.cur_dev))
        except BaseException:
            unlink_quiet(tmp, self.cur_dfd)
            raise
        if got is not None:
            self.copies[item.rel] = got
        self._queue(_Pending(rel_dir, tmp, name, None),
                    item.st.st_size if stat.S_ISREG(item.st.st_mode) else 0)

    def _tmp_path(self, tmp: str) -> str:
        return os.path.join(self.dest.at(self.cur_rel or "."), tmp)

    def link(self, item: Item) -> None:
        """Queued: linked and renamed in order with the batch, after the first name's rename."""
        rel_dir, name = split(item.rel)
        self._enter(rel_dir)
        self._queue(_Pending(rel_dir, "", name, item), 0)

    def _install_link(self, p: _Pending, dfd: int) -> str:
        """link() the first name's DEST copy to a temp name in `dfd`, checked to be that copy."""
        item = p.link
        assert item is not None and item.link_to is not None
        src_dir, src_name = split(item.link_to)
        want = item.dest_id or self.copies[item.link_to]
        tmp = temp_name(p.name)
        sfd = self.dest.open_dir(src_dir, self.dest_ids[src_dir])
        try:
            os.link(src_name, tmp, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            check(self.dest.at(item.link_to), os.stat(tmp, dir_fd=dfd, follow_symlinks=False),
                  want)
        except OSError as e:
            raise fail("link", os.path.join(self.dest.at(p.rel_dir), tmp), e) from e
        except BaseException:
            unlink_quiet(tmp, dfd)
            raise
        finally:
            os.close(sfd)
        return tmp

    def flush(self) -> None:
        """Make the batch's temp files durable (syncfs), then rename them over their targets."""
        if not self.pending:
            return
        try:
            self.fs.sync(self.pending_devs)
        except OSError as e:
            raise fail("syncfs", self.dest.path, e) from e
        self.pending_devs.clear()
        open_rel: str | None = None
        dfd, owned, done = -1, False, 0
        try:
            for p in self.pending:
                done += 1  # from here on this entry is ours to finish or to clean up
                if p.rel_dir != open_rel:
                    if owned:
                        os.close(dfd)
                        owned = False
                    if p.rel_dir == self.cur_rel:
                        dfd = self.cur_dfd
                    else:
                        dfd, owned = self._open_quiet(p), True
                    open_rel = p.rel_dir
                    self.dirty.add(p.rel_dir)
                tmp = self._install_link(p, dfd) if p.link is not None else p.tmp
                try:
                    os.rename(tmp, p.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError as e:
                    unlink_quiet(tmp, dfd)
                    raise fail("rename", self.dest.at(f"{p.rel_dir}/{p.name}"), e) from e
                if p.link is not None:  # rename() onto the same inode is a no-op
                    unlink_quiet(tmp, dfd)
        finally:
            if owned:
                os.close(dfd)
            del self.pending[:done]
            if not self.pending:
                self.pending_bytes = 0

    def _open_quiet(self, p: _Pending) -> int:
        """DEST directory of a pending entry (counted done: when this fails, its temp file is
        removed here, if it still can be)."""
        try:
            return self.dest.open_dir(p.rel_dir, self.dest_ids[p.rel_dir])
        except BaseException:
            self._unlink_pending(p)
            raise

    def _unlink_pending(self, p: _Pending) -> None:
        if not p.tmp:
            return
        try:
            fd = self.dest.open_dir(p.rel_dir, self.dest_ids[p.rel_dir])
        except (OSError, Failure):
            return
        unlink_quiet(p.tmp, fd)
        os.close(fd)

    def abort(self) -> None:
        """A merge that fails: remove the temp files not yet renamed (quietly)."""
        for p in self.pending:
            self._unlink_pending(p)
        self.pending.clear()

    def mkdir(self, item: Item) -> None:
        """mkdirat 0700, then check that the name is the directory just made (a directory that
        another process put there is accepted only if it is ours, e.g. a concurrent root)."""
        parent, name = split(item.rel)
        self._enter(parent)
        path = self.dest.at(item.rel)
        try:
            os.mkdir(name, 0o700, dir_fd=self.cur_dfd)
        except FileExistsError:
            pass
        except OSError as e:
            raise fail("mkdir", path, e) from e
        fd = self._open_new_dir(name, path)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_uid != os.geteuid():
            raise changed(path, f"a directory of uid {st.st_uid} where one was made")
        self.dest_ids[item.rel] = ident(st)
        self.dirty.add(parent)

    def _open_new_dir(self, name: str, path: str) -> int:
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=self.cur_dfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise changed(path, f"planned a new directory: {os.strerror(e.errno or 0)}"
                              ) from e
            raise fail("open", path, e) from e

    def dirmeta(self, item: Item) -> None:
        """Owner, mode, xattrs (ours replaced, the system's kept) and times of a directory, set
        through its fd once its contents are in."""
        path = self.dest.at(item.rel)
        sfd = self.staged.open_dir(item.rel, self.staged_ids[item.rel])
        try:
            dfd = self.dest.open_dir(item.rel, self.dest_ids[item.rel])
            try:
                want = xattrs(sfd)
                for name in xattrs(dfd):
                    if name.startswith(_OWNED_XATTR_NS) and name not in want:
                        os.removexattr(dfd, name)
                set_meta(dfd, item.st, want)
            finally:
                os.close(dfd)
        except OSError as e:
            raise fail("set metadata of", path, e) from e
        finally:
            os.close(sfd)
        self.dirty.add(item.rel)

    def remove_temp(self, rel: str) -> None:
        parent, name = split(rel)
        self._enter(parent)
        try:
            os.unlink(name, dir_fd=self.cur_dfd)
        except FileNotFoundError:
            return
        except OSError as e:
            raise fail("unlink", self.dest.at(rel), e) from e
        self.dirty.add(parent)

    def finish(self) -> None:
        """Everything durable: syncfs() each filesystem written to; on fsync-only ones (FUSE)
        fsync every changed directory, deepest first."""
        self._leave()
        dirty = self.dirty if self.fs.fsync_devs else set()
        for rel in sorted(dirty, key=lambda r: -1 if r == "." else len(r), reverse=True):
            fd = self.dest.open_dir(rel, self.dest_ids[rel])
            try:
                if self.fs.per_file(self.fs.register(fd)):
                    os.fsync(fd)
            except OSError as e:
                raise fail("fsync", self.dest.at(rel), e) from e
            finally:
                os.close(fd)
        try:
            self.fs.sync()
        except OSError as e:
            raise fail("syncfs", self.dest.path, e) from e

