"""Readiness: is the server really usable? Shared by every engine and the Chroma server.

A ``Probe`` runs phases in order (process → tcp → auth → query → extension → vector) and raises
``Transient`` for what waiting can fix, ``NotReadyError`` for what it cannot. ``wait_ready`` polls with
tenacity: tens of milliseconds at first, backing off, until the deadline; it fails at once when the
server process died, and every failure carries the phase, the last error and the log's tail.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from toolkit import libpq
from toolkit.errors import NotReadyError, error_line
from toolkit.urls import PgUrl, redact

LOG_TAIL_LINES = 20


class Transient(Exception):
    """Not ready yet; worth another try."""

    def __init__(self, phase: str, error: str) -> None:
        super().__init__(f"{phase}: {error}")
        self.phase = phase
        self.error = error


def _no_death() -> str | None:
    return None


def _no_log(lines: int) -> str:
    return ""


@dataclass(frozen=True)
class PgProbe:
    """The phases for Postgres, run as the role in ``url``. The extension phase is bootstrap's extension
    step, run as that role (all the external engine may do); the engines' superuser bootstrap runs when
    it fails with ``ExtensionMissing``."""

    url: PgUrl
    extension: bool = True  # create/check the vector extension and round-trip a vector
    connect_timeout: float = 3.0

    def __call__(self) -> None:
        libpq.load()  # a few ms, and fails for good (not transiently) when no libpq can be loaded
        self.tcp()
        with self.connect() as conn:
            self.queries(conn)

    def tcp(self) -> None:
        try:
            socket.create_connection((self.url.host, self.url.port), timeout=self.connect_timeout).close()
        except OSError as exc:
            raise Transient("tcp", f"{self.url.host}:{self.url.port}: {exc.strerror or exc}") from None

    def connect(self) -> libpq.Connection:
        try:
            return libpq.Connection(self.url.libpq, connect_timeout=max(1, int(self.connect_timeout)))
        except libpq.PqError as exc:
            message = error_line(exc, last=True)  # libpq puts 'connection to server ... failed:' first, the cause last
            lowered = message.lower()
            if "password authentication failed" in lowered:
                raise AuthFailed(
                    f"password authentication failed for role {self.url.user!r}",
                    hint="use the password this database was created with (TOOLKIT_PG_PASSWORD), "
                    "or start over with `toolkit down --purge`",
                ) from None
            if "does not exist" in lowered and ("role" in lowered or "database" in lowered):
                raise RoleOrDatabaseMissing("auth", message) from None
            # starting up, shutting down, refused, reset: the server is on its way
            raise Transient("auth", message) from None

    def queries(self, conn: libpq.Connection) -> None:
        try:
            if conn.scalar("SELECT 1") != "1":
                raise Transient("query", "SELECT 1 returned an unexpected row")
        except libpq.PqError as exc:
            raise query_error("query", exc) from None
        if not self.extension:
            return
        from toolkit.bootstrap import create_extension  # bootstrap's step, as this role

        create_extension(conn, self.url)
        try:
            value = conn.scalar("SELECT '[1,2,3]'::vector <-> '[1,2,4]'")
        except libpq.PqError as exc:
            raise query_error("vector", exc) from None
        if value is None or abs(float(value) - 1.0) > 1e-6:
            raise NotReadyError(f"vector round trip returned {value!r}, expected 1.0")


# SQLSTATE classes waiting can fix: connection exception, insufficient resources, operator
# intervention (57P03 "the database system is starting up"), system error
_TRANSIENT_CLASSES = ("08", "53", "57", "58")


def query_error(phase: str, exc: libpq.PqError) -> Transient | NotReadyError:
    if exc.sqlstate is None or exc.sqlstate[:2] in _TRANSIENT_CLASSES:  # None: the connection dropped
        return Transient(phase, error_line(exc, last=True))
    return NotReadyError(f"{phase} check failed: {error_line(exc, last=True)} (SQLSTATE {exc.sqlstate})",
                         hint="see the server log (`toolkit logs`)")


class RoleOrDatabaseMissing(NotReadyError):
    """The role or database in the URL does not exist (yet): a bootstrap can fix it."""

    def __init__(self, phase: str, error: str) -> None:
        super().__init__(error, hint="run `toolkit up` to create them, or check the user/database settings")
        self.phase = phase


class AuthFailed(NotReadyError):
    """Password authentication failed: a wrong password, or (under scram) a role that does not exist."""


class ExtensionMissing(NotReadyError):
    def __init__(self, phase: str, error: str) -> None:
        super().__init__(error, hint="run `CREATE EXTENSION vector;` in that database as a superuser")
        self.phase = phase



def wait_ready(
    probe: Callable[[], None],
    *,
    timeout: float,
    what: str = "postgres",
    alive: Callable[[], str | None] = _no_death,
    log_tail: Callable[[int], str] = _no_log,
    secrets: tuple[str, ...] = (),
) -> None:
    """Run ``probe`` until it passes. ``alive()`` returns None while the server lives, else why it died."""

    def attempt() -> None:
        death = alive()
        if death is not None:
            raise NotReadyError(f"{what} stopped while starting: {death}",
                                hint="see the log above; fix the cause and run `toolkit up` again")
        probe()

    try:
        try:
            attempt()  # the common case (already up) needs no retry machinery: skip importing it
            return
        except Transient:
            pass
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

        for retry in Retrying(
            stop=stop_after_delay(timeout),
            # 10 ms, 15, 22, ... capped at 50 ms: a failed attempt costs a millisecond or two (a refused
            # TCP connect, a libpq handshake), while a longer cap makes `up` wait on average half of it
            # after the server is ready (a container's first start takes seconds of polling)
            wait=wait_exponential(multiplier=0.01, exp_base=1.5, min=0.01, max=0.05),
            retry=retry_if_exception_type(Transient),
            reraise=True,
        ):
            with retry:
                attempt()
    except Transient as exc:
        tail = _tail(log_tail, secrets)
        raise NotReadyError(
            f"{what} not ready after {timeout:g}s: phase {exc.phase} failed: {redact(exc.error, secrets)}",
            hint=("see the log above; " if tail else "is it running and reachable? ")
            + "raise --timeout if the machine is just slow",
            detail=tail,
        ) from None
    except NotReadyError as exc:
        if exc.detail is None:
            exc.detail = _tail(log_tail, secrets)
        raise


def _tail(log_tail: Callable[[int], str], secrets: tuple[str, ...]) -> str | None:
    try:
        text = log_tail(LOG_TAIL_LINES).rstrip()
    except OSError:
        return None
    return f"--- last {LOG_TAIL_LINES} lines of the server log ---\n{redact(text, secrets)}" if text else None
