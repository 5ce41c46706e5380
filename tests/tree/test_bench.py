"""bench/run cannot rot: the whole harness runs with tiny parameters (--smoke, seconds) and
produces every row. No timing is asserted here: performance numbers live in bench/ only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real]

REPO = Path(__file__).resolve().parents[2]
ROWS = {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"}


def _leftovers() -> set[str]:
    return {p.name for p in Path("/var/tmp").glob("holdmount-bench-p[78]-*")}


def test_bench_smoke_runs_every_row(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("bench/run needs root (mounts, automount)")
    for tool in ("automount", "gcc", "unshare", "flock"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run scripts/setup)")
    before = _leftovers()
    out = tmp_path / "smoke.json"
    r = subprocess.run([str(REPO / "bench" / "run"), "--smoke", "--quiet", "--out", str(out)],
                       env={**os.environ, "HOLDMOUNT_BENCH_NO_SETUP": "1"}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["mode"] == "smoke"
    assert {row["id"] for row in doc["rows"]} == ROWS
    for row in doc["rows"]:
        assert row["result"] in ("pass", "**fail**", "info"), row
        assert row["holdmount"] and row["holdmount"] != "—", row
        assert row["peer"], row
    # the same table on stdout, one line per row
    table = [line for line in r.stdout.splitlines() if line.startswith("| P")]
    assert len(table) == len(doc["rows"])
    # nothing left behind: every mount was in the bench's own namespace, the disk dir is gone
    assert "holdmount-bench" not in Path("/proc/self/mountinfo").read_text()
    assert _leftovers() <= before


def test_bench_rejects_unknown_rows(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("bench/run needs root")
    r = subprocess.run([str(REPO / "bench" / "run"), "--only", "P10"],
                       env={**os.environ, "HOLDMOUNT_BENCH_NO_SETUP": "1"}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "unknown rows: P10" in r.stderr
