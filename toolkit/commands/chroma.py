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
    One server per checkout: status, down and logs follow it to the port and data it was started on;
    up refuses another port or --path while it runs (`toolkit chroma down` first).
    Example:
      toolkit chroma up --port 8001 && toolkit smoke --backend chroma-http
      toolkit chroma up --format memgpt     # for MemGPT 0.3.x (archival_storage uri 127.0.0.1:8000)
    """


def _chroma(ctx: click.Context, port: int | None = None) -> Any:
    """The server for down/status/logs: its pid file and log; they follow the pid file's record to where
    ours runs, whatever its port and format."""
    from toolkit.services.chroma_server import chroma_server

    return chroma_server(settings_from(ctx, chroma_port=port))


def _down(server: Any) -> None:
    running = server.running()
    stopped = server.down()
    where = f" (was at {server.at(running).url})" if stopped and running else ""
    echo(f"{server.name}: stopped{where}" if stopped else f"{server.name}: was not running")


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
    """Start the Chroma server and wait on its heartbeat; idempotent.

    When the toolkit's server already runs on another port or data path, this refuses (stop it with
    `toolkit chroma down` first); when it fails, only the process it started is stopped.
    """
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
    if running is not None and running != chosen:  # ours or not: the client would get the wrong format
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
    """Stop the Chroma server the toolkit started in this checkout, on whichever port it runs (data kept)."""
    _down(_chroma(ctx))


@chroma.command("status")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Report this port on 127.0.0.1 [default: where the toolkit's server runs, else 8000].")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def chroma_status(ctx: click.Context, port: int | None, as_json: bool) -> None:
    """Is the Chroma server running, and of which format? Exit 0 when it answers, 1 when not.

    Without --port: the toolkit's server where it runs. With --port: that port (naming where the
    toolkit's server runs when that is elsewhere).
    """
    from urllib.parse import urlsplit

    from toolkit.backends.chroma import describe, server_format

    server = _chroma(ctx, port)
    state = server.status(exact=port is not None)
    where = urlsplit(state.url)
    running = server_format(where.hostname or server.host, where.port or server.port) if state.running else None
    if as_json:
        echo_json({**state.as_dict(), "format": running})
    else:
        echo(state.line() + (f"; {describe(running)}" if running else ""))
    ctx.exit(0 if state.running else 1)


@chroma.command("logs")
@click.option("--tail", type=click.IntRange(min=0), default=100, show_default=True, help="Lines to show.")
@click.pass_context
def chroma_logs(ctx: click.Context, tail: int) -> None:
    """The Chroma server log's tail (one log per checkout, whatever the port)."""
    server = _chroma(ctx)
    echo(server.logs(tail) or f"no log yet at {server.log_file}")


@click.group()
def s3() -> None:
    """Run an S3-compatible test server (moto) on 127.0.0.1 for LanceDB on s3://.

    `s3 up` creates the bucket `toolkit` and writes TOOLKIT_S3_ENDPOINT, TOOLKIT_S3_REGION,
    TOOLKIT_S3_ALLOW_HTTP into .env, so smoke and migrate reach it, and test keys unless .env already
    has AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (those are kept: moto accepts any keys).

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
    """Start the S3 test server, create the bucket, export its settings; idempotent.

    AWS keys already in .env are kept; test keys are written only where there are none. When the
    toolkit's S3 server already runs on another port, this refuses (`toolkit s3 down` first).
    """
    from toolkit import envfile
    from toolkit.services.s3_server import BUCKET, create_bucket, env_to_write
    from toolkit.settings import read_dotenv

    settings, server = _s3(ctx, port)
    state = server.up(timeout=timeout)
    create_bucket(server)
    changed = False
    kept: list[str] = []
    if not no_export:
        values, kept = env_to_write(server, read_dotenv(settings.env_file))
        changed = envfile.write(settings.env_file, values)
    if as_json:
        echo_json({**state.as_dict(), "bucket": BUCKET, "env_changed": changed, "env_kept": kept})
    else:
        where = f"; settings written to {settings.env_file.name}" if changed else ""
        keys = f"; kept {' and '.join(kept)} already in {settings.env_file.name}" if kept else ""
        echo(f"{state.line()}; bucket {BUCKET}{where}{keys}")


@s3.command("down")
@click.pass_context
def s3_down(ctx: click.Context) -> None:
    """Stop the S3 test server the toolkit started, on whichever port it runs (its data lives in memory
    and is gone)."""
    _, server = _s3(ctx)
    _down(server)


@s3.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def s3_status(ctx: click.Context, as_json: bool) -> None:
    """Is the S3 test server running (where the toolkit's runs, else the .env's port or 9000)? Exit 0
    when it answers, 1 when not."""
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
