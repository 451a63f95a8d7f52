"""Test helpers that are not fixtures: run the real CLI, wait for a condition, look at processes and at a
project's state, read a MemGPT config as MemGPT does, walk the CLI's commands.

Fixtures live in ``conftest.py`` (and the plugins it names); test modules import helpers from here,
never from ``conftest.py`` or from another test module.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import click

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


# the CLI, with the settings' defaults replaced first (argv[1]: JSON of field names to values)
_WITH_DEFAULTS = """
import dataclasses, json, sys
import toolkit.settings as s
wanted = json.loads(sys.argv.pop(1))
def with_defaults(cls, values):
    return dataclasses.make_dataclass(cls.__name__, [(k, type(v), dataclasses.field(default=v)) for k, v in values.items()],
                                      bases=(cls,), frozen=True)
s.DbParams = with_defaults(s.DbParams, {k[3:]: v for k, v in wanted.items() if k.startswith("db.")})
s.Settings = with_defaults(s.Settings, {k: v for k, v in wanted.items() if not k.startswith("db.")})
from toolkit.cli import main
sys.argv[0] = "toolkit"
main()
"""


def run_toolkit_with_defaults(defaults: dict[str, Any], *args: str, cwd: Path, env: dict[str, str],
                              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess whose defaults are ``defaults`` (``{"db.port": 41234, "container": ...}``)
    and whose environment is ``env`` alone: the seed's defaults (port 8888, container memgpt-db-test) are
    every checkout's, so a test that needs "the defaults" must not take the real ones from the user."""
    return subprocess.run(_with_defaults_argv(defaults, args), capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def spawn_toolkit_with_defaults(defaults: dict[str, Any], *args: str, cwd: Path,
                                env: dict[str, str]) -> subprocess.Popen[str]:
    """``run_toolkit_with_defaults`` without waiting for it (stdout and stderr piped), to signal it mid-way."""
    return subprocess.Popen(_with_defaults_argv(defaults, args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _with_defaults_argv(defaults: dict[str, Any], args: tuple[str, ...]) -> list[str]:
    import json

    return [sys.executable, "-c", _WITH_DEFAULTS, json.dumps(defaults), *args]


def fresh_env(**extra: str) -> dict[str, str]:
    """A new shell's environment: the test's, without any TOOLKIT_* variable or PGVECTOR_TEST_DB_URL."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_") and k != "PGVECTOR_TEST_DB_URL"},
            **extra}


def spawn_toolkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                  **popen_kwargs: Any) -> subprocess.Popen[str]:
    """Start the real CLI without waiting for it, stdout and stderr piped (read them with
    ``communicate(timeout=...)``); ``env`` is added to the test's environment, as in ``run_toolkit``."""
    popen_kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen_kwargs}  # a terminal instead
    return subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=cwd or Path.cwd(),
                            env={**os.environ, **(env or {})}, text=True, **popen_kwargs)


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


# -- processes ------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped by its parent). Reads /proc only, so
    a process that is reaped meanwhile (its /proc entry gone between two reads) is simply not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # FileNotFoundError, ProcessLookupError: reaped, or never there
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes(text: str, *, under: Path | None = None) -> dict[int, str]:
    """Live processes whose command line holds ``text`` (with ``under``: whose cwd is ``under`` or below
    it), as {pid: command line}."""
    where = under.resolve() if under is not None else None
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            if text not in cmdline:
                continue
            if where is not None:
                cwd = Path(os.readlink(entry / "cwd"))
                if cwd != where and where not in cwd.parents:
                    continue
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if alive(int(entry.name)):
            found[int(entry.name)] = cmdline
    return found


# -- a project's state --------------------------------------------------------------------------------

def env_url(project: Path) -> str:
    """PGVECTOR_TEST_DB_URL as `toolkit up` wrote it to the project's .env."""
    from dotenv import dotenv_values

    return str(dotenv_values(project / ".env")["PGVECTOR_TEST_DB_URL"])


def postmaster_pid(state: Path) -> int | None:
    """The pid the embedded server's postmaster.pid names under the state dir ``state``, None without one."""
    try:
        return int((state / "embedded/pgdata/postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- MemGPT's config, as MemGPT 0.3.x reads it --------------------------------------------------------

def memgpt_reads(path: Path) -> configparser.ConfigParser:
    """The file as MemGPT 0.3.x loads it: ``configparser.ConfigParser().read(path)`` (strict, interpolating)."""
    parser = configparser.ConfigParser()
    assert parser.read(path) == [str(path)]
    return parser


def without_section(text: str, name: str) -> str:
    """``text`` without its ``[name]`` sections (every one of them): every other line, in order."""
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skip = line.strip() == f"[{name}]"
        if not skip:
            out.append(line)
    return "".join(out)


# -- the CLI's commands ----------------------------------------------------------------------------

def subcommands(group: click.Group, *, hidden: bool = True) -> dict[str, click.Command]:
    """A group's commands by name, each of which must load; with ``hidden=False`` only those its help lists."""
    import click

    ctx = click.Context(group, info_name=group.name)
    commands = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    assert None not in commands.values(), f"listed but not loadable: {commands}"
    return {name: command for name, command in commands.items()
            if isinstance(command, click.Command) and (hidden or not command.hidden)}


def cli_commands(*, hidden: bool = True) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command of `toolkit`, groups and their subcommands, depth first, as (path, command):
    (("up",), up), (("chroma",), chroma), (("chroma", "up"), ...); with ``hidden=False`` only those the
    help lists (a hidden group hides its subcommands)."""
    import click

    from toolkit.cli import cli

    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in subcommands(group, hidden=hidden).items():
            found.append(((*path, name), command))
            if isinstance(command, click.Group):
                walk(command, (*path, name))

    walk(cli, ())
    return found


def uv_binary() -> str:
    """uv, as the toolkit finds it: builds venvs of a fresh install in seconds."""
    from toolkit.backends.compat.envs import uv_binary as toolkit_uv
    from toolkit.errors import MissingPackageError

    try:
        return toolkit_uv()
    except MissingPackageError:
        pytest.fail("uv is needed to build the base venv: pip install 'toolkit[chroma]' (make venv)")


def clean_env() -> dict[str, str]:
    """The test's environment without what would let a venv built by a test import this checkout or another venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def source_copy(target: Path) -> Path:
    """This checkout's package sources and the pins of its lock, copied to ``target`` to install from (a build
    writes build/ and egg-info next to them)."""
    shutil.copytree(REPO / "toolkit", target / "toolkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "tools", target / "tools")  # venv.sh: the uv the set-up and the Action use
    return target


def parse_github_file(text: str) -> dict[str, str]:
    """GITHUB_ENV / GITHUB_OUTPUT as the runner reads them (actions/runner, SetEnvFileCommand; GitHub's
    "Multiline strings" docs): ``NAME=value`` lines, or ``NAME<<DELIMITER``, the value's lines, then the
    delimiter alone on a line (whichever of ``=`` and ``<<`` comes first decides)."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line.split("=", 1)
        elif heredoc >= 0:
            name, delimiter = line.split("<<", 1)
            assert name and delimiter, f"invalid line {line!r}"
            body: list[str] = []
            for value_line in lines:
                if value_line == delimiter:
                    break
                body.append(value_line)
            else:
                pytest.fail(f"no closing delimiter {delimiter!r} for {name}")
            value = "\n".join(body)
        else:
            pytest.fail(f"invalid line {line!r}: neither NAME=value nor NAME<<DELIMITER")
        assert name, f"invalid line {line!r}: no name"
        values[name] = value
    return values


def installed(venv: Path) -> dict[str, str]:
    """The distributions in ``venv`` (normalized name -> version), asked of its own python."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    done = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True, check=True)
    return {normalized(name): version for name, version in (line.split() for line in done.stdout.splitlines())}


def normalized(name: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()
