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
def test_every_command_shows_an_example(path: list[str]) -> None:
    """`--help` promises examples: every command and group, walked from the root, shows at least one
    runnable line of itself under an "Example:"/"Examples:" heading."""
    done = run_toolkit(*path, "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout.split("\nOptions:")[0]
    assert "\n  Example:\n" in text or "\n  Examples:\n" in text, f"`toolkit {' '.join(path)} --help` has no examples"
    examples = text.split("Example", 1)[1].splitlines()[1:]
    assert any(line.strip().startswith(f"toolkit {' '.join(path)}") or f" toolkit {' '.join(path)}" in line
               for line in examples), f"no example runs `toolkit {' '.join(path)}`:\n{text}"


@pytest.mark.parametrize("group", [()] + [path for path, command in cli_commands() if isinstance(command, click.Group)],
                         ids=lambda p: " ".join(("toolkit", *p)))
def test_group_help_shows_each_summary_whole(group: tuple[str, ...]) -> None:
    """click cuts a command's summary in its group's help at ~45 characters with "..."; ours are whole."""
    from tests.support import subcommands
    from toolkit.commands._common import summary

    command: click.Command = cli
    for name in group:
        command = subcommands(command)[name]  # type: ignore[arg-type]
    assert isinstance(command, click.Group)
    done = run_toolkit(*group, "--help")
    listed = " ".join(done.stdout.split("\nCommands:\n", 1)[1].split())
    assert "..." not in listed and "\u2026" not in listed, listed
    for name, sub in subcommands(command, hidden=False).items():
        whole = summary(sub)
        assert f"{name} {whole}" in listed, f"{name}'s summary is not whole in:\n{listed}"


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


@pytest.mark.parametrize("args,words,fix", [
    (["up", "--port", "abc"], "invalid value for '--port': 'abc' is not a valid port", "toolkit up --help"),
    (["up", "--port", "0"], "'--port': 0 is not in the range 1<=x<=65535", "toolkit up --help"),
    (["up", "--timeout", "soon"], "'--timeout': 'soon' is not a number of seconds", "toolkit up --help"),
    (["logs", "--tail", "x"], "'x' is not a valid integer", "toolkit logs --help"),
    (["up", "--engine", "podman"], "'podman' is not one of 'auto', 'docker'", "toolkit up --help"),
    (["up", "--bogus"], "no such option '--bogus'", "toolkit up --help"),
    (["env", "--format", "xml"], "'xml' is not one of", "toolkit env --help"),
    (["migrate", "--to", "postgres"], "missing option '--from'", "toolkit migrate --help"),
    (["status", "extra"], "unexpected extra argument (extra)", "toolkit status --help"),
    (["no-such-command"], "no such command 'no-such-command'", "toolkit --help"),
    (["chroma", "up", "--port", "x"], "'x' is not a valid port", "toolkit chroma up --help"),
    (["s3", "no-such-command"], "no such command", "toolkit s3 --help"),
    (["smoke", "--backend", "nope"], "'nope' is not one of", "toolkit smoke --help"),
    (["--project-dir"], "option '--project-dir' requires an argument", "toolkit --help"),
])
def test_bad_flags_are_one_line_naming_the_help_to_read(args: list[str], words: str, fix: str) -> None:
    """click's usage block (Usage:, Try ..., Error: ...) becomes the house line: `toolkit: error: what;
    see `toolkit CMD --help``, exit 2."""
    done = run_toolkit(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("toolkit: error: ") and words in lines[0], lines[0]
    assert lines[0].endswith(f"; see `{fix}`"), lines[0]
    assert "Usage:" not in done.stderr and "Traceback" not in done.stderr


def test_did_you_mean_stays_in_the_one_line() -> None:
    done = run_toolkit("status", "--prot", "5")  # (up's --export is close to --prot too)
    assert done.returncode == 2
    assert done.stderr.strip() == "toolkit: error: no such option '--prot' (did you mean '--port'?); see `toolkit status --help`"
    several = run_toolkit("up", "--p")
    assert several.stderr.strip() == ("toolkit: error: no such option '--p' (did you mean one of: '--help', '--port'?); "
                                      "see `toolkit up --help`")


def test_help_still_works_and_a_bare_group_shows_its_help() -> None:
    for args in (["--help"], ["-h"], ["up", "--help"], ["chroma", "status", "-h"]):
        done = run_toolkit(*args)
        assert done.returncode == 0 and done.stdout.startswith("Usage: toolkit"), (args, done.stderr)
    bare = run_toolkit("chroma")
    assert "Usage: toolkit chroma" in bare.stdout + bare.stderr and "Commands:" in bare.stdout + bare.stderr


def test_bad_env_value_is_one_line() -> None:
    done = run_toolkit("status", env={"TOOLKIT_PG_PORT": "eighty"})
    assert done.returncode == 2 and "TOOLKIT_PG_PORT" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name,value,says", [
    ("TOOLKIT_PG_PORT", "eighty", "not a port number; expected port on this machine"),
    ("TOOLKIT_PG_PORT", "70000", "not a port number (1-65535)"),
    ("TOOLKIT_TIMEOUT", "soon", "not a number; expected seconds"),
    ("TOOLKIT_TIMEOUT", "nan", "not greater than 0"),
    ("TOOLKIT_ENGINE", "podman", "no such engine; expected auto | docker | embedded | external"),
    ("TOOLKIT_ARCHIVAL_FORMAT", "new", "no such format; expected auto | memgpt | current"),
    ("TOOLKIT_S3_ALLOW_HTTP", "maybe", "not true or false"),
    ("TOOLKIT_PG_USER", "postgres", "that is the superuser's name; expected application role, not postgres"),
    ("TOOLKIT_PG_PASSWORD", "", "no value; expected its password"),
])
def test_bad_setting_values_are_said_in_words_once(name: str, value: str, says: str) -> None:
    """No Python internals ("invalid literal for int() with base 10"), and what is expected said once
    (not "must be one of a, b; expected a | b")."""
    done = run_toolkit("status", env={name: value})
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"toolkit: error: invalid value {value!r} for {name} (environment): ") and says in line, line
    for internal in ("invalid literal", "could not convert", "base 10", "float()", "must be"):
        assert internal not in line, line


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
    checks = {c["name"]: c for c in json.loads(ok.stdout)["checks"]}
    assert checks["embedded wheel"]["ok"] and checks["port"]["ok"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        taken = run_toolkit("doctor")
    assert taken.returncode == 1
    assert f"FAIL port            127.0.0.1:{port} is held by pid {os.getpid()}" in taken.stdout


def test_doctor_json_is_one_object_for_ci(pg_url: str) -> None:
    """CI reads ok, engine and the exit code: 1 exactly when what the chosen engine needs is missing."""
    import os
    import socket

    no_docker = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    fine = run_toolkit("doctor", "--json", env=no_docker)
    report = json.loads(fine.stdout)
    assert fine.returncode == 0 and report["ok"] is True and report["engine"] == "embedded", fine.stdout
    assert "no Docker engine answers" in report["reason"] and {"name", "ok", "detail", "fix"} <= set(report["checks"][0])

    docker = run_toolkit("doctor", "--json", "--engine", "docker", env=no_docker)
    report = json.loads(docker.stdout)
    assert docker.returncode == 1 and report["ok"] is False and report["engine"] == "docker", docker.stdout
    [failed] = [c for c in report["checks"] if not c["ok"]]
    assert failed["name"] == "docker" and "no Docker engine answers" in failed["detail"] and failed["fix"], failed

    with socket.socket() as squatter:  # the embedded engine needs the port it was given
        squatter.bind(("127.0.0.1", int(os.environ["TOOLKIT_PG_PORT"])))
        squatter.listen()
        taken = run_toolkit("doctor", "--json", env=no_docker)
        external = run_toolkit("doctor", "--json", "--engine", "external", "--url", pg_url, env=no_docker)
    report = json.loads(taken.stdout)
    assert taken.returncode == 1 and not report["ok"] and [c["name"] for c in report["checks"] if not c["ok"]] == ["port"]
    report = json.loads(external.stdout)  # the external engine's server listens elsewhere: the port is not its need
    assert external.returncode == 0 and report["ok"] and report["engine"] == "external", external.stdout
    assert "answers as memgpt" in report["checks"][0]["detail"]

    dead = run_toolkit("doctor", "--engine", "external", "--url", "postgresql://u:p@127.0.0.1:1/db", env=no_docker)
    assert dead.returncode == 1 and "FAIL engine" in dead.stdout and "does not answer" in dead.stdout, dead.stdout
    refused = run_toolkit("doctor", "--json", "--engine", "external", env=no_docker)  # no URL: up would refuse
    report = json.loads(refused.stdout)
    assert refused.returncode == 1 and report["engine"] is None and "needs a URL" in report["reason"], refused.stdout


def test_up_renders_engine_progress_keeping_only_lasting_lines_in_a_log(isolated, capsys) -> None:  # type: ignore[no-untyped-def]
    """The library reports, the command renders: off a terminal, live totals are skipped, lines kept."""
    from toolkit.commands.db import stderr_progress
    from toolkit.settings import resolve

    show = stderr_progress(resolve({"db.password": "Hunter2-App"}, environ={}, project_dir=isolated))
    show("pulling img: 0 layers done, 1.0/2.0 MB", live=True)
    show("pulling img: 1 layers done, 2.0/2.0 MB")
    show("secret Hunter2-App never shown")
    assert capsys.readouterr() == ("", "pulling img: 1 layers done, 2.0/2.0 MB\nsecret *** never shown\n")
