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
from toolkit.engines.base import Progress, quiet
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
    """The URL clients use, as the engine these settings select knows it (no server is asked)."""
    engine, _ = engines.select(settings)
    return engine.endpoint().url


def env_values(settings: Settings, url: PgUrl | None = None) -> dict[str, str]:
    """What `toolkit env` prints and `up` writes into .env: ``url`` (an engine's endpoint), else the
    settings' engine's."""
    return {envfile.URL_VAR: (url or database_url(settings)).render("pg8000")}


def _lifecycle(settings: Settings, purpose: str):  # type: ignore[no-untyped-def]
    """The state dir's lock, held across a whole up/down: concurrent calls take turns. Waits as long
    as another call may legitimately take (its own readiness timeout, plus a cold start)."""
    return state_lock(settings.state_dir, purpose, timeout=settings.timeout + LOCK_GRACE)


def up(settings: Settings, *, export: bool = True, progress: Progress = quiet, build: bool = False,
       base_image: str | None = None) -> UpResult:
    """Start (or find running) Postgres+pgvector, wait until usable, write PGVECTOR_TEST_DB_URL.
    ``progress`` hears what takes time (an image pull); the library prints nothing itself. ``build``:
    first build db/Dockerfile (on ``base_image``, else its own base) and run that image with Docker."""
    if build:
        from toolkit.engines.docker import build_for_up

        settings = build_for_up(settings, base=base_image)
    with _lifecycle(settings, "up"):
        return _up(settings, export=export, progress=progress)


def _up(settings: Settings, *, export: bool, progress: Progress = quiet) -> UpResult:
    """``up`` for a caller that holds the lock. The URL is the one the engine that started the server
    hands back."""
    state.check_recordable(settings.state_dir)
    engine, note = engines.select(settings, starting=True)
    try:
        endpoint = engine.up(progress=progress)
    except ImageUnavailableError as exc:
        # auto chose Docker, but the image cannot be had here (no registry): what works is the
        # embedded engine. An explicit --engine docker, or a project already on Docker, fails instead.
        if settings.engine != "auto" or engine.name != "docker" or engines.remembered(settings) is not None:
            raise
        engine = engines.load("embedded", settings)
        note = (f"{exc.message}; using the embedded engine (for Docker without a registry: "
                "`toolkit image build`, then TOOLKIT_PG_IMAGE=toolkit/pgvector-offline:pg18)")
        endpoint = engine.up(progress=progress)
    if engine.name != "external":
        engines.remember(settings, engine.name)
    changed = envfile.write(settings.env_file, env_values(settings, endpoint.url)) if export else False
    return UpResult(engine.name, endpoint.url, settings.env_file, changed, note)


def down(settings: Settings, *, purge: bool = False) -> str:
    with _lifecycle(settings, "down --purge" if purge else "down"):
        engine, _ = engines.select(settings)
        engine.down(purge=purge)
        if purge:
            state.forget(settings.state_dir)
    return engine.name


def down_all(settings: Settings, *, purge: bool = False) -> list[str]:
    """Docker: remove every container (with ``purge``, volume) labelled as this project's, whichever
    names the settings give now."""
    from toolkit.engines.docker import DockerEngine

    with _lifecycle(settings, "down --all"):
        docker = engines.load("docker", settings)
        assert isinstance(docker, DockerEngine)
        return docker.down_all(purge=purge)


def status(settings: Settings) -> dict[str, Any]:
    engine, _ = engines.select(settings)
    found = engine.status()
    url = engine.endpoint().url
    if found.running and isinstance(found.extra.get("port"), int):
        url = url.with_address(port=found.extra["port"])  # where it runs, whatever the settings say now
    return {"engine": found.engine, "running": found.running, "detail": found.detail,
            "url": url.redacted(), **found.extra}


def psql_invocation(settings: Settings, sql: str | None = None, args: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run psql on the database: the engine's psql (local binary or docker exec),
    ``-c sql`` when given, then ``args``. The password travels in the environment, never in argv (ps)."""
    import os

    engine, _ = engines.select(settings)
    url = engine.endpoint().url
    argv = engine.psql_argv(url.render("plain", password=False)) + (["-c", sql] if sql else []) + list(args)
    return argv, {**os.environ, "PGPASSWORD": url.password}


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
        yield Database(result.url.render("pg8000"), resolved)
    finally:
        if stop:
            with _lifecycle(resolved, "down"):
                used.down()
