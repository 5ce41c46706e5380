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
                 "lab_repo": "nspawn", "root_container_factory": "nspawn", "os_root": "nspawn",
                 "debian13_container_factory": "nspawn"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            kind = REAL_FIXTURES.get(name)
            if kind is not None and not item.get_closest_marker(kind):
                item.add_marker(getattr(pytest.mark, kind))
        if (item.get_closest_marker("real") or item.get_closest_marker("nspawn")) \
                and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root"))


# --- which system roots the nspawn tests booted (helpers/nspawn.py: Debian 12, Debian 13) ---

def _roots_wanted(session: pytest.Session) -> set[str]:
    """Roots that collected tests are parametrized over (through the `os_root` fixture)."""
    wanted = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "os_root" in callspec.params:
            wanted.add(str(callspec.params["os_root"]))
    return wanted


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from nspawn import ROOTS_RAN
    wanted = _roots_wanted(session)
    missing = sorted(wanted - ROOTS_RAN)
    session.config.stash[_ROOTS_KEY] = (sorted(ROOTS_RAN), missing)
    if IN_CI and missing and not session.config.option.collectonly and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ran, missing = terminalreporter.config.stash.get(_ROOTS_KEY, ([], []))
    if ran or missing:
        line = f"system test roots booted: {', '.join(ran) or 'none'}"
        if missing:
            line += f"; NOT booted: {', '.join(missing)}" + (" (a failure under CI=true)"
                                                            if IN_CI else "")
        terminalreporter.write_line(line)


_ROOTS_KEY = pytest.StashKey[tuple[list[str], list[str]]]()
