"""`toolkit smoke`: prove the archival backends store and find embeddings here."""

from __future__ import annotations

import time

import click

from toolkit.commands._common import BackendName, Seconds, Whole, echo, echo_json, settings_from
from toolkit.errors import BackendError


@click.command()
@click.option("--backend", type=BackendName("all"),
              help="Backend to check [default: the one in the MemGPT config, plus postgres].")
@click.option("-n", "count", type=Whole(min=2), default=100, show_default=True, help="Passages per check.")
@click.option("--dim", type=Whole(1, 4096), default=1536, show_default=True, help="Embedding dimension.")
@click.option("--timeout", type=Seconds(), default=120.0, show_default=True,
              help="Seconds each backend's check may take.")
@click.option("--format", "fmt", metavar="FORMAT",
              help="Format a new Chroma/LanceDB store is written in: memgpt (chromadb 0.5, Lance legacy), current, "
                   "or a backend's own name (0.5, 1, legacy, stable) [default: what is there, else memgpt when "
                   "MemGPT is installed or configured, else current].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def smoke(ctx: click.Context, backend: str | None, count: int, dim: int, timeout: float, fmt: str | None,
          as_json: bool) -> None:
    """Check archival backends: insert, upsert, nearest neighbours, agent filter, delete, drop.

    Each backend is checked in a temporary table that is dropped afterwards, all in parallel.
    Servers are not started for you: a stopped one is reported with the command that starts it
    (toolkit up, toolkit chroma up, toolkit s3 up). Exit 0 only when every check passes, else 6 (a
    backend failed its check, or none could be checked at all: the one asked for is not running); 4
    when the one asked for needs a library of an extra that is not installed (pip install
    'toolkit[chroma]', [lancedb]).

    A Chroma directory another client generation wrote (MemGPT 0.3.x's chromadb 0.5) is checked on a
    private copy, through that client in an isolated environment: the directory stays as it was.

    \b
    Example:
      toolkit up && toolkit chroma up && toolkit s3 up && toolkit smoke --backend all
    """
    from toolkit import smoke as lib

    settings = settings_from(ctx)
    started = time.monotonic()
    chosen = lib.targets(settings, backend, fmt)
    results = lib.run(chosen, n=count, dim=dim, timeout=timeout)
    wall = time.monotonic() - started
    if as_json:
        echo_json({"ok": all(r.ok for r in results), "seconds": round(wall, 3),
                   "results": [r.as_dict() for r in results]}, settings)
    else:
        echo(lib.table(results), settings)
        passed = sum(r.ok for r in results)
        echo(f"{passed}/{len(results)} passed in {wall:.2f}s", settings)
    unchecked = lib.nothing_checked(chosen)
    if unchecked:
        raise unchecked
    failed = [r for r in results if not r.ok]
    if failed:  # a backend that fails its check is a backend failure: exit 6, as when none could be checked
        by_status: dict[str, list[str]] = {}
        for r in failed:
            by_status.setdefault(r.status, []).append(r.backend)
        said = "; ".join(f"{', '.join(names)}: {status}" for status, names in by_status.items())
        raise BackendError(f"{len(failed)} of {len(results)} checks did not pass ({said})",
                           hint=f"the {'JSON results say' if as_json else 'table above says'} why")
