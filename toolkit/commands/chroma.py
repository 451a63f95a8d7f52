"""Commands for the helper servers: `toolkit chroma up|down|status|logs` and `toolkit s3 up|down|status|logs`."""

from __future__ import annotations

from typing import Any

import click

from toolkit.commands._common import echo, echo_json, settings_from


def _timeout_option(func: Any) -> Any:
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                        help="Seconds to wait for readiness.")(func)


@click.group()
def chroma() -> None:
    """Run a Chroma server (`chroma run`) in the background, in the format its clients read.

    \b
    --format 0.5 (or memgpt) runs chromadb 0.5 from an isolated environment built on first use: the
    server MemGPT 0.3.x's HttpClient talks to. --format 1 (or current) runs the chromadb installed here.
    Data in ./.toolkit/chroma-server (-0.5 for 0.5; or --path); pid file and log in ./.toolkit.
    Example:
      toolkit chroma up --port 8001 && toolkit smoke --backend chroma-http
      toolkit chroma up --format memgpt     # for MemGPT 0.3.x (archival_storage uri 127.0.0.1:8000)
    """


def _chroma(ctx: click.Context, port: int | None = None) -> Any:
    """The server for down/status/logs: its pid file, log and heartbeat, whatever its format."""
    from toolkit.services.chroma_server import chroma_server

    return chroma_server(settings_from(ctx, chroma_port=port))


@chroma.command("up")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 [default: 8000].")
@click.option("--path", type=click.Path(file_okay=False), help="Data directory [default: ./.toolkit/chroma-server].")
@click.option("--format", "fmt", metavar="FORMAT",
              help="memgpt (= 0.5: chromadb 0.5, what MemGPT 0.3.x reads), current (= 1), 0.4, 0.5 or 1 "
                   "[default: what --path holds, else memgpt when MemGPT is installed or configured, else current].")
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def chroma_up(ctx: click.Context, port: int | None, path: str | None, fmt: str | None, timeout: float,
              as_json: bool) -> None:
    """Start the Chroma server and wait on its heartbeat; idempotent."""
    from pathlib import Path

    from toolkit.backends import formats
    from toolkit.backends.chroma import describe, server_format
    from toolkit.errors import UsageError
    from toolkit.services.chroma_server import chroma_server, format_to_serve

    settings = settings_from(ctx, chroma_port=port)
    where = Path(path).absolute() if path else None
    chosen = format_to_serve(settings, formats.normalize("chroma", fmt), where)
    server = chroma_server(settings, path=where, fmt=chosen, progress=lambda line: echo(line, settings, err=True))
    running = server_format(server.host, server.port)
    if running is not None and running != chosen:
        raise UsageError(f"a Chroma server of {describe(running)} already answers on port {server.port}, "
                         f"not format {chosen}",
                         hint="stop it with `toolkit chroma down`, or choose another --port")
    state = server.up(timeout=timeout)
    data = server.argv[server.argv.index("--path") + 1]
    if as_json:
        echo_json({**state.as_dict(), "path": data, "format": chosen})
    else:
        echo(f"{state.line()}; {describe(chosen)}; data in {data}")


@chroma.command("down")
@click.pass_context
def chroma_down(ctx: click.Context) -> None:
    """Stop the Chroma server the toolkit started (data kept)."""
    echo("chroma: stopped" if _chroma(ctx).down() else "chroma: was not running")


@chroma.command("status")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 [default: 8000].")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def chroma_status(ctx: click.Context, port: int | None, as_json: bool) -> None:
    """Is the Chroma server running, and of which format? Exit 0 when it answers, 1 when not."""
    from toolkit.backends.chroma import describe, server_format

    server = _chroma(ctx, port)
    state = server.status()
    running = server_format(server.host, server.port) if state.running else None
    if as_json:
        echo_json({**state.as_dict(), "format": running})
    else:
        echo(state.line() + (f"; {describe(running)}" if running else ""))
    ctx.exit(0 if state.running else 1)


@chroma.command("logs")
@click.option("--tail", type=click.IntRange(min=0), default=100, show_default=True, help="Lines to show.")
@click.pass_context
def chroma_logs(ctx: click.Context, tail: int) -> None:
    """The Chroma server log's tail."""
    server = _chroma(ctx)
    echo(server.logs(tail) or f"no log yet at {server.log_file}")


@click.group()
def s3() -> None:
    """Run an S3-compatible test server (moto) on 127.0.0.1 for LanceDB on s3://.

    `s3 up` creates the bucket `toolkit` and writes TOOLKIT_S3_ENDPOINT, TOOLKIT_S3_REGION,
    TOOLKIT_S3_ALLOW_HTTP and test keys into .env, so smoke and migrate reach it.

    \b
    Example:
      toolkit s3 up && toolkit smoke --backend lancedb-s3
    """


def _s3(ctx: click.Context, port: int | None = None) -> Any:
    from toolkit.services.s3_server import s3_server

    settings = settings_from(ctx)
    return settings, s3_server(settings, port=port)


@s3.command("up")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 [default: 9000].")
@_timeout_option
@click.option("--no-export", is_flag=True, help="Do not write the S3 settings into .env.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def s3_up(ctx: click.Context, port: int | None, timeout: float, no_export: bool, as_json: bool) -> None:
    """Start the S3 test server, create the bucket, export its settings; idempotent."""
    from toolkit import envfile
    from toolkit.services.s3_server import BUCKET, create_bucket, env_values

    settings, server = _s3(ctx, port)
    state = server.up(timeout=timeout)
    create_bucket(server)
    changed = False if no_export else envfile.write(settings.env_file, env_values(server))
    if as_json:
        echo_json({**state.as_dict(), "bucket": BUCKET, "env_changed": changed})
    else:
        where = f"; settings written to {settings.env_file.name}" if changed else ""
        echo(f"{state.line()}; bucket {BUCKET}{where}")


@s3.command("down")
@click.pass_context
def s3_down(ctx: click.Context) -> None:
    """Stop the S3 test server (its data lives in memory and is gone)."""
    _, server = _s3(ctx)
    echo("s3: stopped" if server.down() else "s3: was not running")


@s3.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def s3_status(ctx: click.Context, as_json: bool) -> None:
    """Is the S3 test server running? Exit 0 when it answers, 1 when not."""
    _, server = _s3(ctx)
    state = server.status()
    echo_json(state.as_dict()) if as_json else echo(state.line())
    ctx.exit(0 if state.running else 1)


@s3.command("logs")
@click.option("--tail", type=click.IntRange(min=0), default=100, show_default=True, help="Lines to show.")
@click.pass_context
def s3_logs(ctx: click.Context, tail: int) -> None:
    """The S3 test server log's tail."""
    _, server = _s3(ctx)
    echo(server.logs(tail) or f"no log yet at {server.log_file}")
