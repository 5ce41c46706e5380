"""P5 marker created -> armed.

Observable: the daemon's STATUS= notify message that says "marker armed". The daemon sends it
from its arm step *after* it has taken the marker's `staged` holds, so it is the daemon's own
statement that arming is complete, pushed the moment it is true; the harness sits blocked in
recv() on its NOTIFY_SOCKET listener and reads CLOCK_MONOTONIC when recv() returns. Rejected:
polling the control socket (the poll interval and the request itself, answered by the same
loop, land in the number) and polling /proc/PID/fd for the new hold (busy polling on 2 cores
slows the daemon it watches; and it says nothing without staged holds).

t0: CLOCK_MONOTONIC just before the harness creates the marker (open O_CREAT|O_EXCL + close).
Then the marker is removed and the harness waits for "marker disarmed" before the next sample.
Variants: no staged hold (inotify -> state), and one staged hold on a plain directory (plus
the hold engine: a helper process opens it and passes the fd back).

Peer (the floor for a Python inotify watcher): python3 with libc's inotify (ctypes) on the marker's
directory that, on the event, lstat()s the marker and sends STATUS=armed.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable
from typing import Any

from bench.lab import PY, Daemon, Lab, Notify, daemon_config, notify_socket, now_ns
from bench.report import Row, fmt, median, ms, p99, ratio

PEER = """
import ctypes, os, select, socket, sys
marker = sys.argv[1]
libc = ctypes.CDLL("libc.so.6", use_errno=True)
ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
# IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM
libc.inotify_add_watch(ino, os.fsencode(os.path.dirname(marker)), 0x100 | 0x200 | 0x80 | 0x40)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
s.sendto(b"READY=1", addr)
armed = False
while True:
    select.select([ino], [], [])
    try:
        while os.read(ino, 65536):
            pass
    except BlockingIOError:
        pass
    now = os.path.lexists(marker)
    if now != armed:
        armed = now
        s.sendto(b"STATUS=marker " + (b"armed" if now else b"disarmed"), addr)
"""


def _alive(proc: subprocess.Popen[Any]) -> bool:
    return proc.poll() is None


def _status(word: str) -> Callable[[dict[str, str]], bool]:
    return lambda m: f"marker {word}" in m.get("STATUS", "")


def _samples(notify: Notify, marker: str, runs: int, proc_alive: Callable[[], bool]) \
        -> list[float]:
    out: list[float] = []
    for i in range(runs + 1):  # sample 0 warms up and is dropped
        notify.drain()
        t0 = now_ns()
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        t1 = notify.wait(_status("armed"), 30)
        if t1 is None:
            raise RuntimeError(f"P5: no 'marker armed' (alive: {proc_alive()})")
        os.unlink(marker)
        if notify.wait(_status("disarmed"), 30) is None:
            raise RuntimeError("P5: no 'marker disarmed'")
        if i:
            out.append(ms(t1 - t0))
    return out


def rows(lab: Lab, runs: int, progress: Callable[[str], None]) -> list[Row]:
    results: dict[str, list[float]] = {}
    with notify_socket(lab, "p5-notify") as notify:
        for variant in ("no staged hold", "1 staged hold"):
            work = lab.dir("p5")
            marker_dir = work / "run"
            marker_dir.mkdir()
            marker = str(marker_dir / "staged-deployment")
            held = work / "boot"
            held.mkdir()
            holds = [(str(held), "staged")] if variant == "1 staged hold" else []
            cfg = daemon_config(work / "holdmount.toml", holds=holds, marker=marker,
                                actions=[("finalize", ["/bin/true"], "staged")])
            d = Daemon(lab, cfg, notify)
            d.wait_ready(60)
            alive = functools.partial(_alive, d.proc)
            results[variant] = _samples(notify, marker, runs, alive)
            d.stop()
        work = lab.dir("p5-peer")
        marker = str(work / "staged-deployment")
        env = dict(lab.env, NOTIFY_SOCKET=str(notify.path))
        peer = lab.procs.start([PY, "-c", PEER, marker], env=env)
        if notify.wait(lambda m: m.get("READY") == "1", 30, peer) is None:
            raise RuntimeError("P5 peer did not start")
        results["peer"] = _samples(notify, marker, runs, functools.partial(_alive, peer))
        lab.procs.stop(peer)
    progress("P5: " + ", ".join(f"{k}: median {median(v):.3f} ms p99 {p99(v):.3f} ms"
                                for k, v in results.items()))
    p, pp = median(results["peer"]), p99(results["peer"])
    out: list[Row] = []
    for variant in ("no staged hold", "1 staged hold"):
        v = results[variant]
        out.append(Row("P5", f"marker created → STATUS armed, {variant}, median of {runs}",
                       fmt(median(v), "ms"), f"python3 inotify watcher: {fmt(p, 'ms')}",
                       ratio(median(v), p), "≤ 0.5 ms", median(v) <= 0.5, {"ms": v}))
        out.append(Row("P5", f"… p99 of {runs}", fmt(p99(v), "ms"),
                       f"python3 inotify watcher: {fmt(pp, 'ms')}", ratio(p99(v), pp), "info",
                       None, {}))
    out[0].data["peer_ms"] = results["peer"]
    return out
