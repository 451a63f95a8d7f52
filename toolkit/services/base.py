"""What every helper server offers (room: services/): one description per service, one lifecycle.

A service module (``chroma_server``, ``s3_server``) exports one ``Service``: its name, default port,
help texts, its own options of ``up`` (as plain data: the library never imports click), how to find its
``BackgroundServer`` and what its ``up`` does besides starting it (check the format it serves, create a
bucket, export settings into .env). ``down``, ``status`` and ``logs`` are the same for every service and
live here, so the command groups built from these descriptions (``commands/servers.py``) cannot drift
apart. This module is light on purpose: ``toolkit --help`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from toolkit.services.background import BackgroundServer, ServiceStatus
    from toolkit.settings import Settings

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Option:
    """One extra option of a service's ``up``: ``flag`` on the command line, ``dest`` the key it has in
    the options the service's ``start`` receives. ``kind``: text (a value), dir (a directory path) or
    flag (on/off, off by default)."""

    flag: str
    dest: str
    help: str
    kind: Literal["text", "dir", "flag"] = "text"
    metavar: str | None = None


@dataclass(frozen=True)
class Report:
    """A server's state and what its service adds to it: ``facts`` extend the JSON, ``notes`` the line."""

    status: ServiceStatus
    facts: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.status.running

    def as_dict(self) -> dict[str, Any]:
        return {**self.status.as_dict(), **self.facts}

    def line(self) -> str:
        return "; ".join((self.status.line(), *self.notes))


@dataclass(frozen=True)
class Stopped:
    """What ``down`` did: ``was_at`` is where the server it stopped ran (None when none was running)."""

    name: str
    stopped: bool
    was_at: str | None = None

    def line(self) -> str:
        if not self.stopped:
            return f"{self.name}: was not running"
        return f"{self.name}: stopped{f' (was at {self.was_at})' if self.was_at else ''}"


@dataclass(frozen=True)
class LogTail:
    text: str
    path: Path

    def line(self) -> str:
        return self.text or f"no log yet at {self.path}"


class Start(Protocol):
    """A service's ``up``: start its server where asked (``port`` None: its default) with its own
    ``options`` (keys: its ``Option.dest``, every one present), wait ``timeout`` seconds for it, and do
    whatever else its ``up`` does; ``progress`` receives lines about slow preparation."""

    def __call__(self, settings: Settings, *, port: int | None, timeout: float, progress: Progress | None,
                 options: Mapping[str, Any]) -> Report: ...


@dataclass(frozen=True)
class Service:
    """A helper server the toolkit runs in the background, as one description.

    ``server(settings, port)``: the server where ``port`` (None: the default) asks; its pid file leads
    ``down``/``status``/``logs`` to wherever ours runs. ``start``: the service's ``up``. ``describe``:
    what the service adds to a status (chroma: the format of what answers). ``chosen(settings)``: did
    the user choose where its server listens (``user_address``). The ``*_help`` texts are the commands'
    help; ``port_default`` says in words where the default port comes from. ``extra``: the pip extra its
    server comes in. ``client_env(server)``: the settings (as environment variables) that point clients at
    a running server of it, made ready for them (s3: the bucket created); a test run's servers need no more.
    """

    name: str
    default_port: int
    port_default: str
    help: str
    up_help: str
    down_help: str
    status_help: str
    logs_help: str
    server: Callable[[Settings, int | None], BackgroundServer]
    start: Start
    up_options: tuple[Option, ...] = ()
    describe: Callable[[BackgroundServer, ServiceStatus], Report] | None = None
    chosen: Callable[[Settings], bool] = lambda settings: False
    extra: str | None = None
    client_env: Callable[[BackgroundServer], dict[str, str]] = lambda server: {}

    def user_address(self, settings: Settings) -> bool:
        """Is the address of this service's server the user's choice (a flag, the environment, their
        .env)? Then whatever answers there may be used; at a default address only the toolkit's own
        server of this checkout is ever used (``up`` starts one on a free port when the default is taken)."""
        return self.chosen(settings)

    def up(self, settings: Settings, *, port: int | None = None, timeout: float = 60.0,
           progress: Progress | None = None, **options: Any) -> Report:
        """Start the server (idempotent) and do what this service's ``up`` does; ``options`` by ``dest``."""
        known = {option.dest: None if option.kind != "flag" else False for option in self.up_options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{self.name} up takes no option {', '.join(unknown)} (it takes {', '.join(known) or 'none'})")
        return self.start(settings, port=port, timeout=timeout, progress=progress, options={**known, **options})

    def down(self, settings: Settings) -> Stopped:
        """Stop the toolkit's server of this service in this checkout, wherever it runs."""
        server = self.server(settings, None)
        running = server.running()
        stopped = server.down()
        return Stopped(self.name, stopped, server.at(running).url if stopped and running else None)

    def status(self, settings: Settings, *, port: int | None = None) -> Report:
        """Without ``port``: the toolkit's server where it runs (else the default port, where a server not
        started here is named but not counted as running, unless the user chose that address). With it:
        that port only, naming where the toolkit's server runs when that is elsewhere."""
        server = self.server(settings, port)
        state = server.status(exact=port is not None, foreign=port is not None or self.user_address(settings))
        return self.describe(server, state) if self.describe else Report(state)

    def logs(self, settings: Settings, tail: int = 100) -> LogTail:
        """The server log's last ``tail`` lines (one log per checkout, whatever the port)."""
        server = self.server(settings, None)
        return LogTail(server.logs(tail), server.log_file)
