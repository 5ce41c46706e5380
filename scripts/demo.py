"""Live demonstration against a real autofs automount (run by scripts/demo, as root).

Runs inside a private mount namespace (scripts/demo takes care of that), starts Debian's
`automount` with a direct map (a tmpfs with a 2 s idle timeout) and shows, sampled from the
kernel's mount table:
  1. the automount expiring on its own when nobody holds it;
  2. `os.access()` reading the autofs placeholder (Gentoo bug 890812) while
     `holdmount run --require-writable` triggers and checks the real filesystem;
  3. `holdmount run --hold MP -- sleep 8` keeping it mounted for 4x the idle timeout,
     and the expiry once the job has ended;
  4. `holdmount daemon`: a staged-deployment marker appears -> the staged hold is taken and
     outlives the idle timeout; SIGTERM -> the finalize action runs with the mount still held;
     then the hold is released and the mount expires.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from holdmount.mounts import MountTable

TIMEOUT = 2
HM = [sys.executable, "-m", "holdmount"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def mounted(mp: str) -> bool:
    return MountTable.read().is_real_mounted(mp)


def say(text: str) -> None:
    print(text, flush=True)


def wait_expiry(mp: str, limit: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not mounted(mp):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def daemon_part(base: Path, mp: str) -> bool:
    marker = base / "run" / "staged"
    out = base / "finalize.out"
    cfg = base / "holdmount.toml"
    cfg.write_text(
        f'[daemon]\nstamp = "{base}/failure.stamp"\n'
        f'[control]\npath = "{base}/control"\n'
        f'[marker]\npath = "{marker}"\n'
        f'[[hold]]\npath = "{mp}"\nwhen = "staged"\n'
        f'[[action]]\nname = "finalize"\nwhen = "staged"\ntimeout = "30s"\n'
        f'exec = ["/bin/sh", "-c", "grep -c \' {mp} \' /proc/self/mountinfo > {out}; '
        f'date > {mp}/finalized"]\n')
    env = {**os.environ, "HOLDMOUNT_SOCKET": f"{base}/control"}
    env.pop("NOTIFY_SOCKET", None)
    # the demo's private namespace is not PID 1's: the daemon refuses that unless told
    d = subprocess.Popen([*HM, "daemon", "--config", str(cfg), "--allow-foreign-namespace"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        while not os.path.exists(f"{base}/control"):
            time.sleep(0.05)
        time.sleep(0.3)
        say(f"   daemon up; marker absent -> mounted={mounted(mp)}")
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
        t0 = time.monotonic()
        while not mounted(mp) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        say(f"   marker created -> armed, staged hold taken: mounted={mounted(mp)}")
        time.sleep(3 * TIMEOUT)
        held = mounted(mp)
        say(f"   {3 * TIMEOUT}s later (3x the idle timeout): mounted={held}")
        st = subprocess.run([*HM, "status"], env=env, capture_output=True, text=True)
        say("   holdmount status:\n" + "\n".join("     " + ln for ln in st.stdout.splitlines()))
        d.send_signal(signal.SIGTERM)
        rc = d.wait(60)
        finalized = out.exists() and out.read_text().strip() == "2"
        say(f"   SIGTERM -> daemon exit {rc}; the action saw the real fs mounted on the trigger: "
            f"{finalized}")
        took = wait_expiry(mp, 4 * TIMEOUT + 5)
        say(f"   released -> expired {took:.1f}s later" if took is not None
            else "   did NOT expire after release!")
        return held and rc == 0 and finalized and took is not None
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
        if d.stderr is not None:
            log_text = d.stderr.read()
            say("   daemon log:\n" + "\n".join("     " + ln for ln in log_text.splitlines()))


def main() -> int:
    if os.environ.get("HOLDMOUNT_DEMO_NS") != "1":
        say("run me through scripts/demo (it makes a private mount namespace)")
        return 64
    base = Path(tempfile.mkdtemp(prefix="holdmount-demo-"))
    base.chmod(0o755)
    mp = str(base / "portage")
    (base / "auto.master").write_text(f"/- {base}/auto.direct --timeout={TIMEOUT}\n")
    (base / "auto.direct").write_text(f"{mp} -fstype=tmpfs,size=16m,mode=1777 :tmpfs\n")
    log = open(base / "automount.log", "w")  # noqa: SIM115
    am = subprocess.Popen(["automount", "-f", "-C", "-t", str(TIMEOUT), "-p",
                           str(base / "pid"), str(base / "auto.master")],
                          stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)  # own pgrp: else we'd be in "oz mode"
    try:
        for _ in range(100):
            if any(m.is_autofs for m in MountTable.read().at(mp)):
                break
            time.sleep(0.1)
        say(f"automount is up: {mp} is an autofs trigger (tmpfs, idle timeout {TIMEOUT}s)\n")

        say("1. Nobody holds it: touch it once, watch it expire")
        os.listdir(mp)
        say(f"   listdir() triggered it: mounted={mounted(mp)}")
        took = wait_expiry(mp, 4 * TIMEOUT + 5)
        say(f"   expired after {took:.1f}s\n" if took is not None else "   did NOT expire!\n")

        say("2. Gentoo bug 890812: access() reads the placeholder, not the real tmpfs (1777)")
        r = subprocess.run([*NOBODY, sys.executable, "-c",
                            "import os,sys; print(os.access(sys.argv[1], os.W_OK))", mp],
                           capture_output=True, text=True)
        say(f"   as nobody: os.access(W_OK) -> {r.stdout.strip()}   (mounted={mounted(mp)})")
        r = subprocess.run([*NOBODY, *HM, "run", "--hold", mp, "--require-writable", "--",
                            "sh", "-c", f"touch {mp}/ok && echo '   job ran, wrote {mp}/ok'"],
                           capture_output=True, text=True)
        say(r.stdout.rstrip() or r.stderr.rstrip())
        say(f"   holdmount run --require-writable exit={r.returncode}\n")
        wait_expiry(mp, 4 * TIMEOUT + 5)

        job = 4 * TIMEOUT
        say(f"3. holdmount run --hold {mp} -- sleep {job}   (job = 4x the idle timeout)")
        t0 = time.monotonic()
        proc = subprocess.Popen([*HM, "run", "--hold", mp, "--", "sleep", str(job)])
        line = []
        while proc.poll() is None:
            line.append("M" if mounted(mp) else ".")
            time.sleep(0.25)
        say(f"   samples every 250 ms during the job: {''.join(line)}")
        say(f"   job ended after {time.monotonic() - t0:.1f}s, exit {proc.returncode}; "
            f"mounted={mounted(mp)}")
        took = wait_expiry(mp, 4 * TIMEOUT + 5)
        say(f"   released -> expired {took:.1f}s after the job ended" if took is not None
            else "   did NOT expire after release!")
        ok = "." not in "".join(line[1:]) and took is not None

        say("\n4. The daemon: hold while a deployment is staged, finalize on SIGTERM")
        ok = daemon_part(base, mp) and ok
        say("\nresult: " + ("every hold outlived the idle timeout, the finalize ran with the "
                            "mount held, and everything was released" if ok
                            else "UNEXPECTED: see above"))
        return 0 if ok else 1
    finally:
        am.send_signal(signal.SIGTERM)
        try:
            am.wait(15)
        except subprocess.TimeoutExpired:
            am.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
