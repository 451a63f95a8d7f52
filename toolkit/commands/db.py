"""Database commands: up, down, status, env, logs, psql. Each parses flags, makes one library call,
renders the result."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from toolkit.commands._common import Port, Seconds, Whole, confirm_or_abort, echo, echo_json, settings_from
from toolkit.envfile import FORMATS
from toolkit.settings import ENGINES, Settings
from toolkit.urls import redact

if TYPE_CHECKING:
    from toolkit.engines.base import Progress

F = Callable[..., Any]


def db_options(func: F) -> F:
    """Flags every database command shares; each overrides TOOLKIT_* / .env / defaults."""
    options = [
        click.option("--engine", type=click.Choice(ENGINES), help="Where Postgres runs [default: auto]."),
        click.option("--port", type=Port(),
                     help="Port on this machine [default: the last `up`'s; else 8888, or this project's own when "
                          "8888 is held]."),
        click.option("--user", help="Application role [default: memgpt]."),
        click.option("--password", help="Its password [default: memgpt]; prefer TOOLKIT_PG_PASSWORD."),
        click.option("--database", help="Database name [default: memgpt]."),
        click.option("--url", "external_url", help="Engine external: URL of a server that already runs."),
        click.option("--state-dir", type=click.Path(file_okay=False), help="Data, logs, pid files [default: ./.toolkit]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def export_option(func: F) -> F:
    """--export NAMES, repeatable; the names and their variables from toolkit.exports' registry."""
    from toolkit import exports

    return click.option(
        "--export", "export", multiple=True, metavar="NAMES",
        help=f"Whose variables, comma-separated, repeatable [default: memgpt; TOOLKIT_EXPORT]: {exports.described()}.")(func)


def db_flags(**kwargs: Any) -> dict[str, Any]:
    """A command's flags under their setting names (``port`` -> ``db.port``), for ``settings_from``."""
    renames = {"port": "db.port", "user": "db.user", "password": "db.password", "database": "db.database",
               "bind": "db.bind", "host": "db.host"}
    if "export" in kwargs:  # ("letta,libpq", "memgpt") -> "letta,libpq,memgpt", parsed (and checked) by settings
        kwargs["export"] = ",".join(kwargs["export"]) if kwargs["export"] else None
    return {renames.get(k, k): v for k, v in kwargs.items()}


@click.command()
@db_options
@click.option("--bind", help="Address to listen on [default: 127.0.0.1]; 0.0.0.0 exposes it to the network.")
@click.option("--timeout", type=Seconds(), help="Seconds to wait for readiness [default: 60].")
@export_option
@click.option("--no-export", is_flag=True, help="Do not write anything into .env.")
@click.option("--image", help="Docker image [default: pgvector/pgvector:pg16]; with --build, the base image.")
@click.option("--build", is_flag=True, help="Docker: build db/Dockerfile (role memgpt, vector) and run that image.")
@click.option("--switch-engine", is_flag=True, default=None,
              help="Start --engine (or TOOLKIT_PG_VOLUME) even though another engine (volume) holds this "
                   "project's data: an empty database; the old data stays where it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def up(ctx: click.Context, no_export: bool, as_json: bool, build: bool, **kwargs: Any) -> None:
    """Start Postgres+pgvector, wait until it is usable, write PGVECTOR_TEST_DB_URL to .env.

    Idempotent: when the server already runs and is healthy it changes nothing. Engine auto uses
    Docker when an engine answers, else the embedded server from the pip wheel.

    --export (or TOOLKIT_EXPORT) chooses whose variables go into .env, beside every other line of it
    (mode 0600); the output names them, never their values.

    \b
    Examples:
      toolkit up --port 5433 && eval "$(toolkit env --port 5433)"
      toolkit up --export memgpt,letta,libpq   # also LETTA_PG_URI and PGHOST... for psql
    """
    from toolkit import api
    from toolkit.errors import UsageError

    if no_export and kwargs["export"]:
        raise UsageError("--export and --no-export contradict each other", hint="give one of them")
    settings = settings_from(ctx, **db_flags(**kwargs))
    result = api.up(settings, export=not no_export, progress=stderr_progress(settings), build=build,
                    base_image=kwargs.get("image"))
    if as_json:
        echo_json(result.as_dict(), settings)
        return
    if result.note:
        echo(f"note: {result.note}", settings, err=True)
    echo(result.line(), settings)


@click.command()
@db_options
@click.option("--purge", is_flag=True, help="Also delete the data (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --purge.")
@click.option("--all", "all_", is_flag=True,
              help="Docker: remove every container (with --purge, volume) labelled as this project's.")
@click.pass_context
def down(ctx: click.Context, purge: bool, yes: bool, all_: bool, **kwargs: Any) -> None:
    """Stop the database. Data is kept unless --purge.

    \b
    Example:
      toolkit down --purge --yes   # stop and delete everything, no questions
    """
    from toolkit import api

    settings = settings_from(ctx, **db_flags(**kwargs))
    if all_:
        if purge:
            confirm_or_abort(f"delete every toolkit container and volume of {settings.project_dir}", yes=yes)
        removed = api.down_all(settings, purge=purge)
        echo(f"removed {len(removed)}: {', '.join(removed) or 'nothing labelled as this project'}", settings)
        return
    where = api.data_location(settings) if purge else None
    if where is not None:
        confirm_or_abort(f"delete all data of the {settings.db.database!r} database in {where}", yes=yes)
    engine = api.down(settings, purge=purge)
    if engine == "external":
        echo("the external server is managed elsewhere: nothing stopped" +
             ("; nothing deleted (its data is not the toolkit's)" if purge else ""), settings)
        return
    echo(f"postgres stopped ({engine})" + ("; data deleted" if purge else "; data kept"), settings)


@click.command()
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, **kwargs: Any) -> None:
    """Say whether the database runs, where, and its (redacted) URL.

    Exits 0 whenever it can tell (running or not: read "running" in --json); non-zero only when it
    cannot (bad settings 2, Docker unreachable with --engine docker 4).

    \b
    Examples:
      toolkit status
      toolkit status --json     # {"running": false, "engine": "embedded", ...} for scripts
      toolkit status --engine docker --port 5433
    """
    from toolkit import api

    settings = settings_from(ctx, **db_flags(**kwargs))
    state = api.status(settings)
    if as_json:
        echo_json(state, settings)
        return
    word = "running" if state["running"] else "not running"
    echo(f"postgres {word} ({state['engine']}): {state['detail']}; url {state['url']}", settings)


@click.command()
@db_options
@export_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="sh", show_default=True,
              help="sh/fish for eval, dotenv, github for $GITHUB_ENV (multi-line values in its NAME<<DELIM "
                   "form), json.")
@click.pass_context
def env(ctx: click.Context, fmt: str, **kwargs: Any) -> None:
    """Print PGVECTOR_TEST_DB_URL (or the --export variables) for a shell or CI.

    This output is meant to hold the password. Every format is quoted so that any password (quotes, $,
    backslashes, newlines) reads back as it is.

    \b
    Examples:
      eval "$(toolkit env)"
      eval "$(toolkit env --export libpq)" && psql      # PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
      toolkit env --export memgpt,letta --format github >> "$GITHUB_ENV"
    """
    from toolkit import api
    from toolkit.envfile import render

    settings = settings_from(ctx, **db_flags(**kwargs))
    click.echo(render(api.env_values(settings), fmt))


@click.command()
@db_options
@click.option("--tail", "-n", type=Whole(min=0), default=100, show_default=True, help="Lines to show.")
@click.pass_context
def logs(ctx: click.Context, tail: int, **kwargs: Any) -> None:
    """Show the end of the server log (passwords redacted).

    \b
    Examples:
      toolkit logs              # the last 100 lines
      toolkit logs -n 20 --engine docker
    """
    from toolkit import api

    settings = settings_from(ctx, **db_flags(**kwargs))
    text = api.logs(settings, tail)
    if text:
        echo(text, settings)


@click.command(context_settings={"ignore_unknown_options": True})
@db_options
@click.option("-c", "--command", "sql", help="Run this SQL and exit instead of opening a prompt.")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def psql(ctx: click.Context, sql: str | None, psql_args: tuple[str, ...], **kwargs: Any) -> None:
    """Open psql on the database (extra arguments go to psql).

    \b
    Examples:
      toolkit psql
      toolkit psql -c 'SELECT extversion FROM pg_extension'
    """
    from toolkit import api

    argv, env = api.psql_invocation(settings_from(ctx, **db_flags(**kwargs)), sql, psql_args)
    if sql is None:
        os.execvpe(argv[0], argv, env)
    from toolkit import proc

    done = proc.run(argv, env=env)
    click.echo(done.stdout, nl=False)


def stderr_progress(settings: Settings) -> Progress:
    """Render an engine's progress on stderr: a terminal redraws live lines in place, a log keeps only
    the lines meant to be kept."""
    tty = sys.stderr.isatty()
    width = 0  # of the live line on screen, to blank what a shorter one leaves

    def show(line: str, *, live: bool = False) -> None:
        nonlocal width
        if not tty:
            if not live:
                echo(line, settings, err=True)
            return
        text = redact(line, settings.secrets)
        click.echo("\r" + text.ljust(width), err=True, nl=not live)
        width = len(text) if live else 0

    return show
