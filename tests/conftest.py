"""Shared test configuration.

The folders are the map (docs/architecture.md, "Tests"): `unit/` a module's logic (files,
sockets, processes; no kernel component that needs root), `real/` real kernel components
(autofs, overlayfs, tmpfiles, mount namespaces), `system/` systemd as PID 1 in systemd-nspawn,
`tree/` checks of the repository's own files (lint, man pages, completions, units, packages, the
CI guard, the benchmark), `helpers/` fixtures and harnesses (never named test_*), importable by
name from every test because this file puts the folder on sys.path.

Markers: `real` (a real kernel component: autofs, overlayfs, tmpfiles; needs root), `nspawn`
(systemd booted in systemd-nspawn: 252 on Debian 12, 257 on Debian 13). See helpers/ci_guard.py
for what CI=true changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))
pytest_plugins = ["debs"]  # the session's .deb, shared by the packaging and VM tests


def holdmount_cmd() -> list[str]:
    """How tests invoke the CLI: the venv's interpreter running the package."""
    return [sys.executable, "-m", "holdmount"]


def run_holdmount(*args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """The CLI run to its end, its output captured as text."""
    return subprocess.run([*holdmount_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.fixture
def hm() -> list[str]:
    return holdmount_cmd()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (run scripts/setup)")
    return path


# The CI guard's hooks, and the fixtures every test module may use.
from autofs import autofs, autofs_factory  # noqa: E402,F401
from ci_guard import (  # noqa: E402,F401
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
