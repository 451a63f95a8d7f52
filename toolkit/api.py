"""The library's front door: everything a command does is one call here.

    with toolkit.postgres(port=5433, state_dir="/tmp/pg") as db:
        db.url  # postgresql+pg8000://memgpt:memgpt@localhost:5433/memgpt
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import engines, envfile
from toolkit.errors import ImageUnavailableError
from toolkit.settings import Settings, resolve
from toolkit.urls import PgUrl, parse


@dataclass(frozen=True)
class UpResult:
    engine: str
    url: PgUrl
    env_file: Path
    env_changed: bool
    note: str | None = None

    def line(self) -> str:
        where = f"PGVECTOR_TEST_DB_URL written to {self.env_file.name}" if self.env_changed else \
            f"PGVECTOR_TEST_DB_URL in {self.env_file.name} is current"
        return f"postgres ready ({self.engine}) at {self.url.redacted()}; {where}"

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "url": self.url.redacted(), "ready": True, "env_file": str(self.env_file),
                "env_changed": self.env_changed, "note": self.note}


def database_url(settings: Settings) -> PgUrl:
    """The URL clients use, whatever the engine."""
    if settings.engine == "external" or (settings.engine == "auto" and settings.external_url):
        assert settings.external_url
        return parse(settings.external_url)
    return settings.db.url()


def env_values(settings: Settings) -> dict[str, str]:
    return {envfile.URL_VAR: database_url(settings).render("pg8000")}


def up(settings: Settings, *, export: bool = True) -> UpResult:
    """Start (or find running) Postgres+pgvector, wait until usable, write PGVECTOR_TEST_DB_URL."""
    engine, note = engines.select(settings, starting=True)
    try:
        engine.up()
    except ImageUnavailableError as exc:
        # auto chose Docker, but the image cannot be had here (no registry): what works is the
        # embedded engine. An explicit --engine docker, or a project already on Docker, fails instead.
        if settings.engine != "auto" or engine.name != "docker" or engines.remembered(settings) is not None:
            raise
        engine = engines.load("embedded", settings)
        note = (f"{exc.message}; using the embedded engine (for Docker without a registry: "
                "`toolkit image build`, then TOOLKIT_PG_IMAGE=toolkit/pgvector-offline:pg18)")
        engine.up()
    if engine.name != "external":
        engines.remember(settings, engine.name)
    changed = envfile.write(settings.env_file, env_values(settings)) if export else False
    return UpResult(engine.name, database_url(settings), settings.env_file, changed, note)


def down(settings: Settings, *, purge: bool = False) -> str:
    engine, _ = engines.select(settings)
    engine.down(purge=purge)
    if purge:
        marker = settings.state_dir / "engine"
        marker.unlink(missing_ok=True)
    return engine.name


def status(settings: Settings) -> dict[str, Any]:
    engine, _ = engines.select(settings)
    state = engine.status()
    url = database_url(settings)
    if state.running and isinstance(state.extra.get("port"), int):
        url = settings.db.url(port=state.extra["port"]) if engine.name != "external" else url
    return {"engine": state.engine, "running": state.running, "detail": state.detail,
            "url": url.redacted(), **state.extra}


def logs(settings: Settings, tail: int = 100) -> str:
    engine, _ = engines.select(settings)
    return engine.logs(tail)


@dataclass(frozen=True)
class Database:
    url: str  # pg8000 URL, as in .env
    settings: Settings

    @property
    def libpq_url(self) -> str:
        return parse(self.url).libpq


@contextmanager
def postgres(*, engine: str = "embedded", keep: bool = False, export: bool = False, **flags: Any) -> Iterator[Database]:
    """A ready Postgres+pgvector for a test or script; stopped on exit unless it was already running.

    ``flags`` are setting names: port, user, password, database, bind, state_dir, project_dir, timeout...
    """
    names = {"port", "user", "password", "database", "host", "bind"}
    resolved = resolve({("db." + k if k in names else k): v for k, v in flags.items()} | {"engine": engine})
    used, _ = engines.select(resolved, starting=True)
    stop = not keep and not used.status().running
    try:  # a failed up (timeout, wrong password) may have started the server: stop it all the same
        result = up(resolved, export=export)
        if result.engine != used.name:  # auto fell back to another engine
            used = engines.load(result.engine, resolved)
        yield Database(database_url(resolved).render("pg8000"), resolved)
    finally:
        if stop:
            used.down()
