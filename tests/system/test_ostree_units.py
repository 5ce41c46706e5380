"""ostree issue 2543 with ostree's own units, no holdmount: the failure and its control.

Debian's ostree 2022.7 in systemd-nspawn (tests/helpers/ostree_lab.py): /boot is an automount with
TimeoutIdleSec=2s; stage a deployment; wait past the idle timeout; power off.
- ostree's hold unit masked: the expiry stops ostree-finalize-staged.service early, its ExecStop
  (`ostree admin finalize-staged`) cannot get /boot back -> nothing finalized;
- with ostree's hold unit (the control): finalized, two loader entries, the staged one first.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nspawn import container_factory as _factory  # noqa: F401  (registers the fixture)
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from ostree_lab import (
    FINALIZE_TIMEOUT_DROPIN,
    OSTREE_FINALIZE_UNIT,
    OSTREE_HOLD_UNIT,
    OSTREE_PATH_UNIT,
    REF_BASE,
    REF_NEXT,
    OstreeContainer,
    Sysroot,
    cycle,
    ostree_available,
)
from ostree_lab import lab_repo as _repo  # noqa: F401
from ostree_lab import sysroot_factory as _sysroots  # noqa: F401

pytestmark = [pytest.mark.nspawn]
if not ostree_available():
    pytestmark.append(pytest.mark.skip(reason="ostree / ostree-boot not installed "
                                              "(run scripts/setup)"))

WAIT = 5.0  # 2.5x the automount's idle timeout


def _container(name: str, sysroot: Sysroot, *, hold: bool) -> OstreeContainer:
    c = OstreeContainer(name, sysroot, wants=[OSTREE_PATH_UNIT],
                        files=dict([FINALIZE_TIMEOUT_DROPIN]))
    if not hold:
        c.mask(OSTREE_HOLD_UNIT)
    return c


def test_issue_2543_reproduced_without_ostree_hold(
        sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("ostree-nohold", s, hold=False)
    try:
        t = cycle(c, wait=WAIT)
        print("\n" + t.line("ostree units, hold masked (issue 2543)"))
        entries = s.loader_entries()
        assert [e.commit for e in entries] == [s.lab.commits[REF_BASE]], (
            "finalized although /boot expired under ostree-finalize-staged: the failure was "
            f"not reproduced\n{s.status()}")
        assert s.status_commits() == [s.lab.commits[REF_BASE]]
        # ... although the deployment was staged (its checkout exists, no entry names it)
        assert [d.name.split(".")[0] for d in s.staged_deployment_dirs()] == \
            [s.lab.commits[REF_NEXT]]
        journal = c.journal("-b", "-o", "short-monotonic")
        # what went wrong, for the record (ostree-finalize-staged stopped early or timed out)
        lines = [ln for ln in journal.splitlines()
                 if OSTREE_FINALIZE_UNIT in ln or "boot.mount" in ln or "boot.automount" in ln]
        print("\n".join(lines[-25:]))
    finally:
        c.cleanup()


def test_ostree_hold_finalizes(sysroot_factory: Callable[[], Sysroot]) -> None:
    s = sysroot_factory()
    c = _container("ostree-hold", s, hold=True)
    try:
        t = cycle(c, wait=WAIT)
        print("\n" + t.line("ostree units with ostree's hold (control)"))
        entries = s.loader_entries()
        assert [e.commit for e in entries] == [s.lab.commits[REF_NEXT], s.lab.commits[REF_BASE]], (
            f"{entries}\n{s.status()}\n"
            + c.journal("-b", "-u", OSTREE_FINALIZE_UNIT, "-u", OSTREE_HOLD_UNIT))
        assert s.status_commits() == [s.lab.commits[REF_NEXT], s.lab.commits[REF_BASE]]
    finally:
        c.cleanup()
