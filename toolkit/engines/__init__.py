"""Engines: where Postgres runs, behind one Protocol (base.py). Adding one = a module + a line here.

``select`` resolves engine ``auto``: keep using the engine whose state already exists (so a Docker
daemon appearing later never starts a second database on the same port), else Docker when an engine
answers a ping, else embedded.
"""

from __future__ import annotations

import importlib

from toolkit import state
from toolkit.engines.base import Endpoint, Engine, EngineStatus
from toolkit.errors import EngineUnavailableError, ToolkitError, UsageError
from toolkit.settings import Settings

ENGINES: dict[str, str] = {
    "embedded": "toolkit.engines.embedded:EmbeddedEngine",
    "docker": "toolkit.engines.docker:DockerEngine",
    "external": "toolkit.engines.external:ExternalEngine",
}

__all__ = ["ENGINES", "Endpoint", "Engine", "EngineStatus", "load", "select", "remember"]


def load(name: str, settings: Settings) -> Engine:
    try:
        target = ENGINES[name]
    except KeyError:
        raise UsageError(f"unknown engine {name!r}", hint=f"use one of: auto, {', '.join(ENGINES)}") from None
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise EngineUnavailableError(f"engine {name!r} cannot load: {exc}", hint="run `make venv`") from None
    engine: Engine = cls(settings)
    return engine


def remember(settings: Settings, name: str) -> None:
    """Record which engine ``up`` used and the settings it used (settings.RECORDED), so auto keeps to it
    and every later command (down, status, env, logs, the next up) uses what the server was started with."""
    values, chosen = settings.recorded(name)
    state.record_up(settings.state_dir, name, settings.db.port, values, chosen)


def remembered(settings: Settings) -> str | None:
    name = state.last_up(settings.state_dir).get("engine")
    return name if name in ENGINES else None


def _embedded_data(settings: Settings) -> str | None:
    """"embedded" when its data is here. With no record (an `up` killed before writing it, a `down --purge`
    of Docker), keep to it rather than start an empty Docker database beside it (or find our own server
    holding the port)."""
    from toolkit.engines.embedded import EmbeddedEngine

    return "embedded" if EmbeddedEngine(settings).initialized() else None


def holding_data(settings: Settings) -> str | None:
    """The engine that holds this project's database: the last `up`'s (embedded: if its data is still
    there; Docker: unless its volume is known to be gone, removed outside the toolkit), else embedded
    when its data exists. Asks the Docker engine only when the answer can change (embedded data exists)."""
    previous = remembered(settings)
    if previous == "docker" and not (_embedded_data(settings) and _docker_volume_exists(settings) is False):
        return "docker"
    return _embedded_data(settings)


def _docker_volume_exists(settings: Settings) -> bool | None:
    """None when no Docker engine answers (then nobody can tell)."""
    try:
        from toolkit.engines.docker import volume_exists
    except ImportError:
        return None
    return volume_exists(settings)


def _check_switch(settings: Settings, name: str) -> None:
    """An explicit engine other than the one holding the data would start an empty database beside it,
    and the next auto would follow it: the user's rows would seem gone. Only with --switch-engine."""
    held = holding_data(settings) if name in ("docker", "embedded") and not settings.switch_engine else None
    if held is None or held == name:
        return
    where = f"Docker volume {settings.volume}" if held == "docker" else f"{settings.state_dir / 'embedded'}"
    origin = settings.sources.get("engine", "flag")
    given = "--engine" if origin == "flag" else f"TOOLKIT_ENGINE ({origin})"
    raise UsageError(f"this project's database is on the {held} engine ({where}); {given} {name} would start an "
                     "empty one beside it",
                     hint=f"drop {given} to keep using it, copy the data over with `toolkit migrate`, or start the "
                          f"empty {name} database anyway with --switch-engine (the {held} data stays where it is)")


def docker_unavailable_reason(settings: Settings) -> str | None:
    """None when a Docker engine answers, else why not (one line)."""
    try:
        from toolkit.engines.docker import docker_available
    except ImportError as exc:
        return f"the Docker engine module cannot load ({exc})"
    return docker_available(settings)


def falls_back(settings: Settings, engine: Engine) -> bool:
    """When auto chose Docker but the image cannot be had here (no registry), what works is the embedded
    engine. An explicit --engine docker, or a project already on Docker, fails instead."""
    return settings.engine == "auto" and engine.name == "docker" and remembered(settings) is None


def fallback_note(exc: ToolkitError) -> str:
    return (f"{exc.message}; using the embedded engine (for Docker without a registry: "
            "`toolkit image build`, then TOOLKIT_PG_IMAGE=toolkit/pgvector-offline:pg18)")


def plan(settings: Settings) -> tuple[str, str]:
    """What ``toolkit up`` would start, and why, asked of the same selection ``up`` makes (its fallback to
    embedded included: the image is checked, not pulled). Starts nothing. For doctor."""
    engine, note = select(settings, starting=True)
    if note:
        return engine.name, note
    if falls_back(settings, engine):
        from toolkit.engines.docker import image_unobtainable

        problem = image_unobtainable(settings)
        if problem is not None:
            return "embedded", problem
    if settings.engine != "auto":
        return engine.name, "the engine given"
    held = holding_data(settings)
    if held is not None:
        return engine.name, "it holds this project's database"
    return engine.name, "a Docker engine answers" if engine.name == "docker" else "the default"


def select(settings: Settings, *, starting: bool = False) -> tuple[Engine, str | None]:
    """The engine for these settings, and a note to show the user when auto chose a fallback."""
    name = settings.engine
    if name != "auto":
        if starting:
            _check_switch(settings, name)
        return load(name, settings), None
    if settings.external_url:
        return load("external", settings), None
    previous = holding_data(settings)
    if previous is not None:
        return load(previous, settings), None
    if not starting:
        return load("embedded", settings), None
    reason = docker_unavailable_reason(settings)
    if reason is None:
        return load("docker", settings), None
    return load("embedded", settings), f"no Docker engine answers ({reason}); using the embedded engine"
