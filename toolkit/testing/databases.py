"""A fresh database for every test: cloned from the run's template, prepared ahead and dropped behind the
tests on threads of their own, so a test waits for neither when it takes longer than a clone
(pytest-postgresql clones and drops in the test's own time).

Why the threads are as they are (bench/fixtures.py measures it): a CREATE DATABASE mostly copies the template
through shared buffers (CPU), a DROP DATABASE mostly waits for the checkpoint it forces. Two connections
create and a third drops, so those overlap; at the end every thread drops what is left at once, and
concurrent drops share their checkpoints.

Names: ``tk_<run>_tpl`` is a run's template, ``tk_<run>_<worker>_<n>`` a test's database. ``<run>`` is shared
by the pytest-xdist workers of one run and random for each run, so names collide neither between workers
nor between runs of different checkouts on one server.

Who removes what, when nothing may be trusted to end cleanly (CI kills jobs): every connection of a run
holds a shared advisory lock on the run's key (``RUN_LOCK``, hashtext(run)) for as long as it lives. The
process that leaves last (its try for the exclusive lock succeeds) drops the template, and what a crashed
xdist worker of the run left. A run killed outright leaves its databases behind: the next run that makes a
template drops those of every run whose key nobody holds (their template's comment, set as soon as it is
created, names the database its locks were taken in, so a run that takes its locks elsewhere is never taken
for dead), except databases kept with ``keep``. A template whose load fails is dropped at once.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from toolkit.engines.base import Admin
from toolkit.errors import NotReadyError, ToolkitError, error_line
from toolkit.urls import PgUrl

RUN_LOCK = 0x746B + 1  # advisory lock classid of a run's key (objid: hashtext(run))
TEMPLATE_LOCK = 0x746B + 2  # held while a run's template is made, by one of its processes
PREFIX = "tk_"
READY = "toolkit-tests template; locks in database "  # the template's comment, + the admin's database
MAKING = "toolkit-tests template being made; locks in database "  # its comment until the loads are done
KEPT = "toolkit-tests: kept"
CREATORS = 2  # connections that create test databases at once, per test process
_NAME = re.compile(r"^tk_([0-9a-f]{12})_")

# a callable that loads the template: it gets a psycopg connection as the owner, in a transaction
Load = Callable[[Any], None]


def new_run() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def worker_tag(worker: str) -> str:
    """A pytest-xdist worker id (``gw0``) as it goes into the names of its databases and archival tables."""
    return re.sub(r"[^a-z0-9]", "", worker.lower())[:16] or "main"


@dataclass(frozen=True)
class TestDatabase:
    """A database of a test's own, owned by the application role, with the ``vector`` extension."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    name: str
    pg: PgUrl  # the owner's URL

    @property
    def url(self) -> str:
        """postgresql+pg8000://..., as MemGPT reads PGVECTOR_TEST_DB_URL."""
        return self.pg.render("pg8000")

    @property
    def libpq_url(self) -> str:
        """postgresql://..., for psycopg, psql, libpq."""
        return self.pg.libpq

    def connect(self, *, register_vector: bool = True, **kwargs: Any) -> Any:
        """A psycopg connection to this database, with pgvector's types registered (numpy arrays go in as
        vectors, vectors come out as ``pgvector.Vector``) unless ``register_vector=False``."""
        import psycopg

        conn = psycopg.connect(self.libpq_url, **kwargs)
        if register_vector:
            from pgvector.psycopg import register_vector as register

            register(conn)
        return conn


def sql_file(path: Any) -> Load:
    """A ``Load`` that runs the statements of an SQL file (several per file, as psql would)."""
    from pathlib import Path

    def load(conn: Any) -> None:
        # read here, when the template is made: an unreadable or non-UTF-8 file is a load that fails (one line)
        conn.execute(Path(path).read_text())

    load.__name__ = f"sql_file({path})"
    return load


class Databases:
    """Test databases of one process of one run, on one server: ``take`` one per test, ``give_back`` after."""

    def __init__(self, admin: Admin, owner_url: PgUrl, run: str, worker: str, *, loads: Sequence[Load] = (),
                 ahead: int = 2, keep: bool = False) -> None:
        self.admin = admin
        self.owner_url = owner_url  # the owner's credentials and address; the database is replaced per test
        self.run = run
        self.worker = worker_tag(worker)
        self.template = f"{PREFIX}{run}_tpl"
        self.loads = list(loads)
        self.ahead = max(0, ahead)
        self.keep = keep
        self.kept: list[str] = []
        self._count = itertools.count(1)
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._making = 0  # creates in flight
        self._drops: deque[str] = deque()
        self._wanted = False  # a test took one: from then on the threads keep ``ahead`` ready
        self._closed = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._conn: Any = None
        self._backends: list[int] = []  # server pids of this process's connections (the threads' too)

    # --- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> Databases:
        self._conn = self._connect()
        try:
            self._ensure_template(self._conn)
        except BaseException:
            # no close() follows a failed open (the fixture never yielded): its lock on the run's key with it
            self._conn.close()
            self._conn = None
            raise
        if self.ahead:
            # creates and drops on connections of their own: a drop waits for a checkpoint, a create copies
            # the template (CPU), so they overlap; two creates at once keep up with tests faster than one
            workers = [self._make] * min(self.ahead, CREATORS) + [self._drop_behind]
            self._threads = [threading.Thread(target=self._on_connection, args=(work,), daemon=True,
                                              name=f"toolkit-test-databases-{work.__name__.strip('_')}")
                             for work in workers]
            for thread in self._threads:
                thread.start()
        return self

    def close(self) -> list[str]:
        """Drop what this process made and no test needs any more (what ``keep`` kept stays); the last process
        of the run drops the template too. Returns the names kept."""
        with self._cond:
            self._closed = True
            self._drops.extend(self._ready)  # unused: dropped with the rest, by every thread at once
            self._ready.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        conn, self._conn = self._conn, None
        if conn is None:
            return self.kept
        import psycopg

        try:
            while self._drops:  # what the threads left (one failed), or none ran
                _drop(conn, self._drops.popleft())
            conn.execute("SELECT pg_advisory_unlock_shared(%s, hashtext(%s))", (RUN_LOCK, self.run))
            _gone(conn, [pid for pid in self._backends if pid != conn.info.backend_pid])
            last = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RUN_LOCK, self.run)).fetchone()[0]
            if last:  # nobody of the run is left: the template, then what a crashed worker left
                # a crashed worker's clone may still be running on the server (its session outlives it until
                # the statement ends): the template is in use until then, and the clone is listed after it
                _drop_when_free(conn, self.template)
                for name in _unkept(conn, self.run):
                    _drop(conn, name)
        except psycopg.OperationalError:
            pass  # the server went away (stopped by hand, crashed): the tests said so; the next run sweeps
        finally:
            conn.close()
        return self.kept

    # --- per test -------------------------------------------------------------------------------------

    def take(self) -> TestDatabase:
        if not self._threads:
            with _in_one_line("prepare"):
                name = self._create(self._conn)
        else:
            with self._cond:
                self._wanted = True
                self._cond.notify_all()
                while not self._ready and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    raise self._error
                name = self._ready.popleft()
                self._cond.notify_all()
        return TestDatabase(name, replace(self.owner_url, database=name))

    def give_back(self, db: TestDatabase) -> None:
        if self.keep:
            with _in_one_line("keep"):
                _comment(self._conn, db.name, KEPT)
            self.kept.append(db.name)
            return
        if not self._threads:
            with _in_one_line("drop"):
                _drop(self._conn, db.name)
            return
        with self._cond:
            self._drops.append(db.name)
            self._cond.notify_all()

    # --- the threads that prepare and drop ----------------------------------------------------------

    def _on_connection(self, work: Callable[[Any], None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: B036 - handed to the test that waits
            self._fail(exc)
            return
        try:
            work(conn)
        except BaseException as exc:  # noqa: B036
            self._fail(exc)
        finally:
            conn.close()

    def _make(self, conn: Any) -> None:
        while True:
            with self._cond:
                while not self._closed and self._error is None and not self._short():
                    self._cond.wait()
                if self._closed:
                    break
                if self._error is not None:
                    return
                self._making += 1
            try:
                name = self._create(conn)
            finally:
                with self._cond:
                    self._making -= 1
            with self._cond:
                (self._drops if self._closed else self._ready).append(name)
                self._cond.notify_all()
        self._drop_behind(conn)  # closing: help drop what is left

    def _drop_behind(self, conn: Any) -> None:
        """Drop what the tests gave back; when closing, what is left, with the other threads: concurrent drops
        share the checkpoint each DROP DATABASE waits for."""
        while True:
            with self._cond:
                while not self._closed and self._error is None and not self._drops:
                    self._cond.wait()
                if self._error is not None or not self._drops:
                    return
                name = self._drops.popleft()
            _drop(conn, name)

    def _short(self) -> bool:
        return self._wanted and len(self._ready) + self._making < self.ahead

    def _fail(self, exc: BaseException) -> None:
        exc = _one_line_error(exc, "prepare")
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    # --- SQL ------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        from toolkit.testing.server import connect_admin

        conn = connect_admin(self.admin)
        conn.execute("SELECT pg_advisory_lock_shared(%s, hashtext(%s))", (RUN_LOCK, self.run))
        self._backends.append(conn.info.backend_pid)
        return conn

    def _create(self, conn: Any) -> str:
        name = f"{PREFIX}{self.run}_{self.worker}_{next(self._count)}"
        conn.execute(_sql("CREATE DATABASE {} TEMPLATE {} OWNER {}", name, self.template, self.admin.owner))
        return name

    def _ensure_template(self, conn: Any) -> None:
        """The run's template, made by the first of its processes (the others wait for it): the extension,
        then the loads as the owner. One left half-made by a killed process is made again."""
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (TEMPLATE_LOCK, self.run))
        try:
            comment = _comments(conn, [self.template]).get(self.template, "missing")
            if comment is not None and comment.startswith(READY):
                return
            if comment != "missing":
                _drop(conn, self.template)
            self._sweep(conn)
            base = self.admin.vector_template or "template1"
            try:
                conn.execute(_sql("CREATE DATABASE {} TEMPLATE {} OWNER {}", self.template, base, self.admin.owner))
            except Exception as exc:
                raise _refused(exc, self.admin, "create databases") from None
            # named at once: if this process is killed while loading, a later run can tell the run is gone
            _comment(conn, self.template, MAKING + self.admin.url.database)
            try:
                self._load()
            except BaseException:
                try:
                    _drop(conn, self.template)  # a failed load leaves nothing behind (a fixed load is tried again)
                except Exception:  # noqa: S110 - the server is gone: the load's error says more; a later run sweeps
                    pass
                raise
            _comment(conn, self.template, READY + self.admin.url.database)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (TEMPLATE_LOCK, self.run))

    def _load(self) -> None:
        import psycopg

        admin = replace(self.admin.url, database=self.template)
        with psycopg.connect(admin.libpq, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except Exception as exc:
                raise _refused(exc, self.admin, "create the vector extension") from None
        if not self.loads:
            return
        with psycopg.connect(replace(self.owner_url, database=self.template).libpq) as conn:
            for load in self.loads:
                try:
                    load(conn)
                except Exception as exc:
                    raise LoadError(f"loading the test template failed in {getattr(load, '__name__', load)}: "
                                    f"{error_line(exc)}", hint="fix the SQL file or the toolkit_load callable") from exc
            conn.commit()

    def _sweep(self, conn: Any) -> None:
        """Drop the databases of runs nobody runs any more (killed before they could clean up)."""
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (PREFIX,)).fetchall()
        runs = {m.group(1) for (name,) in rows if (m := _NAME.match(name))} - {self.run}
        comments = _comments(conn, [f"{PREFIX}{run}_tpl" for run in runs])
        mine = (READY + self.admin.url.database, MAKING + self.admin.url.database)
        for run in sorted(runs):
            template = f"{PREFIX}{run}_tpl"
            comment = comments.get(template)
            if comment is not None and comment not in mine:
                continue  # a run that takes its locks in another database: not ours to judge
            if comment is None and _held_anywhere(conn, run):
                continue  # no template, or one just created: alive if any of its processes holds its key anywhere
            free = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RUN_LOCK, run)).fetchone()[0]
            if not free:
                continue
            try:
                for name in _unkept(conn, run):
                    _drop(conn, name)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (RUN_LOCK, run))


class LoadError(ToolkitError):
    """A load (an SQL file, a toolkit_load callable) failed on the template."""


def _held_anywhere(conn: Any, run: str) -> bool:
    """A process of ``run`` holds its key, in whichever database it took it (pg_locks shows every database)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                       "AND objid = hashtext(%s)::oid AND objsubid = 2)", (RUN_LOCK, run)).fetchone()
    return bool(row[0])


def _unkept(conn: Any, run: str) -> list[str]:
    """``run``'s databases, its template included, but those ``keep`` kept."""
    rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                        "WHERE starts_with(datname, %s)", (f"{PREFIX}{run}_",)).fetchall()
    return [name for name, comment in rows if comment != KEPT]


def _comments(conn: Any, names: Iterable[str]) -> dict[str, str | None]:
    rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                        "WHERE datname = ANY(%s)", (list(names),)).fetchall()
    return {row[0]: row[1] for row in rows}


def _drop(conn: Any, name: str) -> None:
    conn.execute(_sql("DROP DATABASE IF EXISTS {} WITH (FORCE)", name))


def _gone(conn: Any, pids: list[int], wait: float = 5.0) -> None:
    """Wait until the server sessions ``pids`` have ended: a closed connection's session ends after the client
    returns, and until it has, it still holds its advisory locks (the last process would not know it is last)."""
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone():
            return
        time.sleep(0.01)


def _drop_when_free(conn: Any, name: str, wait: float = 10.0) -> None:
    """``_drop``, waiting up to ``wait`` seconds while another session's statement (a clone) uses it."""
    import psycopg

    deadline = time.monotonic() + wait
    while True:
        try:
            _drop(conn, name)
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _comment(conn: Any, name: str, text: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text)))


def _sql(template: str, *names: str) -> Any:
    """``template`` with each {} an identifier, quoted by psycopg."""
    from psycopg import sql

    return sql.SQL(template).format(*(sql.Identifier(n) for n in names))


def _one_line_error(exc: BaseException, what: str) -> ToolkitError:
    """``exc`` (of SQL on a test database: the server gone mid-run, most often) as a toolkit error, which the
    plugin shows in one line, not as a traceback."""
    if isinstance(exc, ToolkitError):
        return exc
    sqlstate = _sqlstate(exc)
    if sqlstate == "55006":  # object_in_use: a session is connected to the template, and no clone can be made
        return NotReadyError(f"cannot clone the test template: {error_line(exc)}",
                             hint="a session stays connected to it: a toolkit_load that opened a connection of its "
                                  "own must close it before it returns")
    # a server error says it in its first line; a connection's failure, in its last (libpq's cause)
    return NotReadyError(f"cannot {what} a test database: {error_line(exc, last=sqlstate is None)}",
                         hint="check the server with `toolkit status` and `toolkit logs`")


@contextlib.contextmanager
def _in_one_line(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise _one_line_error(exc, what) from None


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "diag", None), "sqlstate", None)


def _refused(exc: Exception, admin: Admin, what: str) -> ToolkitError:
    if _sqlstate(exc) == "42501":  # insufficient_privilege
        return NotReadyError(f"role {admin.url.user!r} may not {what} on the server at {admin.url.host}:{admin.url.port}",
                             hint="test databases need a role with CREATEDB (and a superuser, or pgvector installed "
                                  "in template1, for the extension); use such a URL, or the embedded engine")
    return NotReadyError(f"cannot {what} for tests: {error_line(exc, last=True)}",
                         hint="check the server with `toolkit status` and `toolkit logs`")
