"""Commands for the helper servers: `toolkit chroma up|down|status|logs` and `toolkit s3 up|down|status|logs`.

One factory builds every service's group from the description its module exports
(``toolkit.services.base.Service``): the same core options for each (up: --port --timeout --json;
status: --port --json; down; logs: --tail), then the service's own options of ``up``. Each command
parses, makes one call on the service, and renders.
"""

from __future__ import annotations

from typing import Any

import click

from toolkit.commands._common import echo, echo_json, settings_from
from toolkit.services.base import Option, Service
from toolkit.services.registry import SERVICES

# the options every service's commands take, by command: what a test holds each group to
CORE_OPTIONS = {"up": ("--port", "--timeout", "--json"), "down": (), "status": ("--port", "--json"),
                "logs": ("--tail",)}
_CORE_DESTS = {"port", "timeout", "as_json", "tail"}


def _port(help: str) -> click.Option:
    return click.Option(["--port"], type=click.IntRange(1, 65535), help=help)


def _json(what: str) -> click.Option:
    return click.Option(["--json", "as_json"], is_flag=True, help=f"Print the {what} as JSON.")


def _extra(option: Option) -> click.Option:
    if option.kind == "flag":
        return click.Option([option.flag, option.dest], is_flag=True, help=option.help)
    kind = click.Path(file_okay=False) if option.kind == "dir" else click.STRING
    return click.Option([option.flag, option.dest], type=kind, metavar=option.metavar, help=option.help)


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

    default = service.port_default
    group = click.Group(service.name, help=service.help)
    group.add_command(click.Command("up", callback=up, help=service.up_help, params=[
        _port(f"Port on 127.0.0.1 [default: {default}]."),
        *map(_extra, service.up_options),
        click.Option(["--timeout"], type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                     help="Seconds to wait for readiness."),
        _json("result"),
    ]))
    group.add_command(click.Command("down", callback=down, help=service.down_help))
    group.add_command(click.Command("status", callback=status, help=service.status_help, params=[
        _port(f"Report this port on 127.0.0.1 [default: where the toolkit's server runs, else {default}]."),
        _json("status"),
    ]))
    group.add_command(click.Command("logs", callback=logs, help=service.logs_help, params=[
        click.Option(["--tail"], type=click.IntRange(min=0), default=100, show_default=True, help="Lines to show."),
    ]))
    return group


chroma = server_group(SERVICES["chroma"])
s3 = server_group(SERVICES["s3"])
