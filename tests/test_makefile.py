"""The Makefile as a newcomer meets it: `make help` lists every target as it runs, `make db-reset` works
without a terminal when told to (YES=1) and says how when not.

Targets run with ``TK`` (the toolkit command), ``STAMP`` and ``BASE`` (the venv's install stamps) overridden, so make
neither builds a venv nor touches the checkout's: the recipes themselves run, against the test's project.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, env_url, run_toolkit


def _make(*args: str, tmp_path: Path, project: Path | None = None) -> subprocess.CompletedProcess[str]:
    # newer than pyproject.toml: make's install rules have nothing to do (the db-* targets need only the base)
    base, stamp = tmp_path / "installed-base", tmp_path / "installed"
    base.touch()
    stamp.touch()
    overrides = [f"BASE={base}", f"STAMP={stamp}"]
    if project is not None:
        overrides.append(f"TK={sys.executable} -m toolkit --project-dir {project}")
    return subprocess.run(["make", "--no-print-directory", *args, *overrides], cwd=REPO, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)


def _targets() -> list[str]:
    return [line.split(":")[0] for line in (REPO / "Makefile").read_text().splitlines()
            if "## " in line and ":" in line and not line.startswith(("\t", "#", "$"))]


def test_help_lists_every_target_as_the_shell_sees_it(tmp_path: Path) -> None:
    done = _make("help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines()]
    assert listed == _targets()
    assert {"s3-up", "s3-down"} <= set(listed)  # names with digits
    assert 'eval "$(make -s env)"' in done.stdout and "$$" not in done.stdout


@pytest.mark.usefixtures("embedded_down_after")
def test_db_reset_without_a_terminal_needs_yes(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    monkeypatch.setenv("TOOLKIT_ENGINE", "embedded")
    assert run_toolkit("up").returncode == 0
    with psycopg.connect(env_url(isolated).replace("+pg8000", ""), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")

    refused = _make("db-reset", tmp_path=tmp_path, project=isolated)
    assert refused.returncode != 0
    assert refused.stderr.splitlines()[0] == (
        "make db-reset: no terminal to confirm deleting the data on; run `make db-reset YES=1`")
    assert "Traceback" not in refused.stderr
    with psycopg.connect(env_url(isolated).replace("+pg8000", ""), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)  # nothing deleted

    reset = _make("db-reset", "YES=1", tmp_path=tmp_path, project=isolated)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "data deleted" in reset.stdout
    with psycopg.connect(env_url(isolated).replace("+pg8000", ""), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == (None,)  # a fresh database


@pytest.mark.parametrize("target", ["db-up", "db-reset", "db-status", "chroma-down", "s3-down", "test", "env"])
def test_the_overrides_leave_no_venv_to_build(target: str, tmp_path: Path) -> None:
    """The targets these tests run must not build or reinstall the checkout's .venv (a clone without one, or a
    pyproject.toml newer than its stamp): the db-* targets need the base install's stamp, the rest the full one."""
    planned = _make("-n", target, tmp_path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "tools/venv.sh" not in planned.stdout, planned.stdout
    assert "warning" not in planned.stderr, planned.stderr
