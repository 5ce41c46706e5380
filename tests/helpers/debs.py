"""The Debian package, built once per test session by packaging/build-deb: the packaging tests
(tests/tree/test_packaging.py) and the VM test (tests/system/test_vm_shutdown.py) both use it.
Registered for every test by tests/conftest.py (`pytest_plugins`), so both get the same build."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# HOLDMOUNT_PACKAGING_UNTRACKED=1: package untracked files too (a tree under edit)
UNTRACKED = ["--untracked"] if os.environ.get("HOLDMOUNT_PACKAGING_UNTRACKED") == "1" else []


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t, path=SYSTEM_PATH) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/setup (as root)")


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{package name: .deb}: holdmount_VERSION_all.deb, built from the tree as a clone has it."""
    need("dpkg-buildpackage", "dh", "dh_python3", "dpkg-deb", "git")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([str(REPO / "packaging" / "build-deb"), "-o", str(out), *UNTRACKED],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"build-deb: exit {r.returncode}\n{r.stdout[-4000:]}\n" \
        f"{r.stderr[-4000:]}"
    found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert set(found) == {"holdmount"}, found
    return found
