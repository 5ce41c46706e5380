"""P8 `holdmount merge STAGED DEST` vs `cp -a STAGED/. DEST && sync`, on the same filesystem.

STAGED: N regular files of about BYTES/N each (incompressible data, 100 per directory), made
once. Each sample merges (or copies) into a fresh empty DEST beside STAGED; both sides end
durable: holdmount merge fsyncs every file and directory itself, the peer runs `sync` after
`cp -a`. Before every sample the harness runs an untimed `sync` (so neither side pays for the
other's dirty pages) and STAGED is in the page cache for both. Interleaved, median of `reps`.
Throughput = BYTES / time.

Filesystems: ext4 on the machine's disk (a directory under /var/tmp, removed afterwards: the
goal row) and the bench's tmpfs (info: copy mechanics alone, fsync is free there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.lab import Lab, holdmount, now_ns
from bench.report import Row, fmt, median

PER_DIR = 100


def _staged(where: Path, files: int, total: int) -> int:
    size = max(1, total // files)
    block = os.urandom(1 << 20)
    written = 0
    for i in range(files):
        d = where / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        # a different slice of the random block for every file
        off = (i * 4099) % (len(block) - min(size, len(block) - 1))
        data = (block[off:] + block)[:size] if size <= len(block) else (
            block * (size // len(block) + 1))[:size]
        (d / f"f{i:05d}.bin").write_bytes(data)
        written += size
    return written


def _one(argv: list[str], then_sync: bool) -> float:
    subprocess.run(["sync"], check=True)
    t0 = now_ns()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    if then_sync:
        subprocess.run(["sync"], check=True)
    return (now_ns() - t0) / 1e9


def _measure(root: Path, files: int, total: int, reps: int,
             progress: Callable[[str], None], label: str) -> dict[str, list[float]]:
    staged = root / "staged"
    size = _staged(staged, files, total)
    t: dict[str, list[float]] = {"holdmount": [], "cp": [], "bytes": [float(size)]}
    for i in range(reps):
        for who in ("holdmount", "cp") if i % 2 == 0 else ("cp", "holdmount"):
            dest = root / f"dest-{who}-{i}"
            if who == "holdmount":
                took = _one(holdmount("merge", str(staged), str(dest)), False)
            else:
                dest.mkdir()
                took = _one(["cp", "-a", f"{staged}/.", str(dest)], True)
            t[who].append(took)
            progress(f"P8 {label}: {who} {took:.2f} s ({size / took / 2**20:.0f} MiB/s)")
            shutil.rmtree(dest)
    return t


def rows(lab: Lab, files: int, total: int, reps: int,
         progress: Callable[[str], None]) -> list[Row]:
    out: list[Row] = []
    disk = Path(tempfile.mkdtemp(prefix="holdmount-bench-p8-", dir="/var/tmp"))
    try:
        for label, root in (("ext4 (disk)", disk), ("tmpfs", lab.dir("p8"))):
            t = _measure(root, files, total, reps, progress, label)
            size = t["bytes"][0]
            h = size / median(t["holdmount"]) / 2**20
            c = size / median(t["cp"]) / 2**20
            goal_row = root == disk
            out.append(Row(
                "P8", f"merge {files:,} files / {size / 2**20:.0f} MiB on {label}",
                f"{fmt(h, 'MiB/s')} ({median(t['holdmount']):.2f} s)",
                f"cp -a + sync: {fmt(c, 'MiB/s')} ({median(t['cp']):.2f} s)",
                f"{h / c:.2f}x", "≥ 0.9x throughput" if goal_row else "info",
                (h >= 0.9 * c) if goal_row else None, {"s": t, "fs": label}))
            shutil.rmtree(root / "staged", ignore_errors=True)
    finally:
        shutil.rmtree(disk, ignore_errors=True)
    return out
