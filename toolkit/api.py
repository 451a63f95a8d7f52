"""The library's front door: everything a command does is one call here.

    with toolkit.postgres(port=5433, state_dir="/tmp/pg") as db:
        db.url  # postgresql+pg8000://memgpt:memgpt@localhost:5433/memgpt
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import engines, envfile, exports, state
from toolkit.engines.base import Choice, Endpoint, Engine, Progress, quiet
from toolkit.errors import ImageUnavailableError, InUseError
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
    chosen: tuple[Choice, ...] = ()  # values this project took because the defaults were held
    settings: Settings | None = field(default=None, compare=False, repr=False)  # what the server runs with
    exported: bool = True  # False: --no-export; .env was not looked at, whatever it holds
    variables: tuple[str, ...] = (envfile.URL_VAR,)  # what the exports chosen set (names only: never values)
    written: tuple[str, ...] = ()  # those of them this call changed in .env

    def line(self) -> str:
        names = ", ".join(self.variables)
        if not self.exported:
            where = f"{names} not written to {self.env_file.name} (--no-export)"
        elif not self.written:
            where = f"{names} in {self.env_file.name} {'are' if len(self.variables) > 1 else 'is'} current"
        elif set(self.written) == set(self.variables):
            where = f"{names} written to {self.env_file.name}"
        else:
            current = ", ".join(v for v in self.variables if v not in self.written)
            where = f"{', '.join(self.written)} written to {self.env_file.name} ({current} current)"
        return f"postgres ready ({self.engine}) at {self.url.redacted()}; {where}"

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "url": self.url.redacted(), "ready": True, "env_file": str(self.env_file),
                "env_changed": self.env_changed, "exported": self.exported, "variables": list(self.variables),
                "written": list(self.written), "note": self.note, "chosen": [c.as_dict() for c in self.chosen]}


def database_url(settings: Settings) -> PgUrl:
    """The URL clients use, as the engine these settings select knows it (no server is asked)."""
    engine, _ = engines.select(settings)
    return engine.endpoint().url


def env_values(settings: Settings, url: PgUrl | None = None) -> dict[str, str]:
    """What `toolkit env` prints and `up` writes into .env: the variables of the exports the settings choose
    (``settings.export``: memgpt by default), for ``url`` (an engine's endpoint), else the settings' engine's."""
    return exports.values(url or database_url(settings), settings.export)


def _lifecycle(settings: Settings, purpose: str):  # type: ignore[no-untyped-def]
    """The state dir's lock, held across a whole up/down: concurrent calls take turns. Waits as long
    as another call may legitimately take (its own readiness timeout, plus a cold start)."""
    return state_lock(settings.state_dir, purpose, timeout=settings.timeout + LOCK_GRACE)


def up(settings: Settings, *, export: bool = True, progress: Progress = quiet, build: bool = False,
       base_image: str | None = None) -> UpResult:
    """Start (or find running) Postgres+pgvector, wait until usable, write PGVECTOR_TEST_DB_URL.
    ``progress`` hears what takes time (an image pull); the library prints nothing itself. ``build``:
    first build db/Dockerfile (on ``base_image``, else its own base) and run that image with Docker."""
    if export:  # what .env cannot hold is said before a server starts, not after
        external = settings.external_url if settings.engine in ("auto", "external") else None
        envfile.check(exports.values(parse(external) if external else settings.db.url(), settings.export))
    if build:
        from toolkit.engines.docker import build_for_up

        settings = build_for_up(settings, base=base_image)
    with _lifecycle(settings, "up"):
        result = _up(settings, export=export, progress=progress)
        state.unmark_started_by_tests(settings.state_dir)  # started by a test run before: the user's server now
        return result


def _up(settings: Settings, *, export: bool, progress: Progress = quiet) -> UpResult:
    """``up`` for a caller that holds the lock. The URL is the one the engine that started the server
    hands back."""
    state.check_recordable(settings.state_dir)
    given = settings
    engine, note = engines.select(settings, starting=True)
    try:
        engine, settings, chosen, endpoint = _start(engine, settings, progress)
    except ImageUnavailableError as exc:
        if not engines.falls_back(given, engine):
            raise
        engine, settings, chosen, endpoint = _start(engines.load("embedded", given), given, progress)
        note = engines.fallback_note(exc)
    if engine.name != "external":
        engines.remember(settings, engine.name)
    values = env_values(settings, endpoint.url)
    written = envfile.write(settings.env_file, values) if export else ()
    return UpResult(engine.name, endpoint.url, settings.env_file, bool(written), note, tuple(chosen), settings, export,
                    tuple(values), tuple(written))


def _start(engine: Engine, settings: Settings, progress: Progress) -> tuple[Engine, Settings, list[Choice], Endpoint]:
    """``engine.up`` with this project's own values where defaults are held; when another checkout took one
    a moment ago (the same default port, the same container name), its own are chosen once more."""
    engine, settings, chosen = _choose_free(engine, settings, progress)
    try:
        return engine, settings, chosen, engine.up(progress=progress)
    except InUseError:
        engine, settings, again = _choose_free(engine, settings, progress)
        if not again:
            raise  # a value given (flag, environment, .env) is never replaced: who holds it is the answer
        return engine, settings, chosen + again, engine.up(progress=progress)


def _choose_free(engine: Engine, settings: Settings, progress: Progress) -> tuple[Engine, Settings, list[Choice]]:
    """The engine and settings with this project's own values where a default is held by another project
    or server (said through ``progress``); a given value is never replaced (the engine then says who holds it)."""
    chosen = engine.choose_free()
    if not chosen:
        return engine, settings, []
    for choice in chosen:
        progress(choice.line())
    settings = settings.choosing({c.setting: c.value for c in chosen})
    return engines.load(engine.name, settings), settings, chosen


def down(settings: Settings, *, purge: bool = False) -> str:
    with _lifecycle(settings, "down --purge" if purge else "down"):
        engine, _ = engines.select(settings)
        engine.down(purge=purge)
        if purge and engine.name != "external":  # an external server's data is not ours: nor is the record's
            state.forget(settings.state_dir)
    return engine.name


def data_location(settings: Settings) -> str | None:
    """Where ``down --purge`` would delete this project's data, for the question it asks; None for an
    external server (its data is not the toolkit's to delete)."""
    engine, _ = engines.select(settings)
    if engine.name == "external":
        return None
    if engine.name == "docker":
        return f"Docker volume {settings.volume}"
    return str(settings.state_dir / engine.name)


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


def ensure_up(settings: Settings, *, export: bool = False, keep_failed: bool = False) -> tuple[UpResult, Engine, bool]:
    """``up`` that also tells whether this call started the server (it was not running): the result, the
    engine it runs on (with the settings it runs with), and started. Decided under the state dir's lock, so
    of two callers at once exactly one is told it started the server. A failed up (a timeout, a wrong
    password) that started the server stops it again, unless ``keep_failed``."""
    with _lifecycle(settings, "up"):
        used, _ = engines.select(settings, starting=True)
        used, settings, _ = _choose_free(used, settings, quiet)  # its own names, as `up` will take them
        started = not used.status().running
        try:
            result = _up(settings, export=export)
        except BaseException:
            if started and not keep_failed:
                used.down()
            raise
    if result.settings is not None:  # the settings it runs with: auto's fallback, names and port of its own
        used = engines.load(result.engine, result.settings)
    return result, used, started


@contextmanager
def postgres(*, engine: str = "embedded", keep: bool = False, export: bool = False, **flags: Any) -> Iterator[Database]:
    """A ready Postgres+pgvector for a test or script; stopped on exit unless it was already running.

    ``flags`` are setting names: port, user, password, database, bind, state_dir, project_dir, timeout...
    """
    names = {"port", "user", "password", "database", "host", "bind"}
    resolved = resolve({("db." + k if k in names else k): v for k, v in flags.items()} | {"engine": engine})
    result, used, started = ensure_up(resolved, export=export, keep_failed=keep)
    resolved = result.settings or resolved
    try:
        yield Database(result.url.render("pg8000"), resolved)
    finally:
        if started and not keep:
            with _lifecycle(resolved, "down"):
                used.down()
