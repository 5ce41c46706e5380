"""Delegated holds against a real autofs automount (2 s idle timeout).

The lab's mount namespace plays the host's part: the daemon runs there, and jobs run in
`unshare -m --propagation private` copies made *inside* it. A job's namespace never triggers the
automount itself: a namespace made before the mount that triggers it hangs (docs/delegation.md), so
delegated clients open paths O_PATH only, and the in-process (`--delegate never`) control case
uses a namespace made while the mount was there (its copy of the mount is what it opens).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autofs import DEFAULT_ENTRY, AutofsLab, lab_base, wait_for
from daemon_harness import HM, DaemonProc

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PRIVATE = ["unshare", "-m", "--propagation", "private"]


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0755 directory (pytest's tmp_path is below a 0700 one): nobody reaches the socket."""
    b = lab_base()
    yield b
    shutil.rmtree(b, ignore_errors=True)


def start_daemon(lab: AutofsLab, base: Path, config: str = "") -> DaemonProc:
    d = DaemonProc(base, config, popen=lab.popen, wrap=lab.cmd)
    d.wait_ready()
    os.chmod(d.socket, 0o666)  # the config default, but a test dir's umask may differ
    return d


def client_env(d: DaemonProc) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
    env.update(HOLDMOUNT_SOCKET=d.socket, PYTHONPATH=str(REPO))
    return env


def delegated(d: DaemonProc) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = d.status()["delegated"]
    return out


def sample(lab: AutofsLab, name: str, proc: subprocess.Popen[Any]) -> list[bool]:
    """lab.mounted(name) every 100 ms while proc runs."""
    samples: list[bool] = []
    while proc.poll() is None:
        samples.append(lab.mounted(name))
        time.sleep(0.1)
    return samples


def run_job(lab: AutofsLab, d: DaemonProc, mode: str, seconds: float,
            prefix: list[str] | None = None) -> subprocess.Popen[Any]:
    return lab.popen([*(prefix or []), *PRIVATE, *HM, "run", "--delegate", mode, "--hold",
                      lab.mp["a"], "--", "sleep", str(seconds)],
                     env=client_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)


def test_job_in_namespace_made_before_the_mount_is_held_by_the_daemon(
        autofs: AutofsLab, base: Path) -> None:
    """The hard case: the job's namespace has only the trigger (made before any mount). It must
    not trigger there (that hangs): it opens O_PATH, the daemon holds in the lab's namespace."""
    assert not autofs.mounted("a")
    with start_daemon(autofs, base) as d:
        job = run_job(autofs, d, "always", 3 * autofs.timeout + 1)
        assert wait_for(lambda: bool(delegated(d)) or job.poll() is not None, 30), d.log()
        assert job.poll() is None, job.communicate()
        # the job's own namespace still shows only the trigger: it never triggered there
        from holdmount.mounts import MountTable
        assert not MountTable.read(job.pid).is_real_mounted(autofs.mp["a"])
        samples = sample(autofs, "a", job)
        _, err = job.communicate()
        assert job.returncode == 0, err
        assert len(samples) >= 20 and all(samples), \
            f"expired while the job ran: {samples.count(False)} of {len(samples)}"
        # the client exited -> its lease ended -> released -> the mount expires
        assert wait_for(lambda: not delegated(d), 10), delegated(d)
        assert autofs.wait_expired("a", 3 * autofs.timeout + 2) is not None
        assert "lease 1 ended" in d.log()


@pytest.mark.parametrize("mode", ["always", "never"])
def test_delegate_always_holds_never_does_not(autofs: AutofsLab, base: Path, mode: str) -> None:
    """Same set-up both ways: the job's private namespace is made while the mount is there
    (so `never` opens its own copy and does not hang). Only the daemon's hold keeps the lab's
    mount: with `never` it expires while the job still runs."""
    with start_daemon(autofs, base) as d:
        assert autofs.run(["ls", autofs.mp["a"] + "/"]).returncode == 0
        assert autofs.mounted("a")
        job = run_job(autofs, d, mode, 3 * autofs.timeout + 1)
        samples = sample(autofs, "a", job)
        _, err = job.communicate()
        assert job.returncode == 0, err
        assert len(samples) >= 20
        if mode == "always":
            assert all(samples), f"expired: {samples.count(False)} of {len(samples)}"
        else:
            assert not samples[-1], "held in a private namespace only: must expire in the lab"


def test_until_pid_outlives_the_client_and_release(autofs: AutofsLab, base: Path) -> None:
    with start_daemon(autofs, base) as d:
        owner = autofs.popen(["sleep", "600"])
        try:
            r = autofs.run([*PRIVATE, *HM, "hold", autofs.mp["a"], "--until-pid",
                            str(owner.pid)], env=client_env(d))
            assert r.returncode == 0, r.stderr
            assert "holding " + autofs.mp["a"] in r.stdout
            held = delegated(d)
            assert held[0]["holders"][0]["until"] == f"pid {owner.pid} exits"
            time.sleep(2 * autofs.timeout)
            assert autofs.mounted("a"), "held after the client exited: until --until-pid"
            # the same path again, then release both; a second release is refused
            r = autofs.run([*HM, "hold", autofs.mp["a"], "--until-pid", str(owner.pid)],
                           env=client_env(d))
            assert r.returncode == 0, r.stderr
            assert len(delegated(d)[0]["holders"]) == 2
            r = autofs.run([*HM, "release", autofs.mp["a"]], env=client_env(d))
            assert r.returncode == 0 and "released" in r.stdout, r.stderr
            assert delegated(d) == []
            r = autofs.run([*HM, "release", autofs.mp["a"]], env=client_env(d))
            assert r.returncode == 66 and "no delegated hold" in r.stderr, r.stderr
            assert autofs.wait_expired("a", 3 * autofs.timeout + 2) is not None
            # and the pid's exit ends a lease
            r = autofs.run([*HM, "hold", autofs.mp["a"], "--until-pid", str(owner.pid)],
                           env=client_env(d))
            assert r.returncode == 0, r.stderr
        finally:
            owner.kill()
            owner.wait()
        assert wait_for(lambda: not delegated(d), 10)
        assert "pid exited" in d.log()
        assert autofs.wait_expired("a", 3 * autofs.timeout + 2) is not None


def test_config_and_client_share_a_path(autofs: AutofsLab, base: Path) -> None:
    """Reference counting: the client's release does not release the config's hold."""
    mp = autofs.mp["a"]
    with start_daemon(autofs, base, f'[[hold]]\npath = "{mp}"\n') as d:
        owner = autofs.popen(["sleep", "600"])
        try:
            r = autofs.run([*HM, "hold", mp, "--until-pid", str(owner.pid)], env=client_env(d))
            assert r.returncode == 0, r.stderr
        finally:
            owner.kill()
            owner.wait()
        assert wait_for(lambda: not delegated(d), 10)
        time.sleep(2 * autofs.timeout)
        assert autofs.mounted("a"), "the config still holds it"
        assert d.status()["holds"][0]["held"] is True
        r = autofs.run([*HM, "release", mp], env=client_env(d))
        assert r.returncode == 66 and "held by the configuration" in r.stderr, r.stderr


# --- unprivileged clients ---------------------------------------------------------------------

FORGE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[4])
from holdmount import control
shown, opened, sock = sys.argv[1], sys.argv[2], sys.argv[3]
fds = [os.open(opened, os.O_PATH)] if opened else []
with control.Client(sock) as c:
    print(json.dumps(c.call("hold", fds=fds, paths=[shown], with_fds=bool(fds))))
"""


@pytest.fixture
def lab2(autofs_factory: Callable[..., AutofsLab]) -> AutofsLab:
    return autofs_factory({"open": DEFAULT_ENTRY,
                           "closed": "-fstype=tmpfs,size=4m,mode=0700 :tmpfs"})


def test_unprivileged_client(lab2: AutofsLab, base: Path) -> None:
    lab = lab2
    secret = base / "secret"
    (secret / "inner").mkdir(parents=True)
    secret.chmod(0o700)
    with start_daemon(lab, base) as d:
        env = client_env(d)
        owner = lab.popen(["sleep", "600"])
        try:
            def hold(path: str) -> subprocess.CompletedProcess[Any]:
                # from a private namespace made before any mount: no trigger from there
                return lab.run([*PRIVATE, *NOBODY, *HM, "hold", path, "--until-pid",
                                str(owner.pid)], env=env)

            # 0700 root-owned tmpfs: O_PATH works (the trigger), opening for reading would not
            r = hold(lab.mp["closed"])
            assert r.returncode == 77, (r.returncode, r.stderr)
            assert "Permission denied for uid 65534" in r.stderr
            assert delegated(d) == []
            # below a 0700 directory: cannot even reach it
            r = hold(str(secret / "inner"))
            assert r.returncode == 77 and "open(" in r.stderr, r.stderr
            # forged: an fd of the open one, the path of the closed one
            r = lab.run([*NOBODY, sys.executable, "-c", FORGE, lab.mp["closed"],
                         lab.mp["open"], d.socket, str(REPO)], env=env)
            reply = json.loads(r.stdout)
            assert reply["ok"] is False and "not that directory" in reply["error"], reply
            # no fd at all
            r = lab.run([*NOBODY, sys.executable, "-c", FORGE, lab.mp["open"], "", d.socket,
                         str(REPO)], env=env)
            reply = json.loads(r.stdout)
            assert reply["ok"] is False and "must pass an fd" in reply["error"], reply
            assert delegated(d) == []
            assert not lab.mounted("open") or lab.wait_expired("open", 10) is not None
            # the one it can open: held for uid 65534
            r = hold(lab.mp["open"])
            assert r.returncode == 0, r.stderr
            held = delegated(d)
            assert [h["path"] for h in held] == [lab.mp["open"]]
            assert held[0]["holders"][0]["uid"] == 65534
            time.sleep(2 * lab.timeout)
            assert lab.mounted("open")
            # root's status shows it; nobody may release it, root may
            r = lab.run([*NOBODY, *HM, "release", lab.mp["open"]], env=env)
            assert r.returncode == 0, r.stderr
            assert delegated(d) == []
        finally:
            owner.kill()
            owner.wait()
        # no leak: the fds beyond the reserve the daemon keeps on /dev/null (limits.py)
        fds = [os.readlink(f"/proc/{d.pid}/fd/{n}") for n in os.listdir(f"/proc/{d.pid}/fd")]
        assert len([f for f in fds if f != "/dev/null"]) < 40, fds


def test_release_of_another_users_hold_is_refused(autofs: AutofsLab, base: Path) -> None:
    with start_daemon(autofs, base) as d:
        owner = autofs.popen(["sleep", "600"])
        try:
            r = autofs.run([*HM, "hold", autofs.mp["a"], "--until-pid", str(owner.pid)],
                           env=client_env(d))
            assert r.returncode == 0, r.stderr
            r = autofs.run([*NOBODY, *HM, "release", autofs.mp["a"]], env=client_env(d))
            assert r.returncode == 66, r.stderr
            assert len(delegated(d)) == 1
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait()
