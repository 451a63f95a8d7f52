"""Choosing MemGPT's one archival backend (room: configure): the choice, its check, the switch.

``configure`` takes what the flags gave and, through ``prompt``, asks the rest as `memgpt configure`
does (each backend module asks its own questions); it checks the store, counts what the store MemGPT
used so far holds, and writes MemGPT's config. The click command renders the ``Outcome``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from toolkit import memgpt_config, specs
from toolkit.backends import DEFAULT_TABLE, MEMGPT_DEFAULT, Prompt, backend, memgpt_types, open_store
from toolkit.errors import ToolkitError, UsageError, error_line
from toolkit.settings import Settings
from toolkit.specs import Spec


@dataclass(frozen=True)
class Outcome:
    spec: Spec  # what MemGPT's config selects now
    config_path: Path
    backup: Path | None  # the previous config, kept
    checked: bool  # the smoke check ran (and passed)
    previous: Spec | None  # the store MemGPT used before, when it is another one
    rows_left: int  # archival rows in ``previous``: MemGPT no longer sees them
    count_error: str | None  # why ``previous`` could not be counted
    migrate_command: str | None  # the `toolkit migrate` line that copies ``rows_left``


def configure(settings: Settings, name: str | None, uri: str | None, path: str | None, *,
              prompt: Prompt | None, check: bool = True, warn: Callable[[str], None] = lambda line: None) -> Outcome:
    """Select MemGPT's archival store: backend ``name`` at ``uri``/``path``. With ``prompt``, ask for what
    is missing (defaults from the current config); without, take the flags, then the current config's
    location of the same backend, then defaults. ``warn`` hears about a config section being repaired."""
    before, problem = current(settings)
    if problem:  # MemGPT cannot use the section as it is: the choice replaces it
        warn(f"{problem}; the [archival_storage] written now replaces it")
    old = before.kind.to_memgpt(before) if before else None
    if name is None and prompt is not None:
        name = prompt("Select storage backend for archival data", default=old.type if old else MEMGPT_DEFAULT,
                      choices=memgpt_types())
    name = name or (old.type if old else MEMGPT_DEFAULT)
    if prompt is not None:
        uri, path = backend(name).ask(uri, path, old, settings, prompt)
    elif before is not None and old is not None and name in (old.type, before.backend) and uri is None and path is None:
        uri, path = old.uri or None, old.path or None  # only --backend: keep where that backend is configured
    spec = specs.from_choice(name, uri, path, settings)
    if check:
        smoke_check(spec)
    previous, rows, count_error = None, 0, None
    if before is not None and before.identity != spec.identity:
        previous = before
        try:
            rows = count_rows(before)
        except Exception as exc:  # noqa: BLE001 - a warning only: the old backend may be down
            count_error = error_line(exc)
    backup = write(spec, settings)
    command = migrate_command(before, spec, settings) if before is not None and rows else None
    return Outcome(spec=spec, config_path=settings.memgpt_config_path, backup=backup, checked=check,
                   previous=previous, rows_left=rows, count_error=count_error, migrate_command=command)


def current(settings: Settings) -> tuple[Spec | None, str | None]:
    """The store MemGPT's config selects now (None: none), and what is wrong with its [archival_storage]
    when writing that section repairs it: the section or a key in it twice, an unknown type, a bad value.
    A file that cannot be read otherwise raises ConfigError."""
    path = settings.memgpt_config_path
    try:
        section = memgpt_config.read(path)
    except memgpt_config.DuplicateSection as exc:
        return None, exc.message
    try:
        return (specs.from_memgpt(section, settings) if section else None), None
    except UsageError as exc:
        return None, f"{exc.message} ({path})"


def count_rows(spec: Spec, table: str = DEFAULT_TABLE) -> int:
    """Rows ``table`` holds in ``spec``; 0 when it does not exist. Never creates anything."""
    if spec.kind.holds_nothing(spec):
        return 0
    with closing(open_store(spec.store(table))) as store:
        return store.count() if store.exists() else 0


def migrate_command(source: Spec, destination: Spec, settings: Settings) -> str:
    """The `toolkit migrate` line that moves the data; a store its backend's word names is given by the word
    (the provisioned Postgres is `postgres`: no password on screen)."""
    return (f"toolkit migrate --from {specs.word_for(source, settings)} --to {specs.word_for(destination, settings)}"
            " --switch")


def smoke_check(spec: Spec) -> None:
    """Run the backend's smoke check against the chosen location; raise ToolkitError if it fails."""
    from toolkit import smoke

    result = smoke.check_location(spec.store())
    if not result.ok:
        raise ToolkitError(f"{spec.backend} check failed at {spec}: {result.detail}",
                           hint="fix it, or pass --no-check to write the config anyway")


def write(spec: Spec, settings: Settings) -> Path | None:
    """Point MemGPT at ``spec``; return the backup of the previous config, if any."""
    return memgpt_config.write(settings.memgpt_config_path, spec.kind.to_memgpt(spec))
