"""bench/fixtures.py keeps running: the smallest settings, both sides, both bodies, the ratio and the -n line.
No timings are checked (this machine's load decides them); only that the benchmark runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.slow


def test_the_fixture_benchmark_runs_both_sides_and_prints_a_ratio() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "fixtures.py"), "--tests", "3", "--runs", "1",
                           "--xdist-tests", "4", "--workers", "2"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for body in ("archival", "empty"):
        for side in ("ours", "theirs"):
            assert any(line.split()[:2] == [body, side] for line in lines), done.stdout
        assert any(line.startswith(body) and "ratio theirs/ours" in line for line in lines), done.stdout
    for side in ("ours", "theirs"):
        assert any(line.startswith(side) and "-n 2:" in line and "-n 1:" in line for line in lines), done.stdout
