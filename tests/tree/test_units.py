"""The unit files: what they must and must not contain, every directive commented, and
`systemd-analyze verify` clean (with ExecStart pointed at the venv, as the nspawn tests do)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "units"
VENV_HM = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "holdmount")
ALL = ["holdmount.service", "holdmount@.service", "holdmount-report.service"]

# Options that give a service its own mount namespace (autofs is not namespace-aware).
NAMESPACING = ("PrivateTmp", "ProtectSystem", "ProtectHome", "ReadOnlyPaths", "ReadWritePaths",
               "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem",
               "BindPaths", "BindReadOnlyPaths", "PrivateMounts", "PrivateDevices",
               "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
               "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
               "ProcSubset", "RootDirectory", "RootImage", "MountAPIVFS", "PrivateNetwork",
               "NetworkNamespacePath", "PrivateUsers", "MountFlags", "DynamicUser",
               "LogNamespace", "RuntimeDirectory", "StateDirectory")
# Directives that explain themselves; every other one needs a comment right above it.
OBVIOUS = {"Description", "Documentation", "ExecStart", "WantedBy", "Type"}


def directives(name: str | Path) -> list[tuple[str, str, bool]]:
    """(key, value, commented) for each directive; commented = a comment line directly above
    it (or above the run of directives it belongs to). NAME: a unit of units/, or a path."""
    out = []
    commented = False
    for line in (UNITS / name).read_text().splitlines():
        s = line.strip()
        if s.startswith("#"):
            commented = True
        elif not s or s.startswith("["):
            commented = False
        else:
            key, _, value = s.partition("=")
            out.append((key.strip(), value.strip(), commented))
    return out


@pytest.mark.parametrize("name", ALL)
def test_no_option_creates_a_mount_namespace(name: str) -> None:
    keys = {k for k, _, _ in directives(name)}
    assert not keys & set(NAMESPACING)
    assert all(not v.startswith(("+", "!", "@", "-")) or k != "ExecStart"
               for k, v, _ in directives(name))


@pytest.mark.parametrize("name", ALL)
def test_every_non_obvious_directive_is_commented(name: str) -> None:
    bare = [k for k, _, commented in directives(name) if k not in OBVIOUS and not commented]
    assert not bare, f"{name}: directives without a comment saying why: {bare}"


# drop-ins of the ostree integration (packaging/ostree/, docs/ostree.md)
DROPINS = sorted((UNITS.parent / "packaging" / "ostree").glob("*.service.d/*.conf"))


def test_the_ostree_dropins_are_found() -> None:  # else the test below would run for none
    assert [p.parent.name for p in DROPINS] == ["holdmount.service.d",
                                                "ostree-finalize-staged.service.d"]


@pytest.mark.parametrize("path", DROPINS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_dropin_directive_is_commented(path: Path) -> None:
    bare = [k for k, _, commented in directives(path) if not commented]
    assert not bare, f"{path.name}: directives without a comment saying why: {bare}"


def test_ostree_dropin_keeps_a_stop_command_and_orders_after_holdmount() -> None:
    """ostree's finalize is replaced by a stop that does nothing (the hold is the start); the
    unit must stop before holdmount, which finalizes."""
    path = UNITS.parent / "packaging/ostree/ostree-finalize-staged.service.d/50-holdmount.conf"
    d: dict[str, list[str]] = {}
    for k, v, _ in directives(path):
        d.setdefault(k, []).append(v)
    assert d["ExecStop"] == ["", "/bin/true"]
    assert d["ExecStart"] == ["+/usr/bin/holdmount hold --until-pid 1 /boot"]
    assert d["After"] == ["holdmount.service"] and d["Wants"] == ["holdmount.service"]


def test_main_unit_ordering_and_restart_policy() -> None:
    d: dict[str, list[str]] = {}
    for k, v, _ in directives("holdmount.service"):
        d.setdefault(k, []).append(v)
    assert d["Type"] == ["notify"]
    assert d["DefaultDependencies"] == ["no"]
    assert "shutdown.target" in " ".join(d["Conflicts"])
    before = " ".join(d["Before"]).split()
    after = " ".join(d["After"]).split()
    assert "shutdown.target" in before
    assert {"local-fs.target", "systemd-journald.socket",
            "systemd-journal-flush.service"} <= set(after)
    assert d["RestartPreventExitStatus"] == ["78"]
    assert d["KillMode"] == ["mixed"]
    assert int(d["FileDescriptorStoreMax"][0]) > 0
    assert d["ExecStart"] == ["/usr/bin/env --block-signal=TERM,INT,HUP /usr/bin/holdmount daemon"]


def test_instance_unit_holds_its_path() -> None:
    d = {k: v for k, v, _ in directives("holdmount@.service")}
    assert d["ExecStart"] == "/usr/bin/holdmount daemon --no-config --hold %f"
    assert "RequiresMountsFor" not in d and "local-fs.target" in d["After"]  # ordering only
    assert "%i" in d["Environment"]


def test_report_unit_runs_report() -> None:
    d = {k: v for k, v, _ in directives("holdmount-report.service")}
    assert d["Type"] == "oneshot" and d["ExecStart"] == "/usr/bin/holdmount report"


@pytest.mark.real  # a real component: must not skip in CI
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    paths = []
    for name in ALL:
        target = tmp_path / name.replace("@.", "@boot.")
        target.write_text((UNITS / name).read_text().replace("/usr/bin/holdmount", VENV_HM))
        paths.append(str(target))
    r = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
