"""The Engine Protocol: where Postgres runs. One module per engine implements it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from toolkit.settings import Settings


@dataclass(frozen=True)
class Endpoint:
    """Where a running server answers. ``url`` is the application role's pg8000 URL (with password)."""

    host: str
    port: int
    url: str


@dataclass
class EngineStatus:
    engine: str
    running: bool
    detail: str = ""  # one redacted line: pid, container id, data dir ...
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    name: str

    def __init__(self, settings: Settings) -> None: ...

    def up(self) -> Endpoint:
        """Start (or find running) the server, bootstrap role/database/extension, wait until ready."""

    def down(self, *, purge: bool = False) -> None:
        """Stop the server; with ``purge`` also delete its data. Idempotent."""

    def status(self) -> EngineStatus: ...

    def logs(self, tail: int = 100) -> str:
        """The last ``tail`` lines of the server log (redacted by the caller)."""

    def psql_argv(self, url: str) -> list[str]:
        """argv that opens psql against the server (a local psql binary, or ``docker exec``)."""
