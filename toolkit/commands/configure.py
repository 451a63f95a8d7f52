"""`toolkit configure`: pick MemGPT's archival backend, by prompts or flags, check it, write the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from toolkit.commands._common import echo, settings_from
from toolkit.urls import redact

if TYPE_CHECKING:
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

_PG_EXAMPLE = "postgresql+pg8000://{user}:{password}@{ip}:5432/{database}"


@click.command()
@click.option("--backend", type=click.Choice(["local", "postgres", "chroma", "chroma-http", "lancedb"]),
              help="Archival backend (chroma with --uri means the HTTP client).")
@click.option("--uri", help="postgres: connection URL; chroma: HOST:PORT of a server; lancedb: directory or s3:// URI.")
@click.option("--path", help="chroma: persistent directory; local: archival directory.")
@click.option("--no-input", is_flag=True, help="Never prompt: flags, then the current config, then defaults.")
@click.option("--no-check", is_flag=True, help="Skip the backend's smoke check.")
@click.pass_context
def configure(ctx: click.Context, backend: str | None, uri: str | None, path: str | None, no_input: bool,
              no_check: bool) -> None:
    """Select MemGPT's storage backend for archival data and write it to MemGPT's config.

    Asks as `memgpt configure` does (or takes --backend/--uri/--path with --no-input), runs the
    backend's smoke check, and rewrites only the [archival_storage] section of ~/.memgpt/config (or
    $MEMGPT_CONFIG_PATH), atomically, keeping a backup. A section MemGPT cannot use (an unknown type,
    the section or a key in it twice) is repaired the same way. When the backend you switch away from holds
    archival data, it tells you how many rows and the `toolkit migrate` command that copies them.

    \b
    Examples:
      toolkit configure                                         # interactive
      toolkit configure --backend postgres --no-input           # the Postgres `toolkit up` provisioned
      toolkit configure --backend chroma --uri localhost:8000 --no-input
      toolkit configure --backend lancedb --uri s3://bucket/memgpt --no-input --no-check
    """
    from toolkit import configure as lib
    from toolkit import specs

    settings = settings_from(ctx)
    before, problem = lib.current(settings)
    if problem:  # MemGPT cannot use the section as it is: the choice below replaces it
        echo(f"warning: {problem}; the [archival_storage] written now replaces it", settings, err=True)
    old = specs.to_memgpt(before) if before else None

    if backend is None and not no_input:
        default = old.type if old else "local"
        backend = click.prompt("Select storage backend for archival data", default=default,
                               type=click.Choice(lib.BACKEND_CHOICES))
    backend = backend or (old.type if old else "local")
    if not no_input:
        uri, path = _ask(backend, uri, path, old, settings)
    elif before is not None and backend == (old.type if old else None) and uri is None and path is None:
        # --no-input with only --backend: keep the configured location of that backend
        uri, path = old.uri or None, old.path or None  # type: ignore[union-attr]

    spec = lib.spec_for(lib.Choice(backend, uri, path), settings)
    if not no_check:
        lib.smoke_check(spec, settings)
        echo(f"{spec.backend} check passed at {spec}", settings)
    if before is not None and before.identity != spec.identity:
        try:
            rows = lib.count_rows(before)
        except Exception as exc:  # noqa: BLE001 - a warning only: the old backend may be down
            echo(f"warning: could not count the archival rows in {before}: {redact(str(exc))}", settings, err=True)
        else:
            if rows:
                echo(f"warning: {before} holds {rows} archival passages; MemGPT will not see them after this "
                     f"switch. Copy them with:\n  {lib.migrate_command(before, spec, settings)}", settings, err=True)
    backup = lib.write(spec, settings)
    saved = f" (previous config saved as {backup})" if backup else ""
    echo(f"MemGPT config {settings.memgpt_config_path}: archival storage is {spec}{saved}", settings)


def _ask(backend: str, uri: str | None, path: str | None, old: ArchivalStorage | None,
         settings: Settings) -> tuple[str | None, str | None]:
    """The backend's own questions, skipping what flags already answered; defaults from the current config."""
    from toolkit import specs

    same = old is not None and old.type == backend.replace("chroma-http", "chroma")
    if backend in ("chroma", "chroma-http") and uri is None and path is None:
        kind = "http" if backend == "chroma-http" or (same and old and not old.path and old.uri) else "persistent"
        kind = click.prompt("Select chroma backend", default=kind, type=click.Choice(["persistent", "http"]))
        if kind == "http":
            fallback = (old.uri if same and old and old.uri else f"{settings.chroma_host}:{settings.chroma_port}")
            uri = click.prompt("Enter chroma host:port (e.g. localhost:8000)", default=fallback)
        else:
            fallback = old.path if same and old and old.path else str(specs.default_chroma_dir())
            path = click.prompt("Enter chroma persistent path", default=fallback)
    elif backend == "postgres" and uri is None:
        fallback = old.uri if same and old and old.uri else specs.provisioned_url(settings)
        answer = click.prompt(f"Enter postgres connection string (e.g. {_PG_EXAMPLE}) [{redact(fallback)}]",
                              default="", show_default=False)
        uri = answer or fallback
    elif backend == "lancedb" and uri is None and path is None:
        fallback = old.uri if same and old and old.uri else ""
        uri = click.prompt("Enter LanceDB URI (directory or s3://bucket/prefix; empty: ./.lancedb)",
                           default=fallback, show_default=bool(fallback)) or None
    elif backend == "local" and path is None:
        fallback = old.path if same and old and old.path else str(specs.default_local_dir())
        path = click.prompt("Enter local archival directory", default=fallback)
    return uri, path
