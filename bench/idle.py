"""P1 idle wakeups and P2 idle RSS: every holder idle side by side in the same window.

Ten real automounts (one direct map, idle timeout 2 s, so anything that stops holding them loses
them within seconds) plus an 11th entry, the ostree peer's SR/boot. Holders, all started by the
harness and all idle at once:
- `holdmount daemon` holding the ten (when=always), with a marker (absent) and one action, the
  shape of a real configuration;
- ten `flock DIR sleep infinity` (one per path; flock(1) opens DIR, which triggers and holds it,
  and waits for sleep: twenty processes in all);
- `ostree admin finalize-staged --hold` holding SR/boot (when ostree runs here);
- `/usr/bin/python3 -c 'import signal; signal.pause()'` (P2's peer: the interpreter alone).

P1: voluntary context switches (/proc/PID/task/*/status, summed over threads and, for flock,
over both processes) between two samples `idle` seconds apart, taken 2 s after every holder was
ready. A process blocked in the kernel that nothing wakes does not switch at all. P2: VmRSS at
the end of the window; the daemon's children (its long-lived trigger helper, when it has one)
are an info row with their RSS and PSS (a forked helper shares most pages with the daemon).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import ostreepeer
from bench.automount import Automount
from bench.lab import (
    PY,
    Daemon,
    Lab,
    children,
    daemon_config,
    notify_socket,
    pss_kib,
    rss_kib,
    voluntary_switches,
    wait_for,
)
from bench.report import Row, ratio

N = 10


def rows(lab: Lab, idle: float, progress: Callable[[str], None]) -> list[Row]:
    why_no_ostree = ostreepeer.available()
    sr = ostreepeer.sysroot(lab) if why_no_ostree is None else None
    names = [f"m{i}" for i in range(N)]
    extra = [str(sr / "boot")] if sr is not None else []
    mnt = lab.dir("p1-mnt")
    am = Automount(lab, names, timeout=2, paths=[str(mnt / n) for n in names] + extra)
    work = lab.dir("p1")
    cfg = daemon_config(work / "holdmount.toml",
                        holds=[(p, "always") for p in am.paths[:N]],
                        marker=str(work / "marker"),
                        actions=[("finalize", ["/bin/true"], "staged")])
    try:
        with notify_socket(lab, "p1-notify") as notify:
            daemon = Daemon(lab, cfg, notify)
            daemon.wait_ready()
            flocks = [lab.procs.start(["flock", p, "sleep", "infinity"], env=lab.env)
                      for p in am.paths[:N]]
            pause = lab.procs.start([PY, "-c", "import signal; signal.pause()"], env=lab.env)
            ostree = ostreepeer.start(lab, sr) if sr is not None else None
            if ostree is not None and sr is not None and \
                    ostreepeer.wait_paused(ostree, sr) is None:
                raise RuntimeError("ostree finalize-staged --hold did not hold SR/boot")
            # every flock has its sleep child (it has opened and locked DIR by then)
            wait_for(lambda: all(children(f.pid) for f in flocks), 10)
            time.sleep(2.0)  # settle: start-up is over for everyone

            def flock_pids() -> list[int]:
                return [p for f in flocks for p in (f.pid, *children(f.pid))]

            def sample() -> dict[str, int]:
                s = {"holdmount": voluntary_switches(daemon.pid),
                     "flock": sum(voluntary_switches(p) for p in flock_pids()),
                     "pause": voluntary_switches(pause.pid)}
                if ostree is not None:
                    s["ostree"] = voluntary_switches(ostree.pid)
                return s

            progress(f"P1/P2: {len(am.paths)} automounts held ({am.mounted()} mounted); "
                     f"idle {idle:g} s")
            before = sample()
            time.sleep(idle)
            after = sample()
            wake = {k: after[k] - before[k] for k in before}
            helpers = children(daemon.pid)
            rss = {"holdmount": rss_kib(daemon.pid) / 1024,
                   "helper": sum(rss_kib(p) for p in helpers) / 1024,
                   "helper_pss": sum(pss_kib(p) for p in helpers) / 1024,
                   "flock": sum(rss_kib(p) for p in flock_pids()) / 1024,
                   "pause": rss_kib(pause.pid) / 1024}
            if ostree is not None:
                rss["ostree"] = rss_kib(ostree.pid) / 1024
            still = am.mounted()
            progress(f"P1/P2: wakeups {wake}, RSS MiB {rss}, still mounted {still}")
    finally:
        am_stop = am
        lab.procs.close()  # every holder; the automount too (it unmounts on SIGTERM)
        am_stop.stop()
    data = {"wakeups": wake, "rss_mib": rss, "idle_s": idle, "mounted_at_end": still,
            "automounts": N}
    out = [
        Row("P1", f"idle wakeups (voluntary ctx switches) in {idle:g} s, holding {N} "
            "automounts", f"{wake['holdmount']}",
            f"flock DIR sleep infinity x{N}: {wake['flock']}",
            ratio(wake["holdmount"], wake["flock"]), "0", wake["holdmount"] == 0, data),
    ]
    if "ostree" in wake:
        out.append(Row("P1", f"idle wakeups in {idle:g} s (ostree holds its 1 automount)",
                       f"{wake['holdmount']}",
                       f"ostree finalize-staged --hold: {wake['ostree']}",
                       ratio(wake["holdmount"], wake["ostree"]), "0",
                       wake["holdmount"] == 0, data))
    out.append(Row("P2", f"idle RSS, holding {N} automounts", f"{rss['holdmount']:.1f} MiB",
                   f"python3 signal.pause(): {rss['pause']:.1f} MiB",
                   ratio(rss["holdmount"], rss["pause"]), "≤ 1.3x",
                   rss["holdmount"] <= 1.3 * rss["pause"], data))
    if "ostree" in rss:
        out.append(Row("P2", "idle RSS (ostree holds 1 automount)",
                       f"{rss['holdmount']:.1f} MiB",
                       f"ostree finalize-staged --hold: {rss['ostree']:.1f} MiB",
                       ratio(rss["holdmount"], rss["ostree"]), "≤ 0.8x",
                       rss["holdmount"] <= 0.8 * rss["ostree"], data))
    out.append(Row("P2", f"idle RSS vs one holder per path ({N} paths)",
                   f"{rss['holdmount']:.1f} MiB",
                   f"flock DIR sleep infinity x{N}: {rss['flock']:.1f} MiB",
                   ratio(rss["holdmount"], rss["flock"]), "info", None, data))
    if helpers:
        out.append(Row("P2", "… the daemon's trigger helper (child process): RSS / PSS",
                       f"{rss['helper']:.1f} / {rss['helper_pss']:.1f} MiB",
                       f"python3 signal.pause(): {rss['pause']:.1f} MiB",
                       ratio(rss["helper_pss"], rss["pause"]), "info", None, data))
    if why_no_ostree is not None:
        data["ostree_skipped"] = why_no_ostree
    return out
