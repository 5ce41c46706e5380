"""Shared test configuration.

Markers: `real` (a real kernel component: autofs, overlayfs, tmpfiles; needs root), `nspawn`
(systemd 252 booted in systemd-nspawn). Under CI=true a skipped `real`/`nspawn` test is turned
into a failure: a real-component test that did not run proves nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if IN_CI and report.skipped and (item.get_closest_marker("real")
                                     or item.get_closest_marker("nspawn")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"real-component test skipped under CI=true: {reason}"
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (item.get_closest_marker("real") or item.get_closest_marker("nspawn")) \
                and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root"))


def holdmount_cmd() -> list[str]:
    """How tests invoke the CLI: the venv's interpreter running the package."""
    return [sys.executable, "-m", "holdmount"]


@pytest.fixture
def hm() -> list[str]:
    return holdmount_cmd()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (run scripts/setup)")
    return path


from autofs import autofs, autofs_factory  # noqa: E402,F401  (fixtures for every test module)
