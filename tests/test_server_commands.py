"""The helper servers' command groups are built by one factory from each service's description, so they
cannot drift apart: the same core options in every group (a test reads them off the click groups), and
the factory is tested on a service of its own, registered here in one line. That `s3 status --port` works
as `chroma status --port` does is one test for every service, in test_background_servers.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tests.backend_support import service_settings
from tests.support import run_toolkit
from toolkit.cli import COMMANDS, cli
from toolkit.commands.servers import CORE_OPTIONS, server_group
from toolkit.ports import free_port
from toolkit.services.background import ServiceStatus
from toolkit.services.base import Option, Progress, Report, Service
from toolkit.services.registry import SERVICES
from toolkit.settings import Settings


def _group(name: str) -> click.Group:
    group = cli.get_command(click.Context(cli), name)
    assert isinstance(group, click.Group), name
    return group


def _options(command: click.Command) -> dict[str, click.Option]:
    return {flag: param for param in command.params if isinstance(param, click.Option) for flag in param.opts}


def _shape(option: click.Option) -> tuple[Any, ...]:
    """What a user meets of an option, its help aside (which names the service's default port)."""
    return (option.name, repr(option.type), option.default, option.is_flag, option.show_default, option.required)


# -- the groups, read off click ---------------------------------------------------------------------

def test_every_service_has_a_command_group() -> None:
    registered = {attr for _, attr in COMMANDS}
    assert set(SERVICES) <= registered
    for name, service in SERVICES.items():
        assert service.name == name
        assert set(_group(name).commands) == set(CORE_OPTIONS)


@pytest.mark.parametrize("command", sorted(CORE_OPTIONS))
def test_every_group_offers_the_same_core_options(command: str) -> None:
    shapes = {}
    for name in SERVICES:
        options = _options(_group(name).commands[command])
        assert set(CORE_OPTIONS[command]) <= set(options), f"{name} {command}"
        shapes[name] = [_shape(options[flag]) for flag in CORE_OPTIONS[command]]
    first = next(iter(shapes.values()))
    assert all(shape == first for shape in shapes.values()), shapes


def test_the_only_other_options_are_the_services_own() -> None:
    for name, service in SERVICES.items():
        group = _group(name)
        for command, core in CORE_OPTIONS.items():
            extras = set(_options(group.commands[command])) - set(core) - {"-h", "--help"}
            own = {option.flag for option in service.up_options} if command == "up" else set()
            assert extras == own, f"{name} {command}: {sorted(extras)}"


def test_the_help_tells_the_default_port_the_server_uses(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    for name, service in SERVICES.items():
        assert service.server(settings, None).port == service.default_port, name
        assert str(service.default_port) in (_options(_group(name).commands["up"])["--port"].help or "")


def test_the_groups_keep_their_own_options() -> None:
    """What each service adds, as before the factory: chroma's --path and --format, s3's --no-export."""
    chroma_up = _options(_group("chroma").commands["up"])
    assert chroma_up["--path"].name == "path" and chroma_up["--format"].name == "fmt"
    assert chroma_up["--format"].metavar == "FORMAT"
    s3_up = _options(_group("s3").commands["up"])
    assert s3_up["--no-export"].is_flag and s3_up["--no-export"].name == "no_export"


def test_importing_the_groups_starts_nothing_heavy() -> None:
    """`toolkit --help` imports the command module: the descriptions must not pull in the lifecycle."""
    import subprocess
    import sys

    code = ("import sys, toolkit.commands.servers\n"
            "print([m for m in ('toolkit.services.background', 'urllib.request', 'subprocess', 'chromadb') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# -- the factory, on a service registered here ------------------------------------------------------

class _Fake:
    """A server that is never started: status and up say what the test set."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.running = False
        self.calls: list[dict[str, Any]] = []

    def status(self, port: int | None) -> ServiceStatus:
        url = f"http://127.0.0.1:{port or 7000}"
        return ServiceStatus("fake", self.running, url, 42 if self.running else None)


def _fake_service(fake: _Fake) -> Service:
    def start(settings: Settings, *, port: int | None, timeout: float, progress: Progress | None,
              options: Mapping[str, Any]) -> Report:
        fake.calls.append({"port": port, "timeout": timeout, **options})
        if progress:
            progress("preparing")
        fake.running = True
        return Report(fake.status(port), {"colour": options["colour"]}, (f"colour {options['colour']}",))

    class Server:
        def __init__(self, port: int | None) -> None:
            self.port = port

        def status(self, *, exact: bool, foreign: bool = True) -> ServiceStatus:
            return fake.status(self.port)

    return Service(name="fake", default_port=7000, port_default="7000", help="A fake server for the factory's tests.",
                   up_help="Start the fake server; idempotent.", down_help="Stop the fake server.",
                   status_help="Is the fake server running?", logs_help="The fake server's log.",
                   server=lambda settings, port: Server(port),  # type: ignore[arg-type,return-value]
                   start=start,
                   up_options=(Option("--colour", "colour", "Its colour.", metavar="NAME"),
                               Option("--quiet", "quiet", "Say less.", kind="flag")))


def test_the_factory_wires_a_new_service_in_one_line(tmp_path: Path) -> None:
    fake = _Fake(tmp_path)
    group = server_group(_fake_service(fake))  # the one line a new service needs
    runner = CliRunner()

    down = runner.invoke(group, ["status", "--json"], obj={})
    assert down.exit_code == 0 and json.loads(down.stdout)["running"] is False  # exit 0: it could tell

    up = runner.invoke(group, ["up", "--colour", "blue", "--port", "7001", "--json"], obj={})
    assert up.exit_code == 0, up.output
    assert json.loads(up.stdout) == {
        "service": "fake", "running": True, "url": "http://127.0.0.1:7001", "pid": 42, "started_by_toolkit": True,
        "detail": "", "colour": "blue"}
    assert up.stderr.strip() == "preparing"  # progress on stderr, so --json stays parseable
    assert fake.calls == [{"port": 7001, "timeout": 60.0, "colour": "blue", "quiet": False}]

    line = runner.invoke(group, ["up", "--colour", "red", "--quiet"], obj={})
    assert line.exit_code == 0 and line.stdout.strip() == "fake: running at http://127.0.0.1:7000 (pid 42); colour red"
    assert fake.calls[-1]["quiet"] is True

    status = runner.invoke(group, ["status", "--port", "7001"], obj={})
    assert status.exit_code == 0 and status.stdout.strip() == "fake: running at http://127.0.0.1:7001 (pid 42)"
    assert runner.invoke(group, ["status", "--port", "0"], obj={}).exit_code == 2


def test_a_service_option_may_not_shadow_a_core_one(tmp_path: Path) -> None:
    from dataclasses import replace

    service = _fake_service(_Fake(tmp_path))
    with pytest.raises(ValueError, match="shadow"):
        server_group(replace(service, up_options=(Option("--wait", "timeout", "Seconds."),)))


def test_the_library_refuses_an_option_the_service_does_not_take(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no option colour"):
        SERVICES["s3"].up(service_settings(tmp_path), colour="blue")


# -- the real CLI, no server running ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SERVICES))
def test_status_down_and_logs_when_nothing_runs(isolated: Path, name: str) -> None:
    port = free_port()
    status = run_toolkit(name, "status", "--port", str(port))
    assert status.returncode == 0, status.stdout + status.stderr  # stopped, and it could tell
    assert status.stdout.strip() == f"{name}: stopped (start it with `toolkit {name} up`)"
    state = json.loads(run_toolkit(name, "status", "--port", str(port), "--json").stdout)
    assert state["url"] == f"http://127.0.0.1:{port}" and state["running"] is False and state["pid"] is None
    down = run_toolkit(name, "down")
    assert down.returncode == 0 and down.stdout.strip() == f"{name}: was not running"
    assert not (isolated / ".toolkit").exists()  # nothing was ever started: down creates no state dir
    logs = run_toolkit(name, "logs")
    assert logs.returncode == 0 and logs.stdout.startswith(f"no log yet at {isolated / '.toolkit' / name}.log")


@pytest.mark.parametrize("name", sorted(SERVICES))
@pytest.mark.parametrize("command", ["up", "status"])
@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc", ""])
def test_a_bad_port_is_one_line(name: str, command: str, port: str) -> None:
    done = run_toolkit(name, command, "--port", port)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr and not done.stdout


# -- the real CLI, with a real server (how status, down and logs follow a server to its port, for every
# service: test_background_servers.py) ---------------------------------------------------------------

def test_chroma_up_refuses_another_format_before_building_its_client(isolated: Path,
                                                                      tmp_path: Path) -> None:
    """A server of format 1 answers on the port: `up --format memgpt` there is refused at once, without
    first building chromadb 0.5's environment (minutes on a cold cache) it would then not use."""
    port, clients, other = free_port(), tmp_path / "no-clients-yet", tmp_path / "other"
    other.mkdir()
    up = run_toolkit("chroma", "up", "--format", "current", "--port", str(port))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        clash = run_toolkit("chroma", "up", "--format", "memgpt", "--port", str(port), "--timeout", "5", cwd=other,
                            env={"TOOLKIT_CLIENTS_DIR": str(clients)})
        assert clash.returncode == 2 and "already answers on port" in clash.stderr, clash.stdout + clash.stderr
        assert "building" not in clash.stderr and not clients.exists()
        theirs = run_toolkit("chroma", "status", "--port", str(port), cwd=other)
        assert theirs.returncode == 0 and "not started by the toolkit" in theirs.stdout
    finally:
        down = run_toolkit("chroma", "down")
    assert down.stdout.startswith("chroma: stopped (was at"), down.stdout + down.stderr
