"""FDNAMEs of held fds: the escaped path (no hashlib, which maps libcrypto), a hash only for a
path that does not fit, stable across restarts, and fds stored under the older hashed names
still adopted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, wait_for

from holdmount import fdstore

REPO = Path(__file__).resolve().parents[2]


def valid(name: str) -> bool:
    """systemd's fdname_is_valid(): ≤ 255 characters, ASCII ≥ ' ' and < 127, no ':'."""
    return len(name) <= 255 and all(" " <= c < "\x7f" for c in name) and ":" not in name


@pytest.mark.parametrize("path, name", [
    ("/boot", "hold-/boot"),
    ("/sysroot/boot/efi", "hold-/sysroot/boot/efi"),
    ("/srv/a:b", "hold-/srv/a%3Ab"),
    ("/srv/100%", "hold-/srv/100%25"),
    ("/srv/with space", "hold-/srv/with%20space"),
    ("/srv/é", "hold-/srv/%C3%A9"),
    ("/srv/\udcff\n", "hold-/srv/%FF%0A"),  # not UTF-8 (surrogateescape), a newline
])
def test_escaped_names(path: str, name: str) -> None:
    assert fdstore.name_for(path) == name
    assert valid(name)


def test_distinct_paths_get_distinct_names() -> None:
    paths = ["/boot", "/boot/", "/a:b", "/a%3Ab", "/a b", "/a%20b", "/a\nb"]
    names = [fdstore.name_for(p) for p in paths]
    assert len(set(names)) == len(paths)


def test_a_path_that_does_not_fit_gets_the_hashed_name() -> None:
    fits = "/" + "x" * (255 - len("hold-/"))
    assert fdstore.name_for(fits) == "hold-" + fits
    for path in [fits + "x", "/" + "é" * 100, "/" + "x" * 5000]:
        name = fdstore.name_for(path)
        assert name == fdstore.legacy_name(path) and fdstore.is_legacy(name) and valid(name)
    assert not fdstore.is_legacy(fdstore.name_for("/boot"))


def test_hashed_name_is_the_one_older_versions_stored() -> None:
    # sha256("/boot"), as holdmount named every hold before escaped paths
    assert fdstore.legacy_name("/boot") == "hold-347a1e2537cc7aea90a4938443f967a5"


def test_naming_does_not_import_hashlib() -> None:
    code = ("import sys; from holdmount import daemon, fdstore; fdstore.name_for('/boot'); "
            "print(sorted(m for m in ('hashlib', '_hashlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "[]", "hashlib loads libcrypto: ~3.5 MiB of RSS"


def _passing_fd(path: Path, name: str) -> object:
    """wrap for DaemonProc: the daemon gets `path` open as fd 3, LISTEN_FDNAMES=name."""
    def wrap(argv: list[str]) -> list[str]:
        sh = (f'exec 3<"{path}"; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={name} '
              'exec "$@"')
        return ["bash", "-c", sh, "bash", *argv]
    return wrap


@pytest.mark.parametrize("legacy", [False, True])
def test_stored_fd_is_adopted_under_either_name(tmp_path: Path, legacy: bool) -> None:
    held = tmp_path / "held"
    held.mkdir()
    name = fdstore.legacy_name(str(held)) if legacy else fdstore.name_for(str(held))
    with DaemonProc(tmp_path, f'[[hold]]\npath = "{held}"\n',
                    wrap=_passing_fd(held, name)) as d:  # type: ignore[arg-type]
        d.wait_ready()
        h = d.status()["holds"][0]
        assert h["held"] and h["adopted"], d.log()
        assert "adopted from the fd store" in d.log()
        assert "not held any more" not in d.log()
        if legacy:  # stored again under its new name, the old one removed
            assert wait_for(lambda: d.notify.has("FDSTORE", "1"), 5)
            msgs = d.notify.poll()
            assert [m["FDNAME"] for m in msgs if m.get("FDSTOREREMOVE") == "1"] == [name]
            assert [m["FDNAME"] for m in msgs if m.get("FDSTORE") == "1"] == [f"hold-{held}"]
        else:
            assert not d.notify.has("FDSTOREREMOVE") and not d.notify.has("FDSTORE")
        d.term()
        assert d.wait() == 0, d.log()
