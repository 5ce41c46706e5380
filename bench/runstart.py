"""P9 `holdmount run --hold DIR -- /bin/true` vs `python3 -c pass`, exec -> exit.

What a build wrapper costs per job: the interpreter's start, the imports of `run`, the hold
(DIR is a plain directory on the bench's tmpfs: the hold engine without an automount's own
mount time), the fork+exec of the command and the wait. Peer: the interpreter's own start and
stop. Both are started the same way (fork from the harness, exec) and timed to waitpid's
return; interleaved, the first round dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.lab import PY, Lab, holdmount, now_ns
from bench.report import Row, fmt, median, ms, ratio


def _time(lab: Lab, argv: list[str]) -> float:
    t0 = now_ns()
    p = lab.procs.start(argv, env=lab.env)
    code = p.wait()
    lab.procs.reap(p)
    if code != 0:
        raise RuntimeError(f"P9: {' '.join(argv)} exited {code}")
    return ms(now_ns() - t0)


def rows(lab: Lab, runs: int, progress: Callable[[str], None]) -> list[Row]:
    held = lab.dir("p9")
    t: dict[str, list[float]] = {"holdmount": [], "python": []}
    for i in range(runs + 1):  # the first round warms caches and is dropped
        h = _time(lab, holdmount("run", "--hold", str(held), "--", "/bin/true"))
        p = _time(lab, [PY, "-c", "pass"])
        if i:
            t["holdmount"].append(h)
            t["python"].append(p)
    hm, py = median(t["holdmount"]), median(t["python"])
    progress(f"P9: holdmount run {hm:.1f} ms, python3 -c pass {py:.1f} ms")
    return [Row("P9", f"holdmount run --hold DIR -- /bin/true, exec → exit (median of {runs})",
                fmt(hm, "ms"), f"python3 -c pass: {fmt(py, 'ms')}", ratio(hm, py), "≤ 2x",
                hm <= 2 * py, {"ms": t})]
