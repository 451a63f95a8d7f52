"""One server for every test process of a machine's checkout: started by the first that needs it, stopped by
the last to leave, and only when a test run started it (a server the user started with ``toolkit up`` stays).

Who is still using it is asked of Postgres, not of files: each test process holds a shared advisory lock
(``SERVER_LOCK``) on a connection of its own while it uses the server. Leaving, it lets go and tries the
exclusive lock: it gets it only when no process holds the shared one, so it is the last. A process that is
killed outright lets go with its connection, so a crashed worker never keeps the server up for ever. Taking
and leaving happen under a lock file of the state dir (``.tests.lock``), so a process starting the server
and one stopping it never cross.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit import state
from toolkit.engines.base import Admin
from toolkit.lock import state_lock
from toolkit.settings import Settings
from toolkit.urls import PgUrl

SERVER_LOCK = (0x746B, 0)  # advisory lock key (classid 'tk', objid 0): the processes using the server
LOCK_NAME = ".tests.lock"
LOCK_GRACE = 120.0  # seconds, beyond the server's start timeout: the holder may be starting or stopping it


@dataclass
class Server:
    """A running Postgres+pgvector that test processes share."""

    engine: str
    url: PgUrl  # the application role on its database (what .env's PGVECTOR_TEST_DB_URL holds)
    admin: Admin  # who creates the test databases
    settings: Settings
    started: bool  # this process started it
    _lease: Any = field(default=None, repr=False)  # the connection holding the shared lock

    @property
    def libpq_url(self) -> str:
        return self.url.libpq

    @property
    def pg8000_url(self) -> str:
        return self.url.render("pg8000")


def connect_admin(admin: Admin) -> Any:
    """An autocommit psycopg connection as the admin role; a clear error when it is refused."""
    import psycopg

    try:
        return psycopg.connect(admin.url.libpq, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        from toolkit.errors import NotReadyError, error_line

        raise NotReadyError(f"cannot connect to postgres at {admin.url.host}:{admin.url.port} as {admin.url.user!r}: "
                            f"{error_line(exc, last=True)}",
                            hint="check the server with `toolkit status` (and its log with `toolkit logs`)") from None


def acquire(settings: Settings) -> Server:
    """The server these settings name, running and ready (started if it is not), with this process's lease."""
    from toolkit import api

    with state_lock(settings.state_dir, "tests", timeout=settings.timeout + LOCK_GRACE, name=LOCK_NAME):
        result, engine, started = api.ensure_up(settings, export=False)
        settings = result.settings or settings
        ours = engine.name != "external"  # a server the toolkit runs, which a test run may stop
        if started and ours:
            state.mark_started_by_tests(settings.state_dir)
        lease = None
        try:
            admin = engine.admin()
            if ours:
                lease = connect_admin(admin)
                lease.execute("SELECT pg_advisory_lock_shared(%s, %s)", SERVER_LOCK)
        except BaseException:
            if lease is not None:
                lease.close()
            if started:
                _stop(settings)
            raise
    return Server(engine.name, result.url, admin, settings, started, lease)


def release(server: Server) -> bool:
    """This process is done with ``server``: stop it when this is the last process using it and a test run
    started it. True when it was stopped."""
    lease = server._lease
    if lease is None:
        return False  # external: not ours to stop
    server._lease = None
    settings = server.settings
    with state_lock(settings.state_dir, "tests", timeout=settings.timeout + LOCK_GRACE, name=LOCK_NAME):
        try:
            lease.execute("SELECT pg_advisory_unlock_shared(%s, %s)", SERVER_LOCK)
            row = lease.execute("SELECT pg_try_advisory_lock(%s, %s)", SERVER_LOCK).fetchone()
            last = bool(row and row[0])
        except Exception:  # the server is gone (stopped by hand, crashed): nothing to stop
            last = False
        finally:
            lease.close()
        if last and state.started_by_tests(settings.state_dir):
            _stop(settings)
            return True
    return False


def _stop(settings: Settings) -> None:
    from toolkit import api

    try:
        api.down(settings)
    finally:
        if not _running(settings):
            state.unmark_started_by_tests(settings.state_dir)


def _running(settings: Settings) -> bool:
    from toolkit import engines

    engine, _ = engines.select(settings)
    return engine.status().running
