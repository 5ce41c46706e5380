"""Delegation without autofs: `run --delegate` modes, `hold`/`release` against a daemon holding
plain directories, fd-store names and LISTEN_FDS parsing, the fdstore config switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import HM, DaemonProc, wait_for

from holdmount import config, fdstore
from holdmount.errors import Failure

REPO = Path(__file__).resolve().parents[2]


def env_for(sock: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(HOLDMOUNT_SOCKET=sock, PYTHONPATH=str(REPO))
    return env


def test_delegate_always_without_daemon_exits_69(tmp_path: Path) -> None:
    r = subprocess.run([*HM, "run", "--delegate", "always", "--hold", str(tmp_path), "--",
                        "true"], env=env_for(str(tmp_path / "nobody-here")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 69, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "--delegate always needs the holdmount daemon" in lines[0]
    assert lines[1].startswith("hint:")


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_no_daemon_holds_in_process(tmp_path: Path, mode: str) -> None:
    r = subprocess.run([*HM, "run", "--delegate", mode, "--hold", str(tmp_path),
                        "--require-writable", "--", "true"],
                       env=env_for(str(tmp_path / "nobody-here")), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_run_delegates_and_checks_through_the_daemons_fd(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        code = "import json,sys; print(open(sys.argv[1]).read())"
        r = subprocess.run([*HM, "run", "--delegate", "always", "--hold", str(held),
                            "--require-writable", "--require-exec", "--",
                            sys.executable, "-c", code, d.socket.replace("control", "daemon.log")],
                           env=env_for(d.socket), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "lease 1: holding " + str(held) in r.stdout
        assert wait_for(lambda: "lease 1 ended" in d.log(), 10), d.log()
        assert d.status()["delegated"] == []
        # status renders delegated holds with their holder
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            r = subprocess.run([*HM, "hold", str(held), "--until-pid", str(sleeper.pid)],
                               env=env_for(d.socket), capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            r = subprocess.run([*HM, "status"], env=env_for(d.socket), capture_output=True,
                               text=True)
            assert "delegated holds: 1" in r.stdout, r.stdout
            assert f"until pid {sleeper.pid} exits" in r.stdout, r.stdout
        finally:
            sleeper.kill()
            sleeper.wait()
        assert wait_for(lambda: d.status()["delegated"] == [], 10)


def test_hold_refusals(tmp_path: Path) -> None:
    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        r = subprocess.run([*HM, "hold", str(tmp_path / "missing"), "--until-pid", "1"],
                           env=env_for(d.socket), capture_output=True, text=True)
        assert r.returncode == 66 and "open(" in r.stderr, r.stderr
        f = tmp_path / "file"
        f.write_text("")
        r = subprocess.run([*HM, "hold", str(f), "--until-pid", "1"],
                           env=env_for(d.socket), capture_output=True, text=True)
        assert r.returncode != 0 and "Not a directory" in r.stderr, r.stderr
        r = subprocess.run([*HM, "hold", str(tmp_path), "--until-pid", "999999999"],
                           env=env_for(d.socket), capture_output=True, text=True)
        assert r.returncode == 66 and "pidfd_open" in r.stderr, r.stderr
        assert d.status()["delegated"] == []


def test_fdstore_names() -> None:
    for path in ["/boot", "/a:b", "/" + "x" * 5000, "/\udcff\n"]:
        name = fdstore.name_for(path)
        assert len(name) <= 255 and ":" not in name and name.isprintable() and name.isascii()
    assert fdstore.name_for("/boot") != fdstore.name_for("/boot/")


def test_listen_fds(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)
    code = ("import os,sys; from holdmount import fdstore; "
            "s = fdstore.listen_fds(os.environ); print([x.name for x in s]); "
            "import fcntl; print(all(fcntl.fcntl(x.fd, fcntl.F_GETFD) & 1 for x in s))")
    env = env_for("x")
    # the child gets the pipe as fd 3; LISTEN_PID must be its own pid: use a shell exec
    sh = f'exec 3<&{r}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=hold-ab exec ' \
         f'{sys.executable} -c "{code}"'
    out = subprocess.run(["bash", "-c", sh], env=env, pass_fds=[r], capture_output=True,
                         text=True)
    os.close(r)
    os.close(w)
    assert out.stdout.split() == ["['hold-ab']", "True"], out.stderr
    assert fdstore.listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []


def test_fdstore_config_switch() -> None:
    assert config.loads("").daemon.fdstore is True
    assert config.loads("[daemon]\nfdstore = false\n").daemon.fdstore is False
    with pytest.raises(Failure, match=r"daemon\.fdstore: must be true or false"):
        config.loads('[daemon]\nfdstore = "no"\n')


@pytest.mark.real  # a real component: must not skip in CI
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_socket_mode_and_group_are_applied() -> None:
    import grp
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="holdmount-sock-"))
    base.chmod(0o755)
    try:
        with DaemonProc(base, '[control]\nmode = "0660"\ngroup = "nogroup"\n') as d:
            d.wait_ready()
            st = os.stat(d.socket)
            assert st.st_mode & 0o777 == 0o660
            assert st.st_gid == grp.getgrnam("nogroup").gr_gid
            as_user = ["setpriv", "--reuid=65534", "--regid=54321"]  # 54321: not nogroup
            outsider = subprocess.run([*as_user, "--clear-groups", *HM, "status"],
                                      env=env_for(d.socket), capture_output=True, text=True)
            assert outsider.returncode == 69 and "Permission denied" in outsider.stderr, \
                outsider.stderr
            member = subprocess.run([*as_user, "--groups=65534", *HM, "status"],
                                    env=env_for(d.socket), capture_output=True, text=True)
            assert member.returncode == 0, member.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("pid", [2**31, 2**63, 0, -1, True, "1", 1.5])
def test_until_pid_out_of_range_is_refused(tmp_path: Path, pid: object) -> None:
    """Found by the control-socket fuzzer: 2**31 reached pidfd_open and came back as an
    internal error. Every bad pid must be a plain refusal, and the daemon stays up."""
    from holdmount import control

    with DaemonProc(tmp_path, "") as d:
        d.wait_ready()
        with pytest.raises(Failure) as e:
            control.request(d.socket, "hold", paths=[str(tmp_path)], until_pid=pid)
        assert e.value.message.startswith('hold: "until_pid" must be a pid (1..'), e.value
        assert d.status()["state"] == "running"
