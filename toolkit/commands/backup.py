"""`toolkit backup` and `toolkit restore`: a pg_dump of the project's database, and putting one back, verified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from toolkit.commands._common import confirm_or_abort, echo, echo_json, settings_from
from toolkit.commands.db import db_flags, db_options, stderr_progress


def _tables(tables: list[Any], settings: Any) -> None:
    for t in tables:
        kind = "archival, migrate's checksum" if t.archival else "rows' digest"
        echo(f"  {t.name}: {t.rows} rows, checksum {t.checksum} ({kind})", settings)


@click.command()
@db_options
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE (and its record) if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def backup(ctx: click.Context, file: Path | None, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Dump the project's database to FILE (pg_dump custom format), with a record of its tables.

    FILE defaults to backups/<database>-<UTC timestamp>.dump under the project dir (the directory is
    made 0700 and ignored by git). The dump is 0600 and appears under its name only once complete;
    beside it, FILE.json records its size and SHA-256 and every table's row count and checksum
    (archival tables: the checksum `toolkit migrate` prints), which `toolkit restore` checks.
    pg_dump is the server's own (embedded), or a local one of the server's major version or newer.

    \b
    Examples:
      toolkit backup
      toolkit backup /srv/backups/memgpt.dump --json
    """
    from toolkit.backup import backup as run

    settings = settings_from(ctx, **db_flags(**kwargs))
    result = run(settings, file, force=force, progress=stderr_progress(settings))
    if as_json:
        echo_json(result.as_dict(), settings)
        return
    rows = sum(t.rows for t in result.tables)
    echo(f"backed up database {result.database} to {result.file} ({_size(result.bytes)}, {_counted(result.tables, rows)}) "
         f"in {result.seconds:.1f} s; record in {result.record.name}", settings)
    _tables(result.tables, settings)


@click.command()
@db_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--into", metavar="NAME", help="Restore into a new database NAME (refused if it exists).")
@click.option("--yes", "-y", is_flag=True, help="Replace the tables the database holds without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def restore(ctx: click.Context, file: Path, into: str | None, yes: bool, as_json: bool, **kwargs: Any) -> None:
    """Restore a `toolkit backup` dump into the running database, then verify it.

    All or nothing: one transaction; the tables in the dump replace those of the same names (asked
    first when the database holds any tables; --yes skips the question, and without a terminal it is
    required). Then every table's row count and checksum are compared with the backup's record
    (FILE.json); without one the restore is done but not verified. A dump from one engine restores
    on another (embedded, Docker, external). Nothing is changed when FILE is missing, not a dump,
    truncated, or from a newer pg_dump.

    \b
    Examples:
      toolkit restore backups/memgpt-20260102T030405Z.dump
      toolkit restore memgpt.dump --into memgpt_copy
    """
    from toolkit.backup import restore as run

    settings = settings_from(ctx, **db_flags(**kwargs))
    result = run(settings, file, into=into, confirm=lambda question: confirm_or_abort(question, yes=yes),
                 progress=stderr_progress(settings))
    if as_json:
        echo_json(result.as_dict(), settings)
        return
    rows = sum(t.rows for t in result.tables)
    verdict = "verified against its record" if result.verified else \
        f"NOT verified: no record {file.name}.json beside the dump"
    echo(f"restored {file} into {'new ' if result.created else ''}database {result.database} "
         f"({_counted(result.tables, rows)}) in {result.seconds:.1f} s; {verdict}", settings)
    _tables(result.tables, settings)


def _size(n: int) -> str:
    """``41332489`` as ``39.4 MiB``."""
    size, units = float(n), ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{n} bytes" if units[0] == "bytes" else f"{size:.1f} {units[0]}"


def _counted(tables: Sequence[object], rows: int) -> str:
    return f"{len(tables)} table{'s' if len(tables) != 1 else ''}, {rows} row{'s' if rows != 1 else ''}"
