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

from toolkit import engines, envfile, state
from toolkit.errors import ImageUnavailableError
from toolkit.lock import state_lock
from toolkit.settings import Settings, resolve
from toolkit.urls import PgUrl, parse

LOCK_GRACE = 120.0  # seconds beyond the readiness timeout a waiting up/down gives the holder


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


def _lifecycle(settings: Settings, purpose: str):  # type: ignore[no-untyped-def]
    """The state dir's lock, held across a whole up/down: concurrent calls take turns. Waits as long
    as another call may legitimately take (its own readiness timeout, plus a cold start)."""
    return state_lock(settings.state_dir, purpose, timeout=settings.timeout + LOCK_GRACE)


def up(settings: Settings, *, export: bool = True) -> UpResult:
    """Start (or find running) Postgres+pgvector, wait until usable, write PGVECTOR_TEST_DB_URL."""
    with _lifecycle(settings, "up"):
        return _up(settings, export=export)


def _up(settings: Settings, *, export: bool) -> UpResult:
    """``up`` for a caller that holds the lock."""
    state.check_recordable(settings.state_dir)
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
    with _lifecycle(settings, "down --purge" if purge else "down"):
        engine, _ = engines.select(settings)
        engine.down(purge=purge)
        if purge:
            state.forget(settings.state_dir)
    return engine.name


def down_all(settings: Settings, *, purge: bool = False) -> list[str]:
    """Docker: remove every container (with ``purge``, volume) labelled as this project's."""
    from toolkit.engines.docker import DockerEngine

    with _lifecycle(settings, "down --all"):
        return DockerEngine(settings).down_all(purge=purge)


def status(settings: Settings) -> dict[str, Any]:
    engine, _ = engines.select(settings)
    found = engine.status()
    url = database_url(settings)
    if found.running and isinstance(found.extra.get("port"), int):
        url = settings.db.url(port=found.extra["port"]) if engine.name != "external" else url
    return {"engine": found.engine, "running": found.running, "detail": found.detail,
            "url": url.redacted(), **found.extra}


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
    stop = False
    try:  # a failed up (timeout, wrong password) may have started the server: stop it all the same
        with _lifecycle(resolved, "up"):
            # decided under the lock: the server this call finds stopped is the one it must stop
            used, _ = engines.select(resolved, starting=True)
            stop = not keep and not used.status().running
            result = _up(resolved, export=export)
        if result.engine != used.name:  # auto fell back to another engine
            used = engines.load(result.engine, resolved)
        yield Database(database_url(resolved).render("pg8000"), resolved)
    finally:
        if stop:
            with _lifecycle(resolved, "down"):
                used.down()
