"""The CLI as a user meets it: help everywhere, instant start-up, one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from tests.support import cli_commands, run_toolkit
from toolkit.cli import COMMANDS, cli


def _all_commands() -> list[list[str]]:
    """Every command path, groups and hidden commands included."""
    return [list(path) for path, _ in cli_commands()]


def test_every_registered_command_loads() -> None:
    names = {path[0] for path in _all_commands()}
    assert {attr.replace("_", "-") for _, attr in COMMANDS} <= names


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help(path: list[str]) -> None:
    command: click.Command = cli
    ctx = click.Context(cli)
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)  # type: ignore[assignment]
    assert command.help and len(command.help.strip()) > 20, f"{' '.join(path)} needs a docstring"


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys; from toolkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('chromadb', 'lancedb', 'docker', 'numpy', 'psycopg', 'pyarrow') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in done.stderr, done.stderr


def test_python_dash_m_and_version() -> None:
    done = run_toolkit("--version")
    assert done.returncode == 0 and "toolkit" in done.stdout


@pytest.mark.parametrize("args,code,words", [
    (["up", "--port", "abc"], 2, "'abc' is not a valid integer"),
    (["up", "--engine", "podman"], 2, "podman"),
    (["env", "--format", "xml"], 2, "xml"),
    (["no-such-command"], 2, "No such command"),
])
def test_bad_input_is_one_line_without_traceback(args: list[str], code: int, words: str) -> None:
    done = run_toolkit(*args)
    assert done.returncode == code
    assert words in done.stderr and "Traceback" not in done.stderr


def test_bad_env_value_is_one_line() -> None:
    done = run_toolkit("status", env={"TOOLKIT_PG_PORT": "eighty"})
    assert done.returncode == 2 and "TOOLKIT_PG_PORT" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback() -> None:
    done = run_toolkit("--debug", "status", env={"TOOLKIT_PG_PORT": "eighty"})
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_env_prints_every_format_without_a_server() -> None:
    done = run_toolkit("env", "--format", "json", "--port", "5555", "--password", "pw")
    assert json.loads(done.stdout) == {"PGVECTOR_TEST_DB_URL": "postgresql+pg8000://memgpt:pw@localhost:5555/memgpt"}
    sh = run_toolkit("env", "--port", "5555")
    assert sh.stdout.startswith("export PGVECTOR_TEST_DB_URL=")


def test_status_when_nothing_ran_yet() -> None:
    done = run_toolkit("status", "--json")
    assert done.returncode == 0
    state = json.loads(done.stdout)
    assert state["running"] is False and state["engine"] == "embedded"


def test_doctor_reports_a_taken_port() -> None:
    import os
    import socket

    port = int(os.environ["TOOLKIT_PG_PORT"])
    ok = run_toolkit("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(ok.stdout)}
    assert checks["embedded wheel"]["ok"] and checks["port"]["ok"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        taken = run_toolkit("doctor")
    assert taken.returncode == 1
    assert f"FAIL port            127.0.0.1:{port} is held by pid {os.getpid()}" in taken.stdout


def test_up_renders_engine_progress_keeping_only_lasting_lines_in_a_log(isolated, capsys) -> None:  # type: ignore[no-untyped-def]
    """The library reports, the command renders: off a terminal, live totals are skipped, lines kept."""
    from toolkit.commands.db import _progress
    from toolkit.settings import resolve

    show = _progress(resolve({"db.password": "Hunter2-App"}, environ={}, project_dir=isolated))
    show("pulling img: 0 layers done, 1.0/2.0 MB", live=True)
    show("pulling img: 1 layers done, 2.0/2.0 MB")
    show("secret Hunter2-App never shown")
    assert capsys.readouterr() == ("", "pulling img: 1 layers done, 2.0/2.0 MB\nsecret *** never shown\n")
