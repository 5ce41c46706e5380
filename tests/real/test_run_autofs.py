"""`holdmount run` against a real autofs automount (Debian's automount, 2 s idle timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from autofs import DEFAULT_ENTRY, AutofsLab, wait_for
from conftest import holdmount_cmd

pytestmark = pytest.mark.real

HM = holdmount_cmd()
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def sample_while(lab: AutofsLab, name: str, proc: subprocess.Popen[str]) -> list[bool]:
    """Sample the namespace's mount table every 100 ms until `proc` ends."""
    samples = []
    while proc.poll() is None:
        samples.append(lab.mounted(name))
        time.sleep(0.1)
    return samples


def test_run_holds_past_three_timeouts_then_expires(autofs: AutofsLab) -> None:
    job = 3 * autofs.timeout + 1
    proc = autofs.popen([*HM, "run", "--hold", autofs.mp["a"], "--", "sleep", str(job)],
                        text=True, stderr=subprocess.PIPE)
    assert wait_for(lambda: autofs.mounted("a") or proc.poll() is not None, 10)
    samples = sample_while(autofs, "a", proc)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert len(samples) >= 10 * job * 0.8, "sampling fell behind"
    assert all(samples), f"expired during the job: {samples.count(False)} of {len(samples)}"
    took = autofs.wait_expired("a", 3 * autofs.timeout + 2)
    assert took is not None, "the mount must expire once the job has ended and released it"


def test_same_job_without_holdmount_expires(autofs: AutofsLab) -> None:
    """The control: a job that only touched the mount once does not keep it."""
    mp = autofs.mp["a"]
    proc = autofs.popen(["sh", "-c", f"ls {mp}/ >/dev/null && sleep {3 * autofs.timeout + 1}"])
    assert wait_for(lambda: autofs.mounted("a"), 10)
    samples = sample_while(autofs, "a", proc)
    assert not all(samples), "without a hold the automount should have expired during the job"


def test_bug_890812_writable_check_triggers(
        autofs_factory: Callable[..., AutofsLab]) -> None:
    """Gentoo bug 890812: access() reads the autofs placeholder (root, 0755) and says "not
    writable"; the tmpfs that really gets mounted is 1777. holdmount checks by creating a file."""
    lab = autofs_factory({"tmp": "-fstype=tmpfs,size=4m,mode=1777 :tmpfs",
                          "ro": "-fstype=tmpfs,size=4m,mode=1777,ro :tmpfs"})
    mp = lab.mp["tmp"]
    r = lab.run([*NOBODY, sys.executable, "-c",
                 "import os,sys; print(os.access(sys.argv[1], os.W_OK))", mp])
    assert r.stdout.strip() == "False", r.stderr
    assert not lab.mounted("tmp"), "access() must not have triggered the mount"
    r = lab.run([*NOBODY, *HM, "run", "--hold", mp, "--require-writable", "--",
                 "sh", "-c", f"touch {mp}/built && echo ok"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    # the probe file was removed again
    assert not [n for n in os.listdir(f"/proc/{lab.pid}/root{mp}") if n.startswith(".holdmount")]

    r = lab.run([*HM, "run", "--hold", lab.mp["ro"], "--require-writable", "--", "true"])
    assert r.returncode == 73, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"holdmount: open({lab.mp['ro']}/.holdmount-probe.")
    assert "Read-only file system" in lines[0]
    assert lines[1].startswith("hint: ") and "read-only" in lines[1]


def test_require_exec_on_noexec_automount(autofs_factory: Callable[..., AutofsLab]) -> None:
    lab = autofs_factory({"ne": "-fstype=tmpfs,size=4m,noexec :tmpfs", "ex": DEFAULT_ENTRY})
    r = lab.run([*HM, "run", "--hold", lab.mp["ne"], "--require-exec", "--", "true"])
    assert r.returncode == 73, r.stderr
    assert f"fstatfs({lab.mp['ne']}): mounted noexec" in r.stderr
    r = lab.run([*HM, "run", "--hold", lab.mp["ex"], "--require-exec", "--", "true"])
    assert r.returncode == 0, r.stderr


def test_no_space_and_permission_errors_are_distinct(
        autofs_factory: Callable[..., AutofsLab]) -> None:
    lab = autofs_factory({"full": "-fstype=tmpfs,size=16k,mode=1777 :tmpfs",
                          "priv": "-fstype=tmpfs,size=4m,mode=0755 :tmpfs"})
    full = lab.mp["full"]
    # fill the tiny tmpfs while holding it, then ask for a writable check
    r = lab.run([*HM, "run", "--hold", full, "--", "sh", "-c",
                 f"dd if=/dev/zero of={full}/fill bs=4k count=64 2>/dev/null; "
                 f"{' '.join(HM)} run --hold {full} --require-writable -- true"])
    assert r.returncode == 73, r.stderr
    assert "No space left on device" in r.stderr and "hint: the filesystem is full" in r.stderr
    r = lab.run([*NOBODY, *HM, "run", "--hold", lab.mp["priv"], "--require-writable", "--",
                 "true"])
    assert r.returncode == 77, r.stderr
    assert "Permission denied" in r.stderr.splitlines()[0]


def test_dead_automount_daemon(autofs: AutofsLab) -> None:
    """automount killed with SIGKILL: the trigger is catatonic; a clear error, no hang."""
    autofs.keep_namespace()  # the namespace would die with its only process otherwise
    os.kill(autofs.pid, signal.SIGKILL)
    autofs.proc.wait()
    assert autofs.trigger_present("a"), "the trigger stays, now without a daemon"
    r = autofs.run([*HM, "run", "--trigger-timeout", "5s", "--hold", autofs.mp["a"], "--",
                    "true"], timeout=60)
    assert r.returncode == 69, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0] == (f"holdmount: open({autofs.mp['a']}): No such file or directory "
                        f"(autofs trigger on {autofs.mp['a']}: the automount did not mount)")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in r.stderr
    print("dead automount daemon gives:", lines[0], "exit", r.returncode)


def test_hung_automount_daemon_times_out(autofs: AutofsLab) -> None:
    """automount stopped (SIGSTOP): open() would block forever; holdmount gives up in time."""
    os.kill(autofs.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = autofs.run([*HM, "run", "--trigger-timeout", "1s", "--hold", autofs.mp["a"], "--",
                        "true"], timeout=30)
        took = time.monotonic() - t0
    finally:
        os.kill(autofs.pid, signal.SIGCONT)
    assert r.returncode == 75, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (f"holdmount: open({autofs.mp['a']}): the automount did not answer "
                        "within 1s")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in r.stderr
    assert took < 25  # it did not hang (generous: it is not a performance assertion)
