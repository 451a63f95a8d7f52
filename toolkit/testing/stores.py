"""An empty archival table for every test (room: testing/): one table of one backend, opened through the toolkit's
own stores, and the helper servers (a Chroma server, moto's S3 server) a run starts for the backends that need them.
``archival.py`` is the pytest side.

Where each test's table lives: local, lancedb and chroma in a directory of the test's own; postgres in the test's
own database (``pgvector_db``); lancedb-s3 under a prefix of its own in the bucket of the run's moto server;
chroma-http in the run's Chroma server, which every test shares, so there the table's name is what keeps tests
apart. Table names are ``tk_<run>_<worker>_<n>``, as the test databases (``databases.py``): unique per test, per
pytest-xdist worker and per run.

The helper servers of a run are shared by its xdist workers: each lives in a state directory of the run (the
controller's basetemp), so ``BackgroundServer.up`` starts it once, and each process holding it keeps a shared
``flock`` on a lease file there. Leaving, a process lets go and tries the exclusive lock: it gets it only when no
process holds the shared one, so it is the last, and stops the server. A killed process lets go with its file
descriptor, so a crashed worker never keeps a server up for ever.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from toolkit.backends.base import Passage, Spec, StoreLocation
from toolkit.testing.databases import PREFIX, TestDatabase, worker_tag

if TYPE_CHECKING:
    from toolkit.backends.base import ArchivalStore
    from toolkit.services.background import BackgroundServer
    from toolkit.settings import Settings

DEFAULT_BACKENDS = ("local",)  # MemGPT's default archival storage: no extra, no server
_LEASE = ".lease"


@dataclass
class TestStore:
    """One empty table of one backend, for one test: the toolkit's own store for it (``store``: insert, query,
    count, get, scan, delete... are its methods, reachable here too), and where it is (``spec``, ``location``).
    Dropped after the test."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    backend: str  # local, postgres, chroma, chroma-http, lancedb, lancedb-s3
    spec: Spec  # the store (without the table): Spec.render() is the SPEC `toolkit migrate` takes
    location: StoreLocation  # this table of it: what toolkit.backends.open_store opens
    store: ArchivalStore
    database: TestDatabase | None = None  # postgres: the test's own database (pgvector_db)

    @property
    def table(self) -> str:
        return self.location.table

    @property
    def uri(self) -> str:
        """The store's canonical SPEC, credentials included (``postgresql://...``, ``chroma+http://h:p``)."""
        return self.spec.render()

    def passages(self, n: int, *, dim: int = 8, seed: int = 0) -> list[Passage]:
        """Passages with seeded NumPy embeddings, ready to insert (smoke's: no embedding model is asked)."""
        from toolkit.smoke import seeded_passages

        return seeded_passages(n, dim, seed)

    def open(self) -> ArchivalStore:
        """Another handle on the same table (the caller closes it): what a second client would see."""
        from toolkit.backends import open_store

        return open_store(self.location)

    def __getattr__(self, name: str) -> Any:
        # the store's own methods (insert, query, count, ...): one implementation, the toolkit's
        if name.startswith("__") or name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    def __repr__(self) -> str:
        return f"TestStore({self.backend} {self.location.describe()})"


def missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (an extra not installed, with the pip command), else None."""
    from toolkit import extras
    from toolkit.backends import backend as kind_of

    kind = kind_of(backend)
    error = extras.problem(kind.EXTRA, f"the {backend} backend")
    if error is None and kind.SERVICE is not None:
        from toolkit.services.registry import SERVICES

        error = extras.problem(SERVICES[kind.SERVICE].extra, f"the {backend} backend's test server ({kind.SERVICE})")
    return error.one_line() if error is not None else None


@dataclass
class HelperServer:
    """A helper server (``services/``) of the run, shared by its processes through the lease file."""

    name: str  # a key of services.registry.SERVICES
    server: BackgroundServer
    settings: Settings  # what points clients at it
    lease: Any = field(default=None, repr=False)  # the open lease file, locked shared


@dataclass
class _Scratch:
    """What the run offers one test's backend (``backends.base.Scratch``): only what the backend asks for is made."""

    table: str
    stores: Stores
    make_directory: Callable[[], Path]
    make_database: Callable[[], TestDatabase]
    made_database: TestDatabase | None = None

    def directory(self) -> Path:
        return self.make_directory()

    def database(self) -> str:
        self.made_database = self.make_database()
        return self.made_database.libpq_url

    def service(self, name: str) -> Settings:
        return self.stores.service(name).settings


class Stores:
    """The test tables of one process of one run: ``take`` one per test, ``give_back`` after; ``close`` at the end
    stops the helper servers when this process is the last of the run using them."""

    def __init__(self, run: str, worker: str, run_dir: Path, *, timeout: float = 120.0) -> None:
        self.run = run
        self.worker = worker_tag(worker)
        self.run_dir = run_dir  # shared by the run's processes: the helper servers' state
        self.timeout = timeout
        self.servers: dict[str, HelperServer] = {}
        self.stopped: list[str] = []  # servers this process stopped (the last to leave)
        self._count = itertools.count(1)

    def next_table(self) -> str:
        return f"{PREFIX}{self.run}_{self.worker}_{next(self._count)}"

    def take(self, backend: str, *, directory: Callable[[], Path] | None = None,
             database: Callable[[], TestDatabase] | None = None) -> TestStore:
        """A new empty table in ``backend``, where its module's ``scratch_spec`` puts it: ``directory()`` makes
        a directory of the test's own, ``database()`` a database (each called only when the backend asks)."""
        from toolkit.backends import backend as kind_of
        from toolkit.backends import open_store

        scratch = _Scratch(self.next_table(), self, directory or _refuse("a directory"), database or _refuse("a database"))
        spec = kind_of(backend).scratch_spec(scratch)
        location = spec.store(scratch.table)
        store = open_store(location)
        try:
            if store.exists():  # never a table someone else filled: the fixture promises an empty one
                from toolkit.errors import BackendError

                raise BackendError(f"the test table {location.describe()} already exists",
                                   hint="another run with the same run id? run the tests again")
        except BaseException:
            store.close()
            raise
        return TestStore(backend, spec, location, store, scratch.made_database)

    def give_back(self, test_store: TestStore) -> None:
        """Drop the test's table (and close its store), whatever the test left in it."""
        try:
            test_store.store.drop()
        finally:
            test_store.store.close()

    # --- helper servers -------------------------------------------------------------------------------

    def service(self, name: str) -> HelperServer:
        """The run's helper server ``name`` (``services.registry``), started on first need, in the format of the
        client installed here (the Chroma server: chromadb 1.x)."""
        if name in self.servers:
            return self.servers[name]
        import fcntl

        from toolkit.ports import free_port
        from toolkit.services.registry import SERVICES
        from toolkit.settings import resolve

        service = SERVICES[name]
        state_dir = self.run_dir / name
        state_dir.mkdir(parents=True, exist_ok=True)
        settings = resolve({"state_dir": str(state_dir)}, environ={}, project_dir=state_dir)
        # a free port as the default, movable: when a process of this run started it already, `up` finds it
        # through the pid file of the shared state dir and uses it wherever it listens
        server = service.server(settings, free_port())
        lease = open(state_dir / _LEASE, "a+")  # noqa: SIM115 - held open for the session
        try:
            fcntl.flock(lease, fcntl.LOCK_SH)  # waits while the last process of a moment ago stops it
            status = server.up(timeout=self.timeout, movable=True)
            server = server.on_port(urlsplit(status.url).port or server.port)
            environ = service.client_env(server)
        except BaseException:
            self._leave(lease, server)
            raise
        clients = resolve({"state_dir": str(state_dir)}, environ=environ, project_dir=state_dir)
        self.servers[name] = HelperServer(name, server, clients, lease)
        return self.servers[name]

    def close(self) -> list[str]:
        """This process is done: each helper server it used is stopped when no other process of the run
        still holds it. Returns the names of the servers it stopped."""
        for name, helper in list(self.servers.items()):
            del self.servers[name]
            if self._leave(helper.lease, helper.server):
                self.stopped.append(name)
        return self.stopped

    def _leave(self, lease: Any, server: BackgroundServer) -> bool:
        import fcntl

        try:
            fcntl.flock(lease, fcntl.LOCK_UN)
            try:
                fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process of the run still uses it: the last one stops it
            return server.down()  # ours wherever it runs (the pid file says where)
        finally:
            lease.close()  # lets go of whichever lock is held


def _refuse(what: str) -> Callable[[], Any]:
    def refuse() -> Any:
        raise RuntimeError(f"this test run offers no {what}")

    return refuse
