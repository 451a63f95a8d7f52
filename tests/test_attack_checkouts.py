"""Hostile and clumsy cases around what `toolkit up` records (<state_dir>/engine) and chooses when a default
is held: a record that is not a file, an `up` killed before it wrote its record, ... Real processes only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import _WITH_DEFAULTS, fresh_env, run_toolkit, run_toolkit_with_defaults, wait_until
from toolkit.ports import free_port

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # engine auto: embedded, without a ping's wait


@pytest.fixture
def checkouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Two project dirs; whatever their servers, stopped and purged afterwards."""
    monkeypatch.delenv("TOOLKIT_PG_PORT")
    projects = (tmp_path / "checkout-a", tmp_path / "checkout-b")
    for project in projects:
        project.mkdir()
    yield projects
    for project in projects:
        run_toolkit("down", "--purge", "--yes", "--engine", "embedded", cwd=project, env=fresh_env(**NO_DOCKER))


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero"])
def test_a_record_that_is_no_file_neither_hangs_nor_eats_memory(isolated: Path, kind: str) -> None:
    """The record is read by every command: a FIFO in its place blocked them all forever, a symlink to
    /dev/zero read until memory ran out. Now it is no record."""
    state = isolated / ".toolkit"
    state.mkdir()
    if kind == "fifo":
        os.mkfifo(state / "engine")
    else:
        (state / "engine").symlink_to("/dev/zero")
    done = run_toolkit("env", env=fresh_env(**NO_DOCKER, TOOLKIT_PG_PORT="47001"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert ":47001/memgpt" in done.stdout


def test_up_killed_before_its_record_then_up_again_keeps_its_own_port(checkouts: tuple[Path, Path]) -> None:
    """Checkout b chose a port of its own (a's server holds the default); its `up` is killed (SIGKILL) after
    the server started, before the record was written. `up` again adopts the port its running server has,
    instead of failing with "already running on port P, not <default>"."""
    a, b = checkouts
    default = free_port()  # stands for 8888
    defaults = {"db.port": default}
    first = run_toolkit_with_defaults(defaults, "up", cwd=a, env=fresh_env(**NO_DOCKER))
    assert first.returncode == 0, first.stderr

    record = b / ".toolkit" / "engine"
    postmaster = b / ".toolkit" / "embedded" / "pgdata" / "postmaster.pid"
    killed = subprocess.Popen([sys.executable, "-c", _WITH_DEFAULTS, json.dumps(defaults), "up"], cwd=b,
                              env=fresh_env(**NO_DOCKER), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: postmaster.exists() or killed.poll() is not None, 300, "b's server to start")
    killed.send_signal(signal.SIGKILL)
    _, said = killed.communicate()
    own = int(re.findall(r"this project uses port (\d+)", said)[0])
    record.unlink(missing_ok=True)  # if `up` got that far: the state a kill a moment earlier leaves
    wait_until(lambda: f"\n{own}\n" in postmaster.read_text() if postmaster.exists() else False, 300,
               "b's server to listen")

    again = run_toolkit_with_defaults(defaults, "up", cwd=b, env=fresh_env(**NO_DOCKER))
    assert again.returncode == 0, again.stderr
    assert f"@localhost:{own}/memgpt" in again.stdout
    assert json.loads(record.read_text())["port"] == own
    env = run_toolkit("env", cwd=b, env=fresh_env())
    assert f"@localhost:{own}/memgpt" in env.stdout, env.stderr  # not a's server
