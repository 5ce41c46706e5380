"""P7 `holdmount overlay changes MERGED` vs a full walk of the merged tree (`find MERGED`).

An overlay (lower, upper, work on the bench's tmpfs, in the private namespace) over N empty
files in directories of 1,000; then K changes made through the merged view: K/2 files modified
(appended to: copy-up), K/4 deleted (whiteouts), K/4 added. Both commands run end to end as
processes (exec -> exit, output to /dev/null), interleaved, warm caches (one untimed round
first). Info line: `overlay.changes()` called in-process (no interpreter start), which is the
part that depends on the tree.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from bench.lab import Lab, holdmount, now_ns
from bench.report import Row, fmt, median, ms

PER_DIR = 1000


def _build(lab: Lab, files: int, changes: int) -> tuple[str, int]:
    work = lab.dir("p7")
    lower, upper, wk, merged = (work / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, wk, merged):
        d.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    sub_s = ""
    for i in range(files):
        if i % PER_DIR == 0:
            sub_s = str(lower / f"d{i // PER_DIR:04d}")
            os.mkdir(sub_s)
        os.close(os.open(f"{sub_s}/f{i % PER_DIR:04d}", flags, 0o644))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={wk}", str(merged)],
                   check=True)
    # spread the changes over the tree: every step-th file
    step = max(1, files // changes)
    victims = [(i // PER_DIR, i % PER_DIR) for i in range(0, files, step)][:changes]
    made = 0
    for n, (dn, fn) in enumerate(victims):
        p = merged / f"d{dn:04d}" / f"f{fn:04d}"
        kind = n % 4
        if kind in (0, 1):
            with open(p, "ab") as fh:
                fh.write(b"x")
        elif kind == 2:
            p.unlink()
        else:
            (merged / f"d{dn:04d}" / f"new{fn:04d}").write_bytes(b"new")
        made += 1
    return str(merged), made


def _time(argv: list[str]) -> float:
    t0 = now_ns()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return ms(now_ns() - t0)


def rows(lab: Lab, files: int, changes: int, reps: int,
         progress: Callable[[str], None]) -> list[Row]:
    t_build = time.monotonic()
    merged, made = _build(lab, files, changes)
    progress(f"P7: built {files:,} files, {made} changes in {time.monotonic() - t_build:.1f} s")
    from holdmount import overlay

    listed = len(overlay.changes(merged).lines())
    t: dict[str, list[float]] = {"holdmount": [], "find": [], "inproc": []}
    try:
        for i in range(reps + 1):
            h = _time(holdmount("overlay", "changes", merged))
            f = _time(["find", merged])
            t0 = now_ns()
            overlay.changes(merged)
            inproc = ms(now_ns() - t0)
            if i:
                t["holdmount"].append(h)
                t["find"].append(f)
                t["inproc"].append(inproc)
    finally:
        subprocess.run(["umount", merged], check=False)
    h, f, ip = median(t["holdmount"]), median(t["find"]), median(t["inproc"])
    progress(f"P7: holdmount {h:.1f} ms, find {f:.1f} ms, in-process {ip:.2f} ms")
    data = {"ms": t, "files": files, "changes": made, "listed": listed}
    return [
        Row("P7", f"overlay changes, {files:,} files / {made} changes (exec → exit)",
            fmt(h, "ms"), f"find MERGED: {fmt(f, 'ms')}", f"{f / h:.1f}x faster",
            "≥ 100x faster", f >= 100 * h, data),
        Row("P7", "… overlay.changes() in-process (no interpreter start)", fmt(ip, "ms"),
            f"find MERGED: {fmt(f, 'ms')}", f"{f / ip:.0f}x faster", "—", None, {}),
    ]


