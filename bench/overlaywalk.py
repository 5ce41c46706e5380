"""P7 `holdmount overlay changes MERGED` vs a spk-style full validation of the merged view.

The tree, on ext4 (a directory under /var/tmp on the machine's disk, removed afterwards): N
empty files in 5 lower layers (N/5 each, directories of 1,000 names shared by the layers, so
the merged directories hold files of every layer), and an upper layer with K changes made
through the merged view: K/2 files modified (appended to: copy-up), K/4 deleted (whiteouts),
K/4 added.

- holdmount: `holdmount overlay changes MERGED` as a whole process (exec -> exit, output to
  /dev/null): it reads the upperdir only.
- peer: what a package manager does to validate a layered tree without knowing its upper layer
  (spk): `python3 -S` walking the merged view with os.walk and lstat()ing every entry.

Warm: interleaved runs after one untimed round. Cold: before each timed run `sync` and then
`echo 3 > /proc/sys/vm/drop_caches` (dentries, inodes and pages; the only place the bench drops
caches), so each side starts with nothing cached — the interpreter's own files included, for
both. Info line: `overlay.changes()` called in-process (no interpreter start).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.lab import PY, Lab, holdmount, now_ns
from bench.report import Row, fmt, median, ms

LAYERS = 5
PER_DIR = 1000
WALK = """
import os, sys
n = 0
for top, dirs, files in os.walk(sys.argv[1]):
    for name in dirs + files:
        os.lstat(os.path.join(top, name))
        n += 1
print(n)
"""


def _layers(root: Path, files: int) -> list[Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    per_layer = max(1, files // LAYERS)
    lowers = []
    for layer in range(LAYERS):
        lower = root / f"lower{layer}"
        lower.mkdir()
        sub = ""
        for i in range(per_layer):
            if i % PER_DIR == 0:
                sub = str(lower / f"d{i // PER_DIR:04d}")
                os.mkdir(sub)
            os.close(os.open(f"{sub}/l{layer}f{i % PER_DIR:04d}", flags, 0o644))
        lowers.append(lower)
    return lowers


def _build(root: Path, files: int, changes: int) -> tuple[str, int]:
    lowers = _layers(root, files)
    upper, wk, merged = (root / n for n in ("upper", "work", "merged"))
    for d in (upper, wk, merged):
        d.mkdir()
    lowerdir = ":".join(str(p) for p in reversed(lowers))  # top first
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lowerdir},upperdir={upper},workdir={wk}", str(merged)],
                   check=True)
    per_layer = max(1, files // LAYERS)
    step = max(1, per_layer * LAYERS // changes)
    made = 0
    for n in range(changes):  # spread over the layers and directories: every step-th file
        i = (n * step) % (per_layer * LAYERS)
        layer, j = i % LAYERS, i // LAYERS
        d = merged / f"d{j // PER_DIR:04d}"
        p = d / f"l{layer}f{j % PER_DIR:04d}"
        kind = n % 4
        if kind in (0, 1):
            with open(p, "ab") as fh:
                fh.write(b"x")
        elif kind == 2:
            p.unlink()
        else:
            (d / f"new{n:05d}").write_bytes(b"new")
        made += 1
    return str(merged), made


def _time(argv: list[str], cold: bool) -> float:
    if cold:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    t0 = now_ns()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return ms(now_ns() - t0)


def _measure(merged: str, reps: int, cold: bool) -> dict[str, list[float]]:
    t: dict[str, list[float]] = {"holdmount": [], "walk": []}
    for i in range(reps + (0 if cold else 1)):  # warm: the first round fills caches
        h = _time(holdmount("overlay", "changes", merged), cold)
        w = _time([PY, "-S", "-c", WALK, merged], cold)
        if cold or i:
            t["holdmount"].append(h)
            t["walk"].append(w)
    return t


def rows(lab: Lab, files: int, changes: int, reps: int,
         progress: Callable[[str], None]) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="holdmount-bench-p7-", dir="/var/tmp"))
    merged = ""
    try:
        t_build = time.monotonic()
        merged, made = _build(root, files, changes)
        progress(f"P7: built {files:,} files in {LAYERS} layers, {made} changes on ext4 in "
                 f"{time.monotonic() - t_build:.1f} s")
        from holdmount import overlay

        listed = len(overlay.changes(merged).lines())
        walked = int(subprocess.run([PY, "-S", "-c", WALK, merged], capture_output=True,
                                    text=True, check=True).stdout)
        warm = _measure(merged, reps, cold=False)
        cold = _measure(merged, reps, cold=True)
        t0 = now_ns()
        overlay.changes(merged)
        inproc = ms(now_ns() - t0)
    finally:
        if merged:
            subprocess.run(["umount", merged], check=False)
        shutil.rmtree(root, ignore_errors=True)
    out: list[Row] = []
    for label, t, goal in (("warm", warm, 25), ("cold", cold, 15)):
        h, w = median(t["holdmount"]), median(t["walk"])
        progress(f"P7 {label}: holdmount {h:.1f} ms, walk {w:.1f} ms")
        out.append(Row(
            "P7", f"overlay changes, {files:,} files in {LAYERS} layers / {made} changes, ext4, "
            f"{label} cache (exec → exit)", fmt(h, "ms"),
            f"python3 -S os.walk + lstat of the merged view ({walked:,} entries): "
            f"{fmt(w, 'ms')}", f"{w / h:.1f}x faster", f"≥ {goal}x faster", w >= goal * h,
            {"ms": t, "files": files, "changes": made, "listed": listed, "walked": walked}))
    out.append(Row("P7", "… overlay.changes() in-process, warm (no interpreter start)",
                   fmt(inproc, "ms"), f"the walk, warm: {fmt(median(warm['walk']), 'ms')}",
                   f"{median(warm['walk']) / inproc:.0f}x faster", "info", None, {}))
    return out
