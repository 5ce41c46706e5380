"""Under CI=true a skipped `real`/`nspawn` test is a failure: a real-component test that did not
run proves nothing. Without root, such tests are skipped (and so fail under CI)."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# In CI the fuzzers replay a fixed sequence (a red CI must be reproducible); locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    settings.load_profile("ci")


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


# Using one of these fixtures makes a test a real-component test, marker or not, so that a test
# that forgot its marker cannot skip quietly in CI.
REAL_FIXTURES = {"autofs": "real", "autofs_factory": "real", "nslab": "real",
                 "container_factory": "nspawn", "sysroot_factory": "nspawn",
                 "lab_repo": "nspawn"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            kind = REAL_FIXTURES.get(name)
            if kind is not None and not item.get_closest_marker(kind):
                item.add_marker(getattr(pytest.mark, kind))
        if (item.get_closest_marker("real") or item.get_closest_marker("nspawn")) \
                and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root"))
