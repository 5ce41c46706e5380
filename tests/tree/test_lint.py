"""Static checks run as tests: mypy --strict on the package, ruff on everything Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_mypy_strict() -> None:
    r = subprocess.run([str(BIN / "mypy"), "--strict", "holdmount"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    paths = [p for p in ("holdmount", "tests", "bench") if (REPO / p).exists()]
    r = subprocess.run([str(BIN / "ruff"), "check", *paths], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
