"""Test helpers that are not fixtures: run the real CLI, wait for a condition.

Fixtures live in ``conftest.py`` (and the plugins it names); test modules import helpers from here,
never from ``conftest.py`` or from another test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"

# isolated environments of older clients (chromadb 0.5, pylance 0.8) are built once per checkout, not per
# test; uv's cache stays the real one, although HOME moves
CLIENTS = REPO / ".toolkit" / "test-clients"

T = TypeVar("T")


def run_toolkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (exit codes, stderr and all), with the test's environment."""
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True,
                          cwd=cwd or Path.cwd(), env={**os.environ, **(env or {})}, input=input, timeout=timeout)


def wait_until(condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05,
               detail: Callable[[], str] | None = None) -> T:
    """Call ``condition`` until it returns something truthy and return that; fail the test, naming
    ``what`` was awaited (and with ``detail()``, say a server's log tail), when ``timeout`` seconds pass.

    The condition is always tried once more after the deadline, so a slow last poll cannot fail a test
    whose condition holds. Exceptions from ``condition`` propagate: raise (or assert) in it to stop
    waiting on something that can no longer happen, such as a server process that exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)
