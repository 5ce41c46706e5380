"""The nspawn harness itself: systemd 252 as PID 1, automount expiry, poweroff + journal + reboot
of the same root, and cleanup that leaves nothing behind (also when the test process dies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nspawn import REPO, Container, ContainerError
from nspawn import container_factory as _fixture  # noqa: F401  (registers "container_factory")
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")
from nspawn import root_container_factory as _rfixture  # noqa: F401  (registers the fixture)

pytestmark = [pytest.mark.nspawn]
if shutil.which("systemd-nspawn") is None:
    # Under CI=true the conftest hook turns this skip into a failure.
    pytestmark.append(pytest.mark.skip(reason="systemd-nspawn not installed (run scripts/setup)"))

Factory = Callable[..., Container]

AUTOMOUNT = """\
[Unit]
Description=harness test automount
[Automount]
Where=/hmtest/auto
TimeoutIdleSec=2s
"""
MOUNT = """\
[Mount]
What=tmpfs
Where=/hmtest/auto
Type=tmpfs
Options=size=4m,mode=0755
"""


def _host_mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if text in line]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_boots_systemd_as_pid1(root_container_factory: Factory) -> None:
    c = root_container_factory("boot")
    c.boot()
    state = c.systemctl("is-system-running").stdout.strip()
    assert state in ("running", "degraded"), c.systemctl("--failed").stdout
    assert c.exec(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert os.readlink(f"/proc/{c.init_pid}/exe").endswith("/systemd")
    assert Path(f"/proc/{c.init_pid}/comm").read_text().strip() == "systemd"
    assert os.readlink(f"/proc/{c.init_pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{c.init_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    # default.target is the test target, the machine-id is not the host's
    assert c.systemctl("get-default").stdout.strip() == "holdmount-test.target"
    host_id = Path("/etc/machine-id").read_text().strip() \
        if Path("/etc/machine-id").exists() else ""
    assert c.exec(["cat", "/etc/machine-id"]).stdout.strip() not in ("", host_id)
    # the checkout is visible at its own path, and the root's Python imports holdmount from it
    r = c.py("import holdmount, sys; print(holdmount.__file__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(REPO / "holdmount" / "__init__.py")
    r = c.exec([c.os.holdmount, "--version"])
    assert r.returncode == 0 and "holdmount" in r.stdout, r
    # the container lives in our cgroup's payload, never in a host cgroup of its own
    cg = Path(f"/proc/{c.init_pid}/cgroup").read_text()
    assert f"/{c.cgroup.name}/payload" in cg, cg
    # a command that times out is killed, not left running in the container
    with pytest.raises(subprocess.TimeoutExpired):
        c.exec(["sleep", "1000"], timeout=1)
    assert c.wait_for(lambda: "sleep" not in {_comm(p) for p in c.cgroup.pids()}, 10)
    # nothing of the container is mounted in the host's namespace
    assert _host_mounts_mentioning(str(c.base)) == []
    assert not _host_mounts_mentioning("holdmount-nspawn")


def test_automount_triggers_and_expires(container_factory: Factory) -> None:
    c = container_factory("automount",
                          units={"hmtest-auto.automount": AUTOMOUNT, "hmtest-auto.mount": MOUNT},
                          wants=["hmtest-auto.automount"])
    c.boot()
    where = "/hmtest/auto"
    assert any(m.is_autofs for m in c.mountinfo().at(where)), "automount trigger missing"
    assert not c.mountinfo().is_real_mounted(where)
    r = c.exec(["stat", "-f", "-c", "%T", f"{where}/."])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "tmpfs"
    assert c.mountinfo().is_real_mounted(where), "triggering did not mount"
    assert c.wait_for(lambda: not c.mountinfo().is_real_mounted(where), 10), \
        f"did not expire: {c.journal('-u', 'hmtest-auto.mount', '-u', 'hmtest-auto.automount')}"
    assert any(m.is_autofs for m in c.mountinfo().at(where)), "trigger gone after expiry"


def test_poweroff_journal_and_second_boot(container_factory: Factory) -> None:
    c = container_factory("reboot", files={"/etc/hmtest/hello.sh": ("#!/bin/sh\necho hi\n", 0o755)})
    c.boot()
    assert c.exec(["/etc/hmtest/hello.sh"]).stdout == "hi\n"
    r = c.exec(["sh", "-c", "echo first-boot > /var/lib/hmtest-marker && sync"])
    assert r.returncode == 0, r.stderr
    first_boot_id = c.exec(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
    assert c.poweroff() == 0
    assert not c.running
    log = c.journal("-o", "short-monotonic")
    assert "Reached target" in log and "holdmount-test.target" in log
    assert "Power Off" in log or "Shutting down" in log, log[-2000:]
    c.boot()
    assert c.exec(["cat", "/var/lib/hmtest-marker"]).stdout == "first-boot\n"
    assert c.path("/var/lib/hmtest-marker").read_text() == "first-boot\n"
    assert c.poweroff() == 0
    boots = json.loads(c.journal("--list-boots", "-o", "json"))
    assert len(boots) == 2, boots
    previous = c.journal("-b", "-1", "-o", "short-monotonic")
    assert "Shutting down" in previous or "Power Off" in previous
    assert first_boot_id != ""  # the kernel's boot_id is shared; the journal's boot ids are not


def _live_in_cgroup(pid: int, cgroup_name: str) -> str | None:
    """The cgroup line of a live (not zombie) process still in our cgroup, else None."""
    try:
        cg = Path(f"/proc/{pid}/cgroup").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None
    # orphans are reaped by the host's PID 1, which may take a moment: zombies don't count
    return cg if cgroup_name in cg and state != "Z" else None


def _leftovers(c: Container, pids: set[int]) -> list[str]:
    out = [f"mount: {line}" for line in _host_mounts_mentioning(str(c.base))]
    out += [f"cgroup dir: {d}" for d in c.cgroup.dirs if d.exists()]
    for pid in pids:
        cg = _live_in_cgroup(pid, c.cgroup.name)
        if cg is not None:
            out.append(f"process {pid} still in {cg!r}")
    if c.base.exists():
        out.append(f"base dir {c.base}")
    return out


def test_cleanup_leaves_nothing(container_factory: Factory) -> None:
    c = container_factory("cleanup",
                          units={"hmtest-auto.automount": AUTOMOUNT, "hmtest-auto.mount": MOUNT},
                          wants=["hmtest-auto.automount"])
    c.boot()
    c.exec(["ls", "/hmtest/auto/"])  # a live mount inside
    # a long-running process started through exec (in our cgroup, outside the container's)
    sleeper = c.cgroup.popen(["nsenter", "-t", str(c.init_pid), "-m", "-p", "--",
                              "sleep", "1000"])

    def ours() -> set[int]:
        return c.cgroup.pids() | {c.nspawn_pid, c.init_pid, c.keeper_pid, sleeper.pid}

    # nsenter -p forks `sleep` a moment later (under load: measurably later)
    assert c.wait_for(lambda: len(ours()) > 5, 10), ours()
    pids = ours()
    assert all(d.exists() for d in c.cgroup.dirs)
    c.cleanup()
    sleeper.wait(10)
    assert _leftovers(c, pids) == []


_CRASHER = """
import json, os, sys
sys.path.insert(0, {tests!r})
from nspawn import Container, ContainerError
c = Container("crash")
c.boot()
c.exec(["sh", "-c", "nohup sleep 1000 >/dev/null 2>&1 &"])
print(json.dumps({{"pids": sorted(c.cgroup.pids()), "base": str(c.base), "cg": c.cgroup.name,
                  "dirs": [str(d) for d in c.cgroup.dirs]}}), flush=True)
os._exit(3)   # a crash: no cleanup at all
"""


def test_crashed_test_process_leaves_no_processes_or_mounts(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c",
                        _CRASHER.format(tests=str(Path(__file__).resolve().parents[1]
                                                  / "helpers"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    info = json.loads(r.stdout.splitlines()[-1])
    try:
        def alive() -> list[int]:
            return [p for p in info["pids"] if _live_in_cgroup(p, info["cg"]) is not None]
        deadline = time.monotonic() + 15
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive() == [], "the keeper did not end the cgroup when its parent died"
        assert _host_mounts_mentioning(info["base"]) == []
    finally:  # what a crashed run does leave: empty cgroup dirs and the (empty) base dir
        for d in info["dirs"]:
            for sub in sorted(Path(d).rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    sub.rmdir()
            Path(d).rmdir()
        shutil.rmtree(info["base"], ignore_errors=True)


def test_boot_failure_reports_console_and_leaves_no_process(container_factory: Factory) -> None:
    c = container_factory("badboot", extra_args=["--bind=/nonexistent-hmtest-src:/x"])
    with pytest.raises(ContainerError, match="console") as e:
        c.boot(timeout=30)
    assert "nonexistent-hmtest-src" in str(e.value)
    assert not c.running
    assert c.cgroup.pids() == {c.keeper_pid}
    # the same root boots after a failed boot
    c.extra_args.clear()
    c.boot()
    assert c.poweroff() == 0


def test_boot_timeout_reports_console_and_kills(container_factory: Factory) -> None:
    slow = "[Service]\nType=oneshot\nExecStart=/bin/sleep 600\n"
    c = container_factory("slowboot", units={"hmtest-slow.service": slow},
                          wants=["hmtest-slow.service"])
    with pytest.raises(ContainerError, match="did not finish within 3") as e:
        c.boot(timeout=3)
    assert "hmtest-slow.service" in str(e.value)  # the console tail is in the message
    assert "Welcome to" in c.console()
    assert not c.running
    assert c.cgroup.pids() == {c.keeper_pid}
