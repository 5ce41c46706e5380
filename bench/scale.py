"""P6 scale: exec -> READY=1 and RSS of `holdmount daemon` holding N real automounts (one
direct map with N entries, cold: a fresh automount before every start, so every hold really
triggers a mount) and N plain directories (on the bench's tmpfs).

Peer: `bench.holder raw` — one python3 process opening the same N directories itself (the floor:
interpreter start + N opens, no verification). Info line: `bench.holder engine` — the hold
engine's `take()` over all N at once (what a daemon that batched its holds would pay).
Goal: linear, and <= 2 s at 10,000 plain directories. "Linear" here: the per-path cost between
the two largest sizes is at most 1.5x the per-path cost between the two smallest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.automount import Automount
from bench.lab import PY, Daemon, Lab, Notify, daemon_config, notify_socket, now_ns, rss_kib
from bench.report import Row, fmt, median, ratio


def _peer(lab: Lab, notify: Notify, mode: str, listfile: Path) -> tuple[float, int]:
    env = dict(lab.env, NOTIFY_SOCKET=str(notify.path))
    t0 = now_ns()
    proc = lab.procs.start([PY, "-m", "bench.holder", mode, str(listfile)], env=env,
                           log=listfile.parent / f"{mode}.log")
    t = notify.wait(lambda m: m.get("READY") == "1", 600, proc)
    if t is None:
        lab.procs.stop(proc)
        raise RuntimeError(f"bench.holder {mode} failed: "
                           f"{(listfile.parent / f'{mode}.log').read_text()[-2000:]}")
    rss = rss_kib(proc.pid)
    lab.procs.stop(proc)
    return (t - t0) / 1e9, rss


def _daemon(lab: Lab, notify: Notify, paths: Sequence[str], work: Path) -> tuple[float, int]:
    cfg = daemon_config(work / "holdmount.toml", holds=[(p, "always") for p in paths])
    d = Daemon(lab, cfg, notify)
    took = d.wait_ready(600) / 1e9
    rss = rss_kib(d.pid)
    d.stop()
    if d.ready_via != "READY=1":
        _ready_problems.append(f"{len(paths):,} holds: READY=1 never arrived (sd_notify "
                               "failed: the message was too long); timed to the idle loop")
    elif d.ready_bytes:
        _ready_problems.append(f"{len(paths):,} holds: READY=1 came in a {d.ready_bytes:,}-"
                               "byte message, which systemd ignores (limit 4,096)")
    return took, rss


_ready_problems: list[str] = []


def measure(lab: Lab, sizes: Sequence[int], reps: int, kind: str,
            progress: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with notify_socket(lab, f"p6-{kind}") as notify:
        for n in sizes:
            work = lab.dir(f"p6-{kind}-{n}")
            res: dict[str, list[float]] = {"holdmount": [], "raw": [], "engine": [],
                                           "holdmount_rss": [], "raw_rss": [],
                                           "engine_rss": []}
            for rep in range(reps):
                for who in ("holdmount", "raw", "engine"):  # interleaved
                    am = None
                    if kind == "autofs":
                        am = Automount(lab, [f"m{i}" for i in range(n)], timeout=600,
                                       where=work / f"mnt-{rep}-{who}")
                        paths = am.paths
                    else:
                        base = work / "dirs"
                        if not base.exists():
                            base.mkdir()
                            for i in range(n):
                                (base / f"d{i}").mkdir()
                        paths = [str(base / f"d{i}") for i in range(n)]
                    listfile = work / "paths"
                    listfile.write_text("".join(p + "\n" for p in paths))
                    try:
                        if who == "holdmount":
                            t, rss = _daemon(lab, notify, paths, work)
                        else:
                            t, rss = _peer(lab, notify, who, listfile)
                    finally:
                        if am is not None:
                            am.stop()
                    res[who].append(t)
                    res[f"{who}_rss"].append(rss / 1024)
                    progress(f"P6 {kind} n={n} {who}: {t:.3f} s, {rss / 1024:.1f} MiB")
            out[n] = res
    return out


def _linear(res: dict[int, dict[str, Any]], who: str) -> float | None:
    ns = sorted(res)
    if len(ns) < 3:
        return None
    t = {n: median(res[n][who]) for n in ns}
    small = (t[ns[1]] - t[ns[0]]) / (ns[1] - ns[0])
    large = (t[ns[-1]] - t[ns[-2]]) / (ns[-1] - ns[-2])
    return large / small if small > 0 else None


def rows(lab: Lab, dirs: Sequence[int], autofs: Sequence[int], reps: int,
         progress: Callable[[str], None]) -> list[Row]:
    out: list[Row] = []
    for kind, sizes in (("autofs", autofs), ("dirs", dirs)):
        res = measure(lab, sizes, reps, kind, progress)
        lin = _linear(res, "holdmount")
        top = max(sizes)
        what = "real automounts (cold)" if kind == "autofs" else "plain directories"
        for n in sizes:
            r = res[n]
            h, p, e = median(r["holdmount"]), median(r["raw"]), median(r["engine"])
            is_top = n == top
            goal = "—"
            passed: bool | None = None
            if kind == "dirs" and is_top:
                # the goal is 2 s at 10,000; smaller runs (--quick) are judged per path
                goal = ("≤ 2 s" if top == 10_000 else "≤ 0.2 ms/path (2 s at 10,000)") + \
                    "; linear (≤ 1.5)"
                passed = h / top * 10_000 <= 2.0 and (lin is None or lin <= 1.5)
            elif kind == "autofs" and is_top:
                goal = "linear (≤ 1.5)"
                passed = lin is None or lin <= 1.5
            out.append(Row(
                "P6", f"exec → READY, {n:,} {what}",
                fmt(h, "s") + f", {median(r['holdmount_rss']):.1f} MiB",
                f"raw open loop: {fmt(p, 's')}, {median(r['raw_rss']):.1f} MiB; "
                f"hold.take batch: {fmt(e, 's')}",
                ratio(h, p), goal, passed,
                data={"n": n, "kind": kind, **r,
                      "linearity": lin if is_top else None}))
        if lin is not None:
            out[-1].metric += f" (per-path cost, largest/smallest step: {lin:.2f})"
        problems = " ".join(_ready_problems)
        for row in out:
            if row.data.get("kind") == kind and f"{row.data['n']:,} holds:" in problems:
                row.passed = False
                row.goal = (row.goal + "; " if row.goal != "—" else "") + \
                    "READY=1 reaches systemd"
                row.data["ready_problems"] = [p for p in _ready_problems
                                              if p.startswith(f"{row.data['n']:,} holds:")]
        _ready_problems.clear()
    return out
