"""The CI guard itself: under CI=true a skipped real-component test must fail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_skipped_real_test_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.real
        def test_needs_component():
            pytest.skip("component missing")

        def test_plain_skip():
            pytest.skip("fine")
    """))
    (tmp_path / "conftest.py").write_text("from ci_guard import *  # noqa: F403\n")
    helpers = Path(__file__).resolve().parents[1] / "helpers"
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(helpers)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "markers=real", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 skipped" in r.stdout
    env["CI"] = ""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "markers=real", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "2 skipped" in r.stdout


def test_ci_run_sets_ci_itself(tmp_path: Path) -> None:
    """.ci/run is strict whoever starts it: it exports CI=true before the test command."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".ci" / "run").write_text((repo / ".ci" / "run").read_text())
    (tmp_path / "scripts" / "test").write_text('echo "CI=$CI"\n')  # stands in for the suite
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "CI=true\n"
