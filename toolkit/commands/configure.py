"""`toolkit configure`: pick MemGPT's archival backend, by prompts or flags, check it, write the config."""

from __future__ import annotations

import click

from toolkit.commands._common import BackendName, echo, prompt, settings_from


@click.command()
@click.option("--backend", type=BackendName(memgpt=True),
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

    settings = settings_from(ctx)
    done = lib.configure(settings, backend, uri, path, prompt=None if no_input else prompt, check=not no_check,
                         warn=lambda line: echo(f"warning: {line}", settings, err=True))
    if done.checked:
        echo(f"{done.spec.backend} check passed at {done.spec}", settings)
    if done.count_error:
        echo(f"warning: could not count the archival rows in {done.previous}: {done.count_error}", settings, err=True)
    elif done.rows_left:
        echo(f"warning: {done.previous} holds {done.rows_left} archival passages; MemGPT will not see them after this "
             f"switch. Copy them with:\n  {done.migrate_command}", settings, err=True)
    saved = f" (previous config saved as {done.backup})" if done.backup else ""
    echo(f"MemGPT config {done.config_path}: archival storage is {done.spec}{saved}", settings)
