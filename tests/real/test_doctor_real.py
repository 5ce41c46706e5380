"""doctor against real components: a real autofs automount (alive, busy, dead, stopped), real
systemd-tmpfiles rules with a real `holdmount run --protect` lock and a real `--clean` as the
cross-check, a private mount namespace, a real overlay, an unprivileged caller."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autofs import AutofsLab, lab_base, wait_for
from conftest import holdmount_cmd, require_binary
from daemon_harness import DaemonProc
from sandbox import Cgroup

from holdmount import tmpfiles
from holdmount.doctor.proc import reference_namespace

pytestmark = pytest.mark.real

Doc = dict[str, Any]


def _parse(r: subprocess.CompletedProcess[str]) -> Doc:
    assert "Traceback" not in r.stderr, r.stderr
    try:
        data: Doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"doctor printed no JSON (rc={r.returncode}): {r.stdout!r} {r.stderr!r}")
    assert data["exit"] == r.returncode, (data["exit"], r.returncode)
    return data


def findings(data: Doc, index: int = 0) -> dict[str, Doc]:
    return {f["code"]: f for f in data["paths"][index]["findings"]}


def lab_doctor(lab: AutofsLab, *args: str, pid: int | None = None,
               env: dict[str, str] | None = None) -> Doc:
    cmd = [*holdmount_cmd(), "doctor", "--json", *args]
    if pid is None:
        return _parse(lab.run(cmd, env=env))
    return _parse(lab.cgroup.run(["nsenter", "-t", str(pid), "-m", "--", *cmd],
                                 capture_output=True, text=True, timeout=120))


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    cg = Cgroup("doctor")
    yield cg
    cg.remove()


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700)."""
    base = lab_base()
    yield base
    shutil.rmtree(base, ignore_errors=True)


# --- autofs ------------------------------------------------------------------------------------

def test_automount_reported_without_triggering(autofs: AutofsLab) -> None:
    mp = autofs.mp["a"]
    assert not autofs.mounted("a")
    data = lab_doctor(autofs, mp, f"{mp}/deeper/file")
    assert not autofs.mounted("a"), "doctor triggered the automount"
    f = findings(data)
    trig = f["autofs-trigger"]
    assert trig["details"]["kind"] == "direct" and trig["details"]["timeout"] == 2
    assert trig["details"]["trigger"] == mp
    assert "idle timeout 2s" in trig["message"]
    assert f["not-mounted"]["details"]["point"] == mp
    assert f["not-held"]["severity"] == "warning" and "2s after its last use" in \
        f["not-held"]["message"]
    assert "no-systemd" in f  # PID 1 here is not systemd
    assert f["not-checked"]["section"] == "writable"
    deeper = findings(data, 1)
    assert deeper["path-behind-trigger"]["details"]["trigger"] == mp
    assert "not-mounted" in deeper and "autofs-trigger" in deeper
    assert data["exit"] == 1  # warnings only


def test_mounted_and_busy(autofs: AutofsLab) -> None:
    mp = autofs.mp["a"]
    holder = autofs.popen(["sh", "-c", f"cd {mp} && exec sleep 300"])
    try:
        assert wait_for(lambda: autofs.mounted("a"), 15), "holder did not trigger the mount"
        data = lab_doctor(autofs, mp)
        f = findings(data)
        assert f["mounted"]["details"]["fstype"] == "tmpfs"
        assert f["mounted"]["details"]["source"] == "tmpfs"
        users = f["busy"]["details"]["users"]
        assert {"pid": holder.pid, "comm": "sleep", "how": "cwd"} in users, users
        assert "not-held" not in f
    finally:
        holder.kill()
        holder.wait()


def test_hold_for_a_client_is_seen(autofs: AutofsLab) -> None:
    """A real daemon holding the automount for a client (`holdmount hold PATH`): doctor asks it
    over the control socket and says it holds the path, next to the daemon's fd in the busy
    scan (it used to say "does not hold it" there)."""
    mp = autofs.mp["a"]
    base = lab_base()
    d = DaemonProc(base, "", popen=autofs.popen, wrap=autofs.cmd)
    owner = autofs.popen(["sleep", "600"])
    try:
        d.wait_ready()
        env = {**os.environ, "HOLDMOUNT_SOCKET": d.socket}
        f = findings(lab_doctor(autofs, mp, env=env))
        assert f["daemon"]["details"] == {"running": True, "holds": False}, f["daemon"]
        assert f["daemon"]["message"] == f"the holdmount daemon ({d.socket}) does not hold it"
        r = autofs.run([*holdmount_cmd(), "hold", mp, "--until-pid", str(owner.pid)], env=env)
        assert r.returncode == 0, r.stderr
        f = findings(lab_doctor(autofs, mp, env=env))
        assert f["daemon"]["details"] == {"running": True, "holds": True}, f["daemon"]
        assert f["daemon"]["message"] == \
            f"the holdmount daemon ({d.socket}) holds it (held for a client: {mp})"
        assert d.pid in {u["pid"] for u in f["busy"]["details"]["users"]}, f["busy"]
        assert "not-held" not in f
    finally:
        owner.kill()
        owner.wait()
        d.close()
        shutil.rmtree(base, ignore_errors=True)


def test_check_writable_triggers_through_the_hold(autofs: AutofsLab) -> None:
    mp = autofs.mp["a"]
    assert not autofs.mounted("a")
    data = lab_doctor(autofs, "--check-writable", mp)
    f = findings(data)
    assert f["held"]["details"]["fstype"] == "tmpfs" and f["held"]["details"]["automount"]
    assert f["writable"]["severity"] == "ok"
    assert f["space"]["details"]["blocks"] > 0
    # the probe file is gone again
    r = autofs.run(["ls", "-A", mp])
    assert r.stdout.strip() == "", r.stdout


def test_dead_automount_daemon(autofs: AutofsLab) -> None:
    mp = autofs.mp["a"]
    keeper = autofs.popen(["sleep", "300"])  # keeps the lab's namespace after the daemon dies
    lab_ns = os.readlink(f"/proc/{autofs.pid}/ns/mnt")

    def keeper_inside() -> bool:
        try:
            return Path(f"/proc/{keeper.pid}/comm").read_text().strip() == "sleep" and \
                os.readlink(f"/proc/{keeper.pid}/ns/mnt") == lab_ns
        except OSError:
            return False

    try:
        assert wait_for(keeper_inside, 15), "keeper did not enter the lab's namespace"
        os.kill(autofs.pid, signal.SIGKILL)
        autofs.proc.wait()
        data = lab_doctor(autofs, mp, pid=keeper.pid)
        f = findings(data)
        assert f["automount-catatonic"]["severity"] == "problem"
        assert data["exit"] == 2
        data = lab_doctor(autofs, "--check-writable", "--trigger-timeout", "5", mp,
                          pid=keeper.pid)
        f = findings(data)
        assert f["hold-failed"]["severity"] == "problem"
        assert f["hold-failed"]["message"].startswith(f"open({mp}): ") or \
            f["hold-failed"]["message"].startswith(f"fstatfs({mp}): "), f["hold-failed"]
    finally:
        keeper.kill()
        keeper.wait()


def test_stopped_automount_daemon_times_out(autofs: AutofsLab) -> None:
    mp = autofs.mp["a"]
    os.kill(autofs.pid, signal.SIGSTOP)
    try:
        f = findings(lab_doctor(autofs, mp))
        assert f["automount-stopped"]["severity"] == "problem"
        data = lab_doctor(autofs, "--check-writable", "--trigger-timeout", "2", mp)
        f = findings(data)
        assert f["hold-failed"]["message"] == \
            f"open({mp}): the automount did not answer within 2s", f["hold-failed"]
        assert data["exit"] == 2
    finally:
        os.kill(autofs.pid, signal.SIGCONT)


# --- tmpfiles ----------------------------------------------------------------------------------

CONF = "# doctor's test: ages everything below /aged by atime/mtime\nd /aged 0755 - - amAM:1s\n"


def _tree(base: Path) -> Path:
    conf = base / "etc" / "tmpfiles.d"
    conf.mkdir(parents=True)
    (conf / "aged.conf").write_text(CONF)
    for rel in ("aged/job/sub/f", "aged/loose/f", "aged/mnt/.keep"):
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    return conf / "aged.conf"


def _age_everything(top: Path) -> None:
    old = time.time() - 30 * 86400
    for dp, dns, fns in os.walk(top, topdown=False):
        for n in fns + dns:
            os.utime(os.path.join(dp, n), (old, old), follow_symlinks=False)


def _doctor(*args: str, **kw: Any) -> Doc:
    return _parse(subprocess.run([*holdmount_cmd(), "doctor", "--json", *args],
                                 capture_output=True, text=True, timeout=120, **kw))


def test_tmpfiles_rule_protection_and_real_clean(shared_base: Path, cgroup: Cgroup) -> None:
    require_binary("systemd-tmpfiles")
    base = shared_base
    conf = _tree(base)
    job, loose = base / "aged" / "job", base / "aged" / "loose"
    root = ["--tmpfiles-root", str(base)]

    data = _doctor(*root, str(job / "sub" / "f"), str(base / "aged"))
    ages = findings(data)["tmpfiles-ages"]
    assert ages["severity"] == "warning"
    d = ages["details"]
    assert (d["file"], d["line"], d["rule"]) == (str(conf), 2, "d /aged 0755 - - amAM:1s")
    assert (d["age"], d["age_by_files"], d["age_by_dirs"]) == ("1s", "am", "AM")
    assert d["protect_dir"] == str(job)
    assert f"holdmount run --protect --hold {job} --" in ages["remedy"]
    assert "x /aged/job" in ages["remedy"]
    assert "tmpfiles-ages-contents" in findings(data, 1)  # the rule's own directory

    holder = cgroup.popen([*holdmount_cmd(), "run", "--protect", "--hold", str(job), "--",
                           "sleep", "300"])
    try:
        st = os.stat(job)
        key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        assert wait_for(lambda: key in {(f.major, f.minor, f.ino)
                                        for f in tmpfiles.read_flocks()}, 30), \
            "holdmount run --protect took no flock"
        data = _doctor(*root, str(job / "sub" / "f"), str(loose / "f"))
        protected = findings(data)["tmpfiles-exempt-flock"]
        assert protected["severity"] == "ok" and str(job) in protected["message"]
        assert "tmpfiles-ages" in findings(data, 1)

        # the honest cross-check: the real systemd-tmpfiles --clean agrees
        _age_everything(base / "aged")
        r = subprocess.run(["systemd-tmpfiles", "--clean", f"--root={base}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert (job / "sub" / "f").exists(), "the protected subtree was cleaned"
        assert not (loose / "f").exists(), "the unprotected file survived: the test proves nothing"
    finally:
        holder.terminate()
        holder.wait(30)


def test_tmpfiles_mount_root_is_exempt(shared_base: Path, cgroup: Cgroup) -> None:
    require_binary("systemd-tmpfiles")
    base = shared_base
    _tree(base)
    mnt = base / "aged" / "mnt"
    script = (f"set -e; mount -t tmpfs -o size=1m doctor-test {mnt}; echo x > {mnt}/f; "
              f"{' '.join(holdmount_cmd())} doctor --json --tmpfiles-root {base} {mnt}/f "
              f"> {base}/out.json || true; "
              f"touch -d '30 days ago' {mnt}/f {base}/aged/loose/f; "
              f"systemd-tmpfiles --clean --root={base}; "
              f"test -e {mnt}/f && echo SURVIVED")
    r = cgroup.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                   capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads((base / "out.json").read_text())
    exempt = findings(data)["tmpfiles-exempt-mount"]
    assert exempt["severity"] == "ok" and str(mnt) in exempt["message"]
    assert "SURVIVED" in r.stdout  # and systemd-tmpfiles agrees
    assert not (base / "aged" / "loose" / "f").exists()


# --- namespace, overlay, unprivileged ------------------------------------------------------------

def test_namespace_warning_inside_unshare(tmp_path: Path) -> None:
    ref = reference_namespace()
    outside = findings(_doctor(str(tmp_path)))
    inside = findings(_parse(subprocess.run(
        ["unshare", "-m", "--propagation", "private", *holdmount_cmd(), "doctor", "--json",
         str(tmp_path)], capture_output=True, text=True, timeout=60)))
    f = inside["foreign-namespace"]
    assert f["severity"] == "warning"
    assert "does not keep a host automount alive" in f["message"]
    assert f["details"]["mnt_ns"] != f["details"]["reference_mnt_ns"]
    if ref is not None and ref[2] == os.stat("/proc/self/ns/mnt").st_ino:
        assert "host-namespace" in outside, outside


def _doctor_in_overlay(base: Path, cgroup: Cgroup, layers: str, *paths: str) -> Doc:
    """Mount an overlay of base/{lower,upper,work} on base/merged (layer paths as `layers`
    gives them, mounted from base) in a private mount namespace, write merged/new, and run
    doctor on `paths` there. base/mountinfo keeps the overlay's mountinfo line."""
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir()
    (base / "lower" / "old").write_text("x")
    script = (f"set -e; cd {base}; mount -t overlay -o {layers} doctor-test merged; "
              "echo new > merged/new; grep doctor-test /proc/self/mountinfo > mountinfo; "
              f"{' '.join(holdmount_cmd())} doctor --json {' '.join(paths)} > out.json || true")
    r = cgroup.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                   capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data: Doc = json.loads((base / "out.json").read_text())
    return data


def test_overlay_layer_warning(shared_base: Path, cgroup: Cgroup) -> None:
    base = shared_base
    data = _doctor_in_overlay(
        base, cgroup, f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work",
        f"{base}/upper/new", f"{base}/merged/new", f"{base}/lower/old")
    up = findings(data, 0)["overlay-layer"]
    assert up["severity"] == "warning" and up["details"]["role"] == "upperdir"
    assert up["details"]["overlay"] == str(base / "merged")
    assert "undefined behaviour" in up["message"]
    assert "no-overlay-layer" in findings(data, 1)
    assert findings(data, 2)["overlay-layer"]["details"]["role"] == "lowerdir"


def test_overlay_with_relative_layers(shared_base: Path, cgroup: Cgroup) -> None:
    """An overlay mounted with layer paths relative to the mounter's cwd: mountinfo shows them
    as given, so doctor cannot place them and must say so rather than "not inside a layer"."""
    base = shared_base
    data = _doctor_in_overlay(base, cgroup, "lowerdir=lower,upperdir=upper,workdir=work",
                              f"{base}/upper/new")
    assert "upperdir=upper," in (base / "mountinfo").read_text()  # kept relative
    f = findings(data)
    unknown = f["overlay-layers-unknown"]
    assert unknown["severity"] == "warning"
    assert unknown["details"]["overlay"] == str(base / "merged")
    assert set(unknown["details"]["relative_layers"]) == {"lower", "upper", "work"}
    assert "no-overlay-layer" not in f and "overlay-layer" not in f


def test_unreadable_path_as_unprivileged_user(shared_base: Path) -> None:
    require_binary("setpriv")
    secret = shared_base / "secret"
    secret.mkdir(mode=0o700)
    (secret / "x").mkdir()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                        *holdmount_cmd(), "doctor", "--json",
                        str(secret / "x")], capture_output=True, text=True, timeout=60,
                       cwd="/")
    data = _parse(r)
    f = findings(data)["path-unreadable"]
    assert f["severity"] == "problem"
    assert f["message"] == f"lstat({secret / 'x'}): Permission denied"
    assert r.returncode == 2
