"""Commands for the helper servers: `toolkit chroma up|down|status|logs` and `toolkit s3 up|down|status|logs`.

One factory builds every service's group from the description its module exports
(``toolkit.services.base.Service``): the same core options for each (up: --port --timeout --json;
status: --port --json; down; logs: --tail), then the service's own options of ``up``. Each command
parses, makes one call on the service, and renders.
"""

from __future__ import annotations

from typing import Any

import click

from toolkit.commands._common import Group, Port, Seconds, Whole, echo, echo_json, settings_from
from toolkit.services.base import Option, Service
from toolkit.services.registry import SERVICES

# the options every service's commands take, by command: what a test holds each group to
CORE_OPTIONS = {"up": ("--port", "--timeout", "--json"), "down": (), "status": ("--port", "--json"),
                "logs": ("--tail",)}
_CORE_DESTS = {"port", "timeout", "as_json", "tail"}


def _port(help: str) -> click.Option:
    return click.Option(["--port"], type=Port(), help=help)


def _json(what: str) -> click.Option:
    return click.Option(["--json", "as_json"], is_flag=True, help=f"Print the {what} as JSON.")


def _extra(option: Option) -> click.Option:
    if option.kind == "flag":
        return click.Option([option.flag, option.dest], is_flag=True, help=option.help)
    kind = click.Path(file_okay=False) if option.kind == "dir" else click.STRING
    return click.Option([option.flag, option.dest], type=kind, metavar=option.metavar, help=option.help)


def _with_examples(help: str, *examples: tuple[str, str]) -> str:
    """``help`` ending in an Examples block of (command, comment) pairs, unless the service wrote its own."""
    if "Example" in help:
        return help
    width = max(len(command) for command, _ in examples)
    lines = [f"  {command:{width}}  # {comment}" if comment else f"  {command}" for command, comment in examples]
    label = "Example:" if len(examples) == 1 else "Examples:"
    return help.rstrip() + f"\n\n\b\n{label}\n" + "\n".join(lines) + "\n"


def server_group(service: Service) -> click.Group:
    """The command group ``toolkit <service.name>`` with up, down, status and logs."""
    clash = {option.dest for option in service.up_options} & _CORE_DESTS
    if clash:
        raise ValueError(f"{service.name}: up options {sorted(clash)} shadow the core options")

    @click.pass_context
    def up(ctx: click.Context, port: int | None, timeout: float, as_json: bool, **options: Any) -> None:
        settings = settings_from(ctx)
        report = service.up(settings, port=port, timeout=timeout,
                            progress=lambda line: echo(line, settings, err=True), **options)
        echo_json(report.as_dict()) if as_json else echo(report.line())

    @click.pass_context
    def down(ctx: click.Context) -> None:
        echo(service.down(settings_from(ctx)).line())

    @click.pass_context
    def status(ctx: click.Context, port: int | None, as_json: bool) -> None:
        # exit 0 whether it runs or not (scripts read "running" in --json); an error when it cannot tell
        report = service.status(settings_from(ctx), port=port)
        echo_json(report.as_dict()) if as_json else echo(report.line())

    @click.pass_context
    def logs(ctx: click.Context, tail: int) -> None:
        echo(service.logs(settings_from(ctx), tail).line())

    default, name, other_port = service.port_default, f"toolkit {service.name}", service.default_port + 1
    group = Group(service.name, help=service.help)
    up_help = _with_examples(service.up_help, (f"{name} up", f"on its default port ({default})"),
                             (f"{name} up --port {other_port} --json", "elsewhere; the result for a script"))
    down_help = _with_examples(service.down_help, (f"{name} down", ""))
    status_help = _with_examples(service.status_help, (f"{name} status", "the toolkit's server, wherever it runs"),
                                 (f"{name} status --port {other_port} --json", "whatever answers on that port"))
    logs_help = _with_examples(service.logs_help, (f"{name} logs --tail 20", ""))
    group.add_command(click.Command("up", callback=up, help=up_help, params=[
        _port(f"Port on 127.0.0.1 [default: {default}]."),
        *map(_extra, service.up_options),
        click.Option(["--timeout"], type=Seconds(), default=60.0, show_default=True,
                     help="Seconds to wait for readiness."),
        _json("result"),
    ]))
    group.add_command(click.Command("down", callback=down, help=down_help))
    group.add_command(click.Command("status", callback=status, help=status_help, params=[
        _port(f"Report this port on 127.0.0.1 [default: where the toolkit's server runs, else {default}]."),
        _json("status"),
    ]))
    group.add_command(click.Command("logs", callback=logs, help=logs_help, params=[
        click.Option(["--tail"], type=Whole(min=0), default=100, show_default=True, help="Lines to show."),
    ]))
    return group


chroma = server_group(SERVICES["chroma"])
s3 = server_group(SERVICES["s3"])
