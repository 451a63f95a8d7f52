"""`toolkit migrate`: copy archival data between backends, verified, optionally switching MemGPT to it."""

from __future__ import annotations

import sys
from contextlib import ExitStack

import click

from toolkit.backends import DEFAULT_TABLE
from toolkit.commands._common import Whole, echo, echo_json, settings_from


@click.command()
@click.option("--from", "source", required=True, metavar="SPEC", help="Store to copy from (read only).")
@click.option("--to", "destination", required=True, metavar="SPEC", help="Store to copy into (upsert by id).")
@click.option("--table", default=DEFAULT_TABLE, show_default=True, help="Table / collection name on both sides.")
@click.option("--batch", type=Whole(min=1), default=None,
              help="Rows per batch [default: about 16 MiB of embeddings: 2730 rows of 1536 dimensions].")
@click.option("--format", "fmt", metavar="FORMAT",
              help="Format to write a new Chroma/LanceDB destination in: memgpt (chromadb 0.5, Lance legacy: what "
                   "MemGPT 0.3.x reads), current, or the backend's own name (0.5, 1, legacy, stable) "
                   "[default: what the destination holds, else memgpt when MemGPT is installed or configured, "
                   "else current].")
@click.option("--dry-run", is_flag=True, help="Check both sides and count; write nothing.")
@click.option("--switch", is_flag=True, help="After verification, point MemGPT's config at the destination.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing archive file (a parquet:// destination); without it one is refused, with "
                   "nothing written. Only an archive the toolkit wrote is replaced, never another file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def migrate(ctx: click.Context, source: str, destination: str, table: str, batch: int | None, fmt: str | None,
            dry_run: bool, switch: bool, overwrite: bool, as_json: bool) -> None:
    """Copy archival passages from one backend to another and verify the copy.

    Rows stream in batches and are upserted by id, so an interrupted run is resumed by running it
    again. At the end both sides must hold the same number of rows with the same checksum over ids,
    texts and embeddings. The source is never modified (a source directory is read through a private
    copy, by the client generation that wrote it). Refused, with nothing written: same source
    and destination, a missing or empty source, an unreachable destination, a destination table
    holding embeddings of another dimension.

    A parquet:// destination is a portable archive (one Parquet file that pyarrow, pandas and DuckDB
    read): it is written to a hidden temporary file next to it and appears under its name only once
    verified, so an interrupted run leaves no archive and a re-run writes it afresh. An existing file is
    refused unless --overwrite. MemGPT cannot use an archive: restore it with --from parquet://... .

    \b
    SPEC is one of:
      postgresql://USER:PASS@HOST:PORT/DB   Postgres+pgvector (also postgresql+pg8000://, +psycopg://)
      postgres                              the Postgres `toolkit up` provisioned (PGVECTOR_TEST_DB_URL)
      chroma:///ABS/PATH                    Chroma persistent directory (chroma://REL/PATH: relative)
      chroma+http://HOST:PORT               Chroma server
      lancedb:///ABS/PATH                   LanceDB directory
      s3://BUCKET/PREFIX                    LanceDB on S3 (TOOLKIT_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...)
      local:///ABS/PATH                     local files
      parquet:///ABS/PATH/ARCHIVE.parquet   a Parquet archive file (parquet://REL/PATH: relative)
      chroma | chroma+http | lancedb | local   that backend's default location
    Chroma and LanceDB SPECs take ?format=F, as --format does for the destination.

    \b
    Examples:
      toolkit migrate --from chroma:///home/me/.memgpt/chroma --to postgres --switch
      toolkit migrate --from local:///data/archival --to lancedb:///data/lance --dry-run
      toolkit migrate --from postgres --to chroma:///home/me/.memgpt/chroma --format memgpt
      toolkit migrate --from chroma+http://127.0.0.1:8000 --to postgresql://memgpt:memgpt@localhost:8888/memgpt
      toolkit migrate --from postgres --to parquet:///backups/archival.parquet
      toolkit migrate --from parquet:///backups/archival.parquet --to postgres
    """
    from toolkit import specs
    from toolkit.migrate import migrate as run

    settings = settings_from(ctx)
    src, dst = specs.parse(source, settings), specs.parse(destination, settings).with_format(fmt)
    _two_malloc_arenas()
    with ExitStack() as bar_open:
        bar: _Bar | None = None

        def start(rows: int, before: int) -> None:
            nonlocal bar
            if before:
                echo(f"destination already holds {before} rows; resuming (upsert by id)", settings, err=True)
            if not dry_run and sys.stderr.isatty():  # off a terminal the summary line says it all
                bar = bar_open.enter_context(_Bar(rows, f"migrating {rows} rows"))

        def verify() -> None:
            nonlocal bar
            if bar is not None:
                bar_open.close()  # the bar ends before the one that says what comes next
                bar = bar_open.enter_context(_Bar(bar.length, "verifying: reading the destination back"))

        def advance(rows: int) -> None:
            if bar is not None:
                bar.update(rows)

        result = run(src, dst, table=table, batch=batch, dry_run=dry_run,
                     switch=settings.memgpt_config_path if switch else None, overwrite=overwrite,
                     progress=advance, on_start=start, on_verify=verify, verified=advance)

    for warning in result.warnings:
        echo(f"warning: {warning}", settings, err=True)
    if as_json:
        echo_json({**vars(result), "rows_per_second": round(result.rows_per_second, 1),
                   "peak_rss_mib": round(result.peak_rss_bytes / 2**20, 1)}, settings)
        return
    if dry_run:
        echo(f"dry run: would copy {result.rows} rows ({result.dimension}-dim) of table {table} from {src} "
             f"to {dst} (which holds {result.destination_before}); nothing written", settings)
        return
    echo(f"migrated {result.rows} rows of table {table} from {src} to {dst} in {result.seconds:.1f} s "
         f"({result.rows_per_second:.0f} rows/s); verified: {result.rows} rows, checksum {result.checksum}",
         settings)
    if result.switched:
        echo(f"MemGPT config {result.switched} now selects {dst}"
             + (f" (previous config saved as {result.backup})" if result.backup else ""), settings)
        if table != DEFAULT_TABLE:
            echo(f"note: MemGPT reads table {DEFAULT_TABLE}, not {table}", settings, err=True)


def _two_malloc_arenas() -> None:
    """At most two glibc malloc arenas in this process. The reader, the verifier and the clients' own threads
    would each get an arena that keeps the batches it freed: ~100 MB more peak RSS in a long migration."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        pass


class _Bar:
    """click's progress bar over rows, showing the rate in rows/s beside the count and the ETA."""

    def __init__(self, length: int, label: str) -> None:
        import time

        self.length = length
        self._clock = time.monotonic
        self._started = self._clock()
        self._done = 0
        self._bar = click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True, show_eta=True,
                                      item_show_func=lambda rate: rate)

    def __enter__(self) -> _Bar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, rows: int) -> None:
        self._done += rows
        elapsed = self._clock() - self._started
        self._bar.update(rows, f"{self._done / elapsed:,.0f} rows/s" if elapsed > 0 else None)
