"""The parse cache: an unchanged configuration file is not parsed again at the daemon's start.

Why: the daemon parses TOML in a forked child (`isolated`), so that it never holds `tomllib`;
fork, import and parse cost ~11 ms of a ~38 ms start to READY (measured). What it trusts: one
file, NAME, in the service's cache directory (systemd's `CacheDirectory=holdmount`:
`$CACHE_DIRECTORY`, the first one when there are several; without it there is no cache), and
only when the directory and the file, opened without following symlinks, are owned by this
process's euid and writable by no group or other, the file is regular and at most MAX_BYTES,
and it unmarshals to exactly (FORMAT, the Python version, {path: (text, doc)}), the doc made of
what a TOML parse gives. The ownership comes first: `marshal.loads` is not safe against
hostile bytes. Anything else is a miss (one debug line), never an error.

The key is the file's whole decoded text, per path: a one-byte edit is a miss. A hit is the doc
the child would have answered (dates and times as `isolated.Opaque`). A parse that fails is
never kept, so a broken file fails every time with the same message.

Writing: after a miss, by the parsing child once it has sent its answer (`isolated.run`'s
`after`): the daemon decodes the answer meanwhile and only waits for the child's exit (a
miss starts as fast as no cache, measured). The file
is replaced atomically (a temp file created O_EXCL|O_NOFOLLOW 0600 beside it, then renamed
over), so a concurrent daemon never reads a torn one; it may lose another's entry (a miss next
time). At most MAX_ENTRIES paths are kept, the oldest written dropped first. Any OSError skips
the write.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

from holdmount.config import isolated
from holdmount.log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

ENV = "CACHE_DIRECTORY"
NAME = "config.marshal"
FORMAT = 1
MAX_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 64
_DEPTH = 64  # deeper than any doc the reader accepts (MAX_NESTING arrays/tables, plus tables)
_VERSION = tuple(sys.version_info[:3])  # marshal's format and tomllib's answers can change
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class Untrusted(Exception):
    """Why the cache is not used (a miss)."""


def directory() -> str | None:
    """The cache directory systemd made for the service, or None: no cache."""
    return os.environ.get(ENV, "").split(":")[0] or None


def lookup(where: str, path: str, text: str) -> dict[str, Any] | None:
    """The doc kept for `path` with exactly this `text`, or None (a miss)."""
    try:
        entries = _read(where)
    except Untrusted as e:
        log.debug("config cache %s/%s not used: %s", where, NAME, e)
        return None
    entry = entries.get(path)
    if entry is None or entry[0] != text:
        return None
    if not _plain(entry[1], _DEPTH):
        log.debug("config cache %s/%s not used: %s is not a parsed document", where, NAME, path)
        return None
    doc: dict[str, Any] = isolated.arrived(entry[1])
    return doc


def store(where: str, path: str, text: str, doc: dict[str, Any]) -> None:
    """Keep `doc` as the parse of `text` at `path` (best effort: see the module's docstring)."""
    try:
        dir_fd = _open_dir(where)
    except (OSError, Untrusted) as e:
        log.debug("config cache %s not written: %s", where, e)
        return
    try:
        try:
            entries = _entries(dir_fd)
        except (OSError, Untrusted):
            entries = {}  # replaced below
        entries.pop(path, None)
        entries[path] = (text, isolated.carry(doc))
        while len(entries) > MAX_ENTRIES:
            del entries[next(iter(entries))]
        data = marshal.dumps((FORMAT, _VERSION, entries))
        while len(data) > MAX_BYTES and len(entries) > 1:
            del entries[next(iter(entries))]
            data = marshal.dumps((FORMAT, _VERSION, entries))
        if len(data) > MAX_BYTES:
            log.debug("config cache %s not written: %s alone is over %d bytes", where, path,
                      MAX_BYTES)
            return
        _replace(dir_fd, data)
    except OSError as e:
        log.debug("config cache %s not written: %s", where, os.strerror(e.errno or 0))
    finally:
        os.close(dir_fd)


# --- reading: the checks, in order ----------------------------------------------------------------

def _read(where: str) -> dict[str, tuple[str, Any]]:
    try:
        dir_fd = _open_dir(where)
    except OSError as e:
        raise Untrusted(os.strerror(e.errno or 0)) from None
    try:
        return _entries(dir_fd)
    except FileNotFoundError:
        return {}  # nothing written yet
    except OSError as e:
        raise Untrusted(os.strerror(e.errno or 0)) from None
    finally:
        os.close(dir_fd)


def _open_dir(where: str) -> int:
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
    try:
        _owned(os.fstat(fd), "the directory")
    except Untrusted:
        os.close(fd)
        raise
    return fd


def _owned(st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise Untrusted(f"{what} is owned by uid {st.st_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(f"{what} is writable by group or others ({st.st_mode & 0o7777:o})")


def _entries(dir_fd: int) -> dict[str, tuple[str, Any]]:
    fd = os.open(NAME, os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted("not a regular file")
        _owned(st, "the file")
        data = bytearray()
        while chunk := os.read(fd, MAX_BYTES + 1 - len(data)):
            data += chunk
            if len(data) > MAX_BYTES:
                raise Untrusted(f"larger than {MAX_BYTES} bytes")
    finally:
        os.close(fd)
    try:
        value = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        raise Untrusted("not marshal data") from None
    return _shape(value)


def _shape(value: object) -> dict[str, tuple[str, Any]]:
    if not (isinstance(value, tuple) and len(value) == 3 and value[0] == FORMAT):
        raise Untrusted(f"not format {FORMAT}")
    if value[1] != _VERSION:
        raise Untrusted(f"written by Python {value[1]!r}")
    entries = value[2]
    if not (isinstance(entries, dict) and all(
            isinstance(k, str) and isinstance(v, tuple) and len(v) == 2
            and isinstance(v[0], str) and isinstance(v[1], dict) for k, v in entries.items())):
        raise Untrusted("not a table of path -> (text, doc)")
    return entries


def _plain(value: object, depth: int) -> bool:
    """`value` is what `isolated.carry` makes of a TOML document, at most `depth` deep."""
    if isinstance(value, (str, int, float)):
        return True
    if isinstance(value, tuple):  # a date or time: (type name, repr)
        return len(value) == 2 and all(isinstance(v, str) for v in value)
    if depth <= 0:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


# --- writing --------------------------------------------------------------------------------------

def _replace(dir_fd: int, data: bytes) -> None:
    temp = f".{NAME}.{os.urandom(6).hex()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o600, dir_fd=dir_fd)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        os.rename(temp, NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
