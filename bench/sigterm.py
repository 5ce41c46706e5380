"""P4 SIGTERM -> first action exec'd.

The daemon holds one plain directory and has one action (when=always) whose program is
bench/stamp.c, built static: its main() reads CLOCK_MONOTONIC first thing and writes it to a
file. The harness reads CLOCK_MONOTONIC (the same system-wide clock) just before kill(SIGTERM).
So each sample spans: signal delivery, the daemon's loop waking, STOPPING=1, the marker check,
the action's fork/exec, up to the first instruction of the action's main() — "the action is
running". One daemon per sample (a daemon finalizes once), started and READY before t0.

Peer (the floor for a Python daemon): `python3 -c` that blocks in sigwait(SIGTERM) and then
starts the same program with subprocess.Popen — what any Python service pays for this.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.lab import (
    PY,
    Daemon,
    Lab,
    daemon_config,
    notify_socket,
    now_ns,
    read_stamp,
    stamp_program,
)
from bench.report import Row, fmt, median, ms, p99, ratio

PEER = """
import os, signal, socket, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
signal.sigwait({signal.SIGTERM})
subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True).wait()
"""


def _ended(proc: subprocess.Popen[Any]) -> bool:
    return proc.poll() is not None


def rows(lab: Lab, runs: int, progress: Callable[[str], None]) -> list[Row]:
    stamp = stamp_program(lab)
    work = lab.dir("p4")
    held = work / "held"
    held.mkdir()
    out_file = work / "t"
    cfg = daemon_config(work / "holdmount.toml", holds=[(str(held), "always")],
                        actions=[("stamp", [stamp, str(out_file)], "always")])
    t: dict[str, list[float]] = {"holdmount": [], "peer": []}
    with notify_socket(lab, "p4-notify") as notify:
        for i in range(runs + 1):  # round 0 warms up and is dropped
            for who in ("holdmount", "peer"):
                out_file.unlink(missing_ok=True)
                if who == "holdmount":
                    d = Daemon(lab, cfg, notify)
                    d.wait_ready(60)
                    proc = d.proc
                else:
                    env = dict(lab.env, NOTIFY_SOCKET=str(notify.path))
                    proc = lab.procs.start([PY, "-c", PEER, stamp, str(out_file)], env=env)
                    if notify.wait(lambda m: m.get("READY") == "1", 60, proc) is None:
                        raise RuntimeError("P4 peer did not start")
                t0 = now_ns()
                os.kill(proc.pid, 15)
                deadline = time.monotonic() + 60
                while proc.poll() is None and time.monotonic() < deadline:
                    notify.recv(0.002)  # drain, as systemd would (STOPPING=1, FDSTOREREMOVE=1)
                lab.procs.stop(proc)
                notify.drain()
                t1 = read_stamp(out_file)
                if t1 is None:
                    raise RuntimeError(f"P4 {who}: the action did not run")
                if i:
                    t[who].append(ms(t1 - t0))
        progress(f"P4: holdmount median {median(t['holdmount']):.2f} ms p99 "
                 f"{p99(t['holdmount']):.2f} ms; peer median {median(t['peer']):.2f} ms")
    h, hp = median(t["holdmount"]), p99(t["holdmount"])
    p, pp = median(t["peer"]), p99(t["peer"])
    return [
        Row("P4", f"SIGTERM → first action running, median of {runs}", fmt(h, "ms"),
            f"python3 sigwait + Popen: {fmt(p, 'ms')}", ratio(h, p), "≤ 10 ms", h <= 10.0,
            {"ms": t}),
        Row("P4", f"SIGTERM → first action running, p99 of {runs}", fmt(hp, "ms"),
            f"python3 sigwait + Popen: {fmt(pp, 'ms')}", ratio(hp, pp), "info", None, {}),
    ]
