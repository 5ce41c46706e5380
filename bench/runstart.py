"""P9 `holdmount run --hold DIR -- /bin/true` vs `python3 -c pass`, exec -> exit.

What a build wrapper costs per job: the interpreter's start, the imports of `run`, the hold
(DIR is a plain directory on the bench's tmpfs: the hold engine without an automount's own
mount time), the fork+exec of the command and the wait. Peer: the interpreter's own start and
stop. Both are started the same way (fork from the harness, exec) and timed to waitpid's
return; interleaved, the first round dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.lab import PY, Lab, exec_ms, holdmount
from bench.report import Row, fmt, median, ratio


def rows(lab: Lab, runs: int, progress: Callable[[str], None]) -> list[Row]:
    held = lab.dir("p9")
    t: dict[str, list[float]] = {"holdmount": [], "python": []}
    for i in range(runs + 1):  # the first round warms caches and is dropped
        h = exec_ms(lab, holdmount("run", "--hold", str(held), "--", "/bin/true"))
        p = exec_ms(lab, [PY, "-c", "pass"])
        if i:
            t["holdmount"].append(h)
            t["python"].append(p)
    hm, py = median(t["holdmount"]), median(t["python"])
    progress(f"P9: holdmount run {hm:.1f} ms, python3 -c pass {py:.1f} ms")
    return [Row("P9", f"holdmount run --hold DIR -- /bin/true, exec → exit (median of {runs})",
                fmt(hm, "ms"), f"python3 -c pass: {fmt(py, 'ms')}", ratio(hm, py), "≤ 2x",
                hm <= 2 * py, {"ms": t})]
