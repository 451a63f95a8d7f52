"""Choosing MemGPT's one archival backend (room: configure): the choice as a SPEC, its check, the switch.

The click command (commands/configure.py) asks the questions; this module turns answers into a
``Spec``, counts what the currently selected backend holds, and writes MemGPT's config.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from toolkit import memgpt_config, specs
from toolkit.backends import DEFAULT_TABLE, open_store
from toolkit.errors import ToolkitError, UsageError
from toolkit.settings import Settings
from toolkit.specs import Spec

BACKEND_CHOICES = ("local", "postgres", "chroma", "lancedb")


@dataclass(frozen=True)
class Choice:
    """One answer set, as from the prompts or the flags."""

    backend: str  # local, postgres, chroma, chroma-http, lancedb
    uri: str | None = None
    path: str | None = None


def spec_for(choice: Choice, settings: Settings) -> Spec:
    """The SPEC a choice selects; empty or missing values take MemGPT's / the toolkit's defaults."""
    backend, uri, path = choice.backend, (choice.uri or "").strip(), (choice.path or "").strip()
    if backend == "chroma" and uri and path:
        raise UsageError("give chroma either --path (persistent) or --uri HOST:PORT (http), not both",
                         hint="MemGPT would silently pick the persistent client")
    if backend == "chroma" and uri:
        backend = "chroma-http"
    if backend == "postgres":
        return specs.parse(uri or specs.provisioned_url(settings), settings)
    if backend == "chroma-http":
        hostport = uri.removeprefix("http://").removeprefix("chroma+http://")
        return specs.parse("chroma+http://" + (hostport or f"{settings.chroma_host}:{settings.chroma_port}"),
                           settings)
    if backend == "chroma":
        return specs.parse("chroma://" + (path or str(specs.default_chroma_dir())), settings)
    if backend == "lancedb":
        target = uri or path or "./.lancedb"
        return specs.parse(target if target.startswith("s3://") else "lancedb://" + target, settings)
    if backend == "local":
        return specs.parse("local://" + (path or str(specs.default_local_dir())), settings)
    raise UsageError(f"unknown backend {backend!r}", hint=f"choose one of {', '.join(BACKEND_CHOICES)}")


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
    if spec.backend in ("local", "chroma", "lancedb") and not Path(spec.location).exists():
        return 0
    with closing(open_store(spec.store(table))) as store:
        return store.count() if store.exists() else 0


def migrate_command(source: Spec, destination: Spec, settings: Settings) -> str:
    """The `toolkit migrate` line that moves the data; a provisioned Postgres is named `postgres` (no password)."""

    def word(spec: Spec) -> str:
        if spec.backend == "postgres" and spec == specs.parse(specs.provisioned_url(settings), settings):
            return "postgres"
        return str(spec)

    return f"toolkit migrate --from {word(source)} --to {word(destination)} --switch"


def smoke_check(spec: Spec, settings: Settings) -> None:
    """Run the backend's smoke check against the chosen location; raise ToolkitError if it fails."""
    from toolkit import smoke

    result = smoke.check_location(spec.store(), settings)
    if not result.ok:
        raise ToolkitError(f"{spec.backend} check failed at {spec}: {result.detail}",
                           hint="fix it, or pass --no-check to write the config anyway")


def write(spec: Spec, settings: Settings) -> Path | None:
    """Point MemGPT at ``spec``; return the backup of the previous config, if any."""
    return memgpt_config.write(settings.memgpt_config_path, specs.to_memgpt(spec))
