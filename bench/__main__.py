"""`bench/run` lands here, inside its private mount namespace: run the rows, print, save."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import report
from bench.lab import REPO, Lab
from bench.report import Row


@dataclasses.dataclass(frozen=True)
class Params:
    name: str
    idle: float  # P1/P2 idle window, s
    startup_runs: int  # P3, per contender
    sigterm_runs: int  # P4
    marker_runs: int  # P5, per variant
    scale_dirs: tuple[int, ...]  # P6 plain directories
    scale_autofs: tuple[int, ...]  # P6 real automounts
    scale_reps: int
    overlay_files: int  # P7
    overlay_changes: int
    overlay_reps: int
    merge_files: int  # P8
    merge_bytes: int
    merge_reps: int


FULL = Params("full", idle=60, startup_runs=30, sigterm_runs=100, marker_runs=200,
              scale_dirs=(100, 1000, 10000), scale_autofs=(10, 100, 1000), scale_reps=3,
              overlay_files=200_000, overlay_changes=200, overlay_reps=5,
              merge_files=10_000, merge_bytes=1 << 30, merge_reps=3)
QUICK = Params("quick", idle=20, startup_runs=15, sigterm_runs=50, marker_runs=100,
               scale_dirs=(100, 1000, 10000), scale_autofs=(10, 100, 300), scale_reps=1,
               overlay_files=200_000, overlay_changes=200, overlay_reps=3,
               merge_files=2_000, merge_bytes=200 << 20, merge_reps=2)
# the smoke test's: every row runs, in seconds; the numbers mean nothing
SMOKE = Params("smoke", idle=1, startup_runs=2, sigterm_runs=2, marker_runs=3,
               scale_dirs=(5, 10, 20), scale_autofs=(2, 3, 4), scale_reps=1,
               overlay_files=300, overlay_changes=6, overlay_reps=1,
               merge_files=20, merge_bytes=1 << 20, merge_reps=1)

ROWS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9")


def _progress(quiet: bool) -> Callable[[str], None]:
    t0 = time.monotonic()

    def say(text: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    return say


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(params: Params, only: set[str], progress: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    with Lab() as lab:
        if only & {"P1", "P2"}:
            from bench import idle

            rows += [r for r in idle.rows(lab, params.idle, progress) if r.id in only]
        if "P3" in only:
            from bench import startup

            rows += startup.rows(lab, params.startup_runs, progress)
        if "P4" in only:
            from bench import sigterm

            rows += sigterm.rows(lab, params.sigterm_runs, progress)
        if "P5" in only:
            from bench import arming

            rows += arming.rows(lab, params.marker_runs, progress)
        if "P6" in only:
            from bench import scale

            rows += scale.rows(lab, params.scale_dirs, params.scale_autofs, params.scale_reps,
                               progress)
        if "P7" in only:
            from bench import overlaywalk

            rows += overlaywalk.rows(lab, params.overlay_files, params.overlay_changes,
                                     params.overlay_reps, progress)
        if "P8" in only:
            from bench import mergecopy

            rows += mergecopy.rows(lab, params.merge_files, params.merge_bytes,
                                   params.merge_reps, progress)
        if "P9" in only:
            from bench import runstart

            rows += runstart.rows(lab, params.startup_runs, progress)
    return rows


def _source() -> dict[str, str]:
    """Which holdmount was measured: its directory and the checkout's commit."""
    spec = importlib.util.find_spec("holdmount")
    src = str(Path(spec.origin).parent) if spec and spec.origin else "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    out = {"holdmount_src": src, "checkout": commit}
    if os.environ.get("HOLDMOUNT_BENCH_REV"):
        out["holdmount_rev"] = os.environ["HOLDMOUNT_BENCH_REV"]
    elif os.environ.get("HOLDMOUNT_BENCH_SRC"):
        out["holdmount_rev"] = "(a copy in HOLDMOUNT_BENCH_SRC)"
    else:
        out["holdmount_rev"] = f"working tree of {commit}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description="holdmount vs its peers, side "
                                "by side in one run; prints a Markdown table, writes JSON.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI-sized run (< 5 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny parameters: checks that "
                      "every row runs (seconds; the numbers mean nothing)")
    p.add_argument("--only", metavar="P1,P2,...", help="run only these rows")
    p.add_argument("--out", metavar="FILE", help="JSON output (default bench/results/"
                   "<mode>-<time>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("must run as root")
    params = SMOKE if args.smoke else QUICK if args.quick else FULL
    only = set(ROWS)
    if args.only:
        only = {x.strip().upper() for x in args.only.split(",")}
        unknown = only - set(ROWS)
        if unknown:
            p.error(f"unknown rows: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    rows = run(params, only, _progress(args.quiet))
    meta = {"mode": params.name, "params": dataclasses.asdict(params),
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - t0, 1), **report.machine(),
            "command": "bench/run" + {"full": "", "quick": " --quick",
                                      "smoke": " --smoke"}[params.name],
            **_source()}
    out = Path(args.out) if args.out else REPO / "bench" / "results" / (
        f"{params.name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    report.write_json(out, rows, meta)
    print(f"bench/run ({params.name}) {started:%Y-%m-%d %H:%M} UTC, {meta['cores']} cores, "
          f"kernel {meta['kernel']}, Python {meta['python']}, {meta['duration_s']} s, "
          f"holdmount {meta['holdmount_rev']} ({meta['holdmount_src']})\n")
    print(report.table(rows))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
