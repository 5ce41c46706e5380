"""P3 start-up: exec -> ready, interleaved runs of each contender.

- holdmount: `holdmount daemon --config FILE` holding one real automount (kept mounted by the
  harness for the whole row, so this is holdmount's cost, not the automount daemon's), with a
  marker (absent) and one action — the shape of the ostree use case. Ready: the harness's
  NOTIFY_SOCKET listener receives READY=1 (t taken when recv() returns). With
  $CACHE_DIRECTORY as the unit's CacheDirectory= sets it: the goal row is a start with the
  configuration unchanged since the last one (the parse comes from the cache); an info row
  starts each time with the cache emptied (the first start after the configuration changed).
- peer `python3 -c pass`: exec -> exit (waitpid returns): the interpreter's own start and stop.
- peer ostree: `ostree admin finalize-staged --hold` (Type=exec, no READY=1): exec -> first
  seen sleeping in pause() with SR/boot open (see bench/ostreepeer.py).

Every contender is started the same way (fork from the harness, prctl(PDEATHSIG), exec), and t0
is read just before that fork.
"""

from __future__ import annotations

from collections.abc import Callable

from bench import ostreepeer
from bench.automount import Automount
from bench.lab import PY, Daemon, Lab, daemon_config, exec_ms, notify_socket, now_ns
from bench.report import Row, fmt, median, ms, ratio


def rows(lab: Lab, runs: int, progress: Callable[[str], None]) -> list[Row]:
    why_no_ostree = ostreepeer.available()
    sr = ostreepeer.sysroot(lab) if why_no_ostree is None else None
    mnt = lab.dir("p3-mnt")
    am = Automount(lab, ["boot"], timeout=600,
                   paths=[str(mnt / "boot")] + ([str(sr / "boot")] if sr else []))
    keepers = [lab.procs.start(["flock", p, "sleep", "infinity"], env=lab.env)
               for p in am.paths]  # keep both mounted: measure the holders, not automount
    work = lab.dir("p3")
    cfg = daemon_config(work / "holdmount.toml", holds=[(am.paths[0], "always")],
                        marker=str(work / "marker"),
                        actions=[("finalize", ["/bin/true"], "staged")])
    cache = lab.dir("p3-cache")
    cache.chmod(0o700)
    t: dict[str, list[float]] = {"holdmount": [], "python": [], "ostree": [], "miss": []}
    try:
        with notify_socket(lab, "p3-notify") as notify:
            for i in range(runs + 1):  # the first round warms caches and is dropped
                for f in cache.iterdir():
                    f.unlink()
                d = Daemon(lab, cfg, notify, cache=cache)
                miss = d.wait_ready(60)
                d.stop()
                notify.drain()
                d = Daemon(lab, cfg, notify, cache=cache)
                h = d.wait_ready(60)
                d.stop()
                notify.drain()
                py = exec_ms(lab, [PY, "-c", "pass"])
                if sr is not None:
                    t0 = now_ns()
                    o = ostreepeer.start(lab, sr)
                    ready = ostreepeer.wait_paused(o, sr)
                    lab.procs.stop(o)
                    if ready is None:
                        raise RuntimeError("ostree finalize-staged --hold did not hold")
                    if i:
                        t["ostree"].append(ms(ready - t0))
                if i:
                    t["holdmount"].append(ms(h))
                    t["miss"].append(ms(miss))
                    t["python"].append(py)
            progress(f"P3: holdmount {median(t['holdmount']):.1f} ms (cache miss "
                     f"{median(t['miss']):.1f} ms), python -c pass "
                     f"{median(t['python']):.1f} ms, ostree {median(t['ostree']):.1f} ms")
    finally:
        for k in keepers:
            lab.procs.stop(k)
        am.stop()
    hm, py_ms = median(t["holdmount"]), median(t["python"])
    out = [Row("P3", f"start-up: exec → READY=1 (median of {runs})", fmt(hm, "ms"),
               f"python3 -c pass: {fmt(py_ms, 'ms')}", ratio(hm, py_ms), "≤ 1.8x",
               hm <= 1.8 * py_ms, {"ms": t}),
           Row("P3", f"… the configuration changed since the last start (parse-cache miss, "
               f"median of {runs})", fmt(median(t["miss"]), "ms"),
               f"python3 -c pass: {fmt(py_ms, 'ms')}", ratio(median(t["miss"]), py_ms), "info",
               None, {"ms": t})]
    if t["ostree"]:
        os_ms = median(t["ostree"])
        out.append(Row("P3", "start-up: exec → holding (ostree: idle in pause())",
                       fmt(hm, "ms"), f"ostree finalize-staged --hold: {fmt(os_ms, 'ms')}",
                       ratio(hm, os_ms), "info", None, {"ms": t}))
    return out


