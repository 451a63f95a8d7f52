"""The Engine Protocol: where Postgres runs. One module per engine implements it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from toolkit.settings import Settings
from toolkit.urls import PgUrl


@dataclass(frozen=True)
class Endpoint:
    """Where a running server answers, as the engine that started it knows: the application role's URL
    (with its password), rendered for each client by ``PgUrl``."""

    url: PgUrl

    @property
    def host(self) -> str:
        return self.url.host

    @property
    def port(self) -> int:
        return self.url.port


class Progress(Protocol):
    """Where an engine reports what takes time (pulling an image, recreating a container): the library
    never prints, the command renders. ``live``: a status that the next one replaces (a terminal redraws
    it in place, a log may skip it); else a line to keep."""

    def __call__(self, line: str, *, live: bool = False) -> None: ...


def quiet(line: str, *, live: bool = False) -> None:
    """The default ``Progress``: a library call reports nothing."""


@dataclass(frozen=True)
class Choice:
    """A value ``up`` chose for this project because the default (or what an earlier ``up`` chose) is held
    by another project or server: ``setting`` ("db.port", "container", "volume") is ``value``, not ``held``."""

    setting: str
    value: Any
    held: Any
    holder: str  # "pid 123 (postgres)", "the toolkit project at /src/other", ...

    def line(self) -> str:
        what = self.setting.removeprefix("db.")
        return f"{what} {self.held} is held by {self.holder}; this project uses {what} {self.value}"

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "value": self.value, "instead_of": self.held, "held_by": self.holder,
                "line": self.line()}


@dataclass
class EngineStatus:
    engine: str
    running: bool
    detail: str = ""  # one redacted line: pid, container id, data dir ...
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Admin:
    """A role that may create databases for tests, owned by ``owner`` (the application role), from the host."""

    url: PgUrl  # connects to a database where it may stay connected (not the application's)
    owner: str  # the role new databases are given to (OWNER)
    vector_template: str | None = None  # a database with the extension to clone, when url's role may not create it


@runtime_checkable
class Engine(Protocol):
    name: str

    def __init__(self, settings: Settings) -> None: ...

    def up(self, *, progress: Progress = quiet) -> Endpoint:
        """Start (or find running) the server, bootstrap role/database/extension, wait until ready."""

    def endpoint(self) -> Endpoint:
        """Where this engine's server answers (or will, once up), from the settings alone: no I/O."""

    def choose_free(self) -> list[Choice]:
        """For each setting nobody gave (``Settings.may_choose``) that another project or server holds
        (a port, a Docker name): this project's own value. Changes nothing; ``up`` applies them."""

    def down(self, *, purge: bool = False) -> None:
        """Stop the server; with ``purge`` also delete its data. Idempotent."""

    def status(self) -> EngineStatus: ...

    def logs(self, tail: int = 100) -> str:
        """The last ``tail`` lines of the server log (redacted by the caller)."""

    def psql_argv(self, url: str) -> list[str]:
        """argv that opens psql against the server (a local psql binary, or ``docker exec``)."""

    def tool(self, name: str) -> str:
        """The local path of a Postgres client program (``pg_dump``, ``pg_restore``) of a version that fits
        this engine's server, which must be up; EngineUnavailableError naming the versions when none fits."""

    def admin(self) -> Admin:
        """A role (and what it needs) that creates databases for tests, owned by the application role, with
        the ``vector`` extension: for the pytest plugin. Needs the server up; idempotent, safe to call from
        several processes at once."""
