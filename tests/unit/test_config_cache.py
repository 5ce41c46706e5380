"""The parse cache (holdmount/config/cache.py): a hit answers as the parse would, without a fork
or tomllib; an edit is a miss; a cache anyone else could have written is never used (the real
parse wins, no traceback); failures are never kept; no $CACHE_DIRECTORY, no cache; the bounds;
and a real daemon started twice."""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProc

from holdmount import config
from holdmount.config import cache, reader
from holdmount.errors import Failure
from holdmount.log import DEBUG, log

REPO = Path(__file__).resolve().parents[2]
VALID = '[daemon]\nstamp = "/s"\ntrigger_timeout = "5s"\n[[hold]]\npath = "/boot"\n'
FAKE = {"daemon": {"stamp": "/from/the/cache"}}  # a doc no parse of VALID gives: a hit's mark


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache directory, as systemd makes it (0700, ours), named by $CACHE_DIRECTORY; the
    process reads configuration the daemon's way (no tomllib yet: a child parses); debug on."""
    d = tmp_path / "cache"
    d.mkdir()
    d.chmod(0o700)
    monkeypatch.setenv("CACHE_DIRECTORY", str(d))
    monkeypatch.delitem(sys.modules, "tomllib", raising=False)
    monkeypatch.setattr(log, "level", DEBUG)
    monkeypatch.setattr(log, "journal", False)
    return d


def parse_here(file: str, text: str) -> dict[str, Any]:
    """The file parsed in this process, which then goes on reading as the daemon does."""
    doc = reader.parse(file, text)
    sys.modules.pop("tomllib", None)  # the fixture puts it back
    return doc


def no_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    def forked() -> int:
        raise AssertionError("a hit must not fork")
    monkeypatch.setattr(os, "fork", forked)


def outcome(files: list[str], read: Callable[[str], dict[str, Any]] = reader.read_file) -> object:
    try:
        return config.load(files, reader=read)
    except Failure as e:
        return [(x.message, x.hint, x.code) for x in getattr(e, "errors", [e])]


def entries(where: Path) -> dict[str, Any]:
    kept: dict[str, Any] = marshal.loads((where / cache.NAME).read_bytes())[2]
    return kept


@pytest.mark.parametrize("doc", [
    VALID,
    '[daemon]\nstamp = 1979-05-27T07:32:00Z\n',  # a datetime where a path belongs
    '[[action]]\nname = "a"\nexec = [1979-05-27, 07:32:00]\n',  # a date and a time
    '[[hold]]\npath = "/x"\nwhen = 1979-05-27T07:32:00.999999-07:00\n',
], ids=["valid", "datetime", "date-time", "offset"])
def test_a_hit_gives_what_a_parse_gives(doc: str, where: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "h.toml"
    file.write_text(doc)
    here = outcome([str(file)], lambda f: parse_here(f, doc))  # parsed here, no cache
    miss = outcome([str(file)])
    assert set(entries(where)) == {str(file)}, "the miss keeps the parse"
    no_fork(monkeypatch)
    hit = outcome([str(file)])
    assert repr(hit) == repr(miss) == repr(here)
    assert hit == here


HIT_SCRIPT = """
import os, sys
from holdmount.config import cache, reader
path = sys.argv[1]
text = open(path, "rb").read().decode()
cache.store(os.environ["CACHE_DIRECTORY"], path, text, {"daemon": {"stamp": "/from/the/cache"}})
def forked():
    raise AssertionError("forked")
os.fork = forked
print(reader.read_file(path), "tomllib" in sys.modules)
"""


def test_a_hit_neither_forks_nor_imports_tomllib(where: Path, tmp_path: Path) -> None:
    """In a fresh interpreter, as the daemon: the stored doc (not the file's parse) is the
    answer, no child was started, and tomllib was never imported."""
    file = tmp_path / "h.toml"
    file.write_text(VALID)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-S", "-c", HIT_SCRIPT, str(file)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "{'daemon': {'stamp': '/from/the/cache'}} False"


def test_a_one_byte_edit_is_a_miss(where: Path, tmp_path: Path) -> None:
    file = tmp_path / "h.toml"
    file.write_text(VALID)
    cache.store(str(where), str(file), VALID, FAKE)
    assert reader.read_file(str(file)) == FAKE
    edited = VALID.replace('"/s"', '"/t"')
    file.write_text(edited)
    assert reader.read_file(str(file)) == parse_here(str(file), edited)
    assert cache.lookup(str(where), str(file), edited) == parse_here(str(file), edited)
    assert cache.lookup(str(where), str(file), VALID) is None, "one entry per path"


def test_a_failed_parse_is_never_kept(where: Path, tmp_path: Path) -> None:
    file = tmp_path / "h.toml"
    file.write_text("[daemon\nstamp = ")
    first, again = outcome([str(file)]), outcome([str(file)])
    assert first == again and "TOML syntax error" in repr(first)
    assert not (where / cache.NAME).exists()


def test_no_cache_directory_no_cache(where: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No $CACHE_DIRECTORY (a daemon run by hand), or tomllib already paid for (the CLI,
    `--check`): nothing is read or written."""
    file = tmp_path / "h.toml"
    file.write_text(VALID)
    monkeypatch.delenv("CACHE_DIRECTORY")
    assert cache.directory() is None
    assert reader.read_file(str(file)) == parse_here(str(file), VALID)
    monkeypatch.setenv("CACHE_DIRECTORY", str(where))
    monkeypatch.setitem(sys.modules, "tomllib", __import__("tomllib"))
    assert reader.read_file(str(file)) == parse_here(str(file), VALID)
    assert os.listdir(where) == []


def test_the_first_of_several_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/holdmount:/var/cache/other")
    assert cache.directory() == "/var/cache/holdmount"
    monkeypatch.setenv("CACHE_DIRECTORY", "")
    assert cache.directory() is None


# --- a cache that is not used: the real parse wins, without a traceback ---------------------------

def _rewrite(data: bytes) -> Callable[[Path], Path]:
    def tamper(where: Path) -> Path:
        (where / cache.NAME).write_bytes(data)
        return where
    return tamper


def _kept(value: object) -> Callable[[Path], Path]:
    return _rewrite(marshal.dumps(value))


def _chmod(mode: int, file: bool = True) -> Callable[[Path], Path]:
    def tamper(where: Path) -> Path:
        (where / cache.NAME if file else where).chmod(mode)
        return where
    return tamper


def _chown(file: bool) -> Callable[[Path], Path]:
    def tamper(where: Path) -> Path:
        os.chown(where / cache.NAME if file else where, 65534, 65534)
        return where
    return tamper


def _file_symlink(where: Path) -> Path:
    (where / cache.NAME).rename(where / "elsewhere")
    (where / cache.NAME).symlink_to("elsewhere")
    return where


def _dir_symlink(where: Path) -> Path:
    link = where.parent / "link"
    link.symlink_to(where)
    return link


def _replace_with(make: Callable[[Path], None]) -> Callable[[Path], Path]:
    def tamper(where: Path) -> Path:
        (where / cache.NAME).unlink()
        make(where / cache.NAME)
        return where
    return tamper


def _too_large(where: Path) -> Path:
    with open(where / cache.NAME, "ab") as f:
        f.truncate(cache.MAX_BYTES + 1)
    return where


def _truncated(where: Path) -> Path:
    data = (where / cache.NAME).read_bytes()
    (where / cache.NAME).write_bytes(data[:len(data) // 2])
    return where


def _missing_dir(where: Path) -> Path:
    return where.parent / "missing"


VERSION = tuple(sys.version_info[:3])
UNHASHABLE = b"{[\x01\x00\x00\x00i\x01\x00\x00\x00i\x02\x00\x00\x000"  # {[1]: 2}: TypeError

TAMPERED: dict[str, tuple[Callable[[Path], Path], str]] = {
    # what is done to a cache that holds FAKE for the file -> what the debug line says
    "file-owned-by-another-uid": (_chown(file=True), "owned by uid 65534"),
    "dir-owned-by-another-uid": (_chown(file=False), "owned by uid 65534"),
    "file-group-writable": (_chmod(0o620), "writable by group or others (620)"),
    "file-world-writable": (_chmod(0o602), "writable by group or others (602)"),
    "dir-group-writable": (_chmod(0o770, file=False), "writable by group or others (770)"),
    "dir-world-writable": (_chmod(0o1777, file=False), "writable by group or others (1777)"),
    "file-symlink": (_file_symlink, "Too many levels of symbolic links"),
    "dir-symlink": (_dir_symlink, "Not a directory"),
    "no-dir": (_missing_dir, "No such file or directory"),
    "fifo": (_replace_with(lambda p: os.mkfifo(p, 0o600)), "not a regular file"),
    "directory": (_replace_with(lambda p: p.mkdir(0o700)), "not a regular file"),
    "too-large": (_too_large, f"larger than {cache.MAX_BYTES} bytes"),
    "garbage": (_rewrite(b"\x00 not marshal"), "not marshal data"),
    "empty": (_rewrite(b""), "not marshal data"),
    "truncated": (_truncated, "not marshal data"),
    "unhashable-key": (_rewrite(UNHASHABLE), "not marshal data"),
    "not-a-tuple": (_kept([cache.FORMAT, VERSION, {}]), f"not format {cache.FORMAT}"),
    "wrong-format": (_kept((cache.FORMAT + 1, VERSION, {})), f"not format {cache.FORMAT}"),
    "other-python": (_kept((cache.FORMAT, (3, 0, 0), {})), "written by Python (3, 0, 0)"),
    "entries-not-a-table": (_kept((cache.FORMAT, VERSION, [])), "not a table of path"),
}


def _entry(doc: object) -> Callable[[Path], Path]:
    """A well-formed cache whose entry for the file (same text) holds `doc`."""
    def tamper(where: Path) -> Path:
        kept = entries(where)
        path = next(iter(kept))
        data = marshal.dumps((cache.FORMAT, VERSION, {path: (kept[path][0], doc)}))
        (where / cache.NAME).write_bytes(data)
        return where
    return tamper


def _deep(n: int) -> object:
    value: object = 1
    for _ in range(n):
        value = [value]
    return {"a": value}


TAMPERED |= {
    "entry-not-a-pair": (_entry(None), "not a table of path"),
    "doc-not-a-table": (_entry([1]), "not a table of path"),
    "doc-with-bytes": (_entry({"a": b"x"}), "is not a parsed document"),
    "doc-with-a-set": (_entry({"a": [{1}]}), "is not a parsed document"),
    "doc-with-a-bad-date": (_entry({"a": ("date",)}), "is not a parsed document"),
    "doc-too-deep": (_entry(_deep(100)), "is not a parsed document"),
}


def _hung(*_: object) -> None:
    raise AssertionError("reading the cache blocked")  # not an OSError: not taken for a miss


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_cache_not_ours_is_not_used(name: str, where: Path, tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    tamper, why = TAMPERED[name]
    file = tmp_path / "h.toml"
    file.write_text(VALID)
    cache.store(str(where), str(file), VALID, FAKE)
    assert cache.lookup(str(where), str(file), VALID) == FAKE  # the cache works until tampered
    (where / "elsewhere").write_bytes((where / cache.NAME).read_bytes())  # for the symlink
    untouched = (where / "elsewhere").read_bytes()
    used = tamper(where)
    capfd.readouterr()
    os.environ["CACHE_DIRECTORY"] = str(used)  # restored by the fixture's monkeypatch
    real = parse_here(str(file), VALID)
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(20)  # a FIFO opened without O_NONBLOCK would block for good
    try:
        assert reader.read_file(str(file)) == real
    finally:
        signal.alarm(0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "error" not in err
    assert f"config cache {used}/{cache.NAME} not used: " in err and why in err, err
    assert (where / "elsewhere").read_bytes() == untouched, "never written through a symlink"
    healed = cache.lookup(str(used), str(file), VALID)
    if name.startswith(("dir-", "no-dir")):  # a directory not ours is not written either
        assert healed is None and f"config cache {used} not written: " in err
    elif name == "directory":  # cannot be replaced: the write is skipped, its temp file removed
        assert healed is None and "not written: Is a directory" in err
        assert sorted(os.listdir(where)) == [cache.NAME, "elsewhere"]
    else:  # a file not ours in our directory is replaced by the parse
        assert healed == real


# --- the bounds -----------------------------------------------------------------------------------

def test_at_most_64_entries_the_oldest_dropped(where: Path) -> None:
    for i in range(65):
        cache.store(str(where), f"/etc/f{i}.toml", f"x = {i}\n", {"x": i})
    kept = entries(where)
    assert len(kept) == cache.MAX_ENTRIES == 64
    assert "/etc/f0.toml" not in kept
    assert cache.lookup(str(where), "/etc/f0.toml", "x = 0\n") is None
    assert cache.lookup(str(where), "/etc/f64.toml", "x = 64\n") == {"x": 64}
    cache.store(str(where), "/etc/f1.toml", "x = 1\n", {"x": 1})  # written again: the newest
    cache.store(str(where), "/etc/new.toml", "", {})
    assert "/etc/f1.toml" in entries(where) and "/etc/f2.toml" not in entries(where)


def test_at_most_max_bytes_the_oldest_dropped(where: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    big = "#" * (1024 * 1024)
    for i in range(5):
        cache.store(str(where), f"/etc/f{i}.toml", big + str(i), {})
    assert (where / cache.NAME).stat().st_size <= cache.MAX_BYTES
    assert list(entries(where)) == ["/etc/f2.toml", "/etc/f3.toml", "/etc/f4.toml"]
    cache.store(str(where), "/etc/huge.toml", "#" * cache.MAX_BYTES, {})
    assert "/etc/huge.toml" not in entries(where)
    assert f"/etc/huge.toml alone is over {cache.MAX_BYTES} bytes" in capfd.readouterr().err


# --- a real daemon, twice -------------------------------------------------------------------------

def test_a_daemon_started_twice_reads_the_cache(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    where = tmp_path / "cache"
    where.mkdir()
    where.chmod(0o700)
    cfg = f'[[hold]]\npath = "{held}"\nwhen = "always"\n'
    statuses = []
    for start in range(2):
        with DaemonProc(tmp_path, cfg, env={"CACHE_DIRECTORY": str(where)}) as d:
            d.wait_ready()
            statuses.append(next(m for m in d.notify.poll() if m.get("READY") == "1")["STATUS"])
            kept = os.stat(where / cache.NAME)
            if start == 0:
                written = kept
                assert cache.lookup(str(where), str(d.config), cfg) == {
                    "hold": [{"path": str(held), "when": "always"}]}
            d.term()
            assert d.wait() == 0, d.log()
        (tmp_path / "notify").unlink()
    assert statuses == [f"holding 1: {held}"] * 2
    assert (kept.st_ino, kept.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), \
        "the second start was a hit: nothing written"
