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
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from toolkit.backends.base import Passage, Spec, StoreLocation

if TYPE_CHECKING:
    from toolkit.backends.base import ArchivalStore
    from toolkit.services.background import BackgroundServer
    from toolkit.testing.databases import TestDatabase

DEFAULT_BACKENDS = ("local",)  # MemGPT's default archival storage: no extra, no server
TEST_USER = uuid.UUID("00000000-0000-4000-8000-00000000000b")
_LEASE = ".lease"


def seeded_passages(n: int, *, dim: int = 8, seed: int = 0, start: int = 0, user_id: uuid.UUID = TEST_USER,
                    agent_id: uuid.UUID | None = None, **fields: Any) -> list[Passage]:
    """``n`` passages with seeded NumPy embeddings (the same for the same seed, whatever the backend): no
    embedding model is ever asked, Chroma's default one included. Ids derive from seed and index, so the
    passages of two calls with other seeds or starts never share one; ``fields`` go to every Passage."""
    import numpy as np

    vectors = np.random.default_rng(seed).standard_normal((start + n, dim)).astype(np.float32)[start:]
    return [Passage(id=uuid.UUID(int=((seed & 0xFFFFFFFF) << 64) + start + i + 1), user_id=user_id, agent_id=agent_id,
                    text=f"passage {start + i}", embedding=vectors[i], embedding_model="seeded-numpy", **fields)
            for i in range(n)]


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

    def passages(self, n: int, *, dim: int = 8, seed: int = 0, **fields: Any) -> list[Passage]:
        """``seeded_passages``: passages with seeded NumPy embeddings, ready to insert."""
        return seeded_passages(n, dim=dim, seed=seed, **fields)

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
    needed = [(kind.EXTRA, f"the {backend} backend"),
              *([("s3", f"the {backend} backend's test server (moto)")] if kind.SERVICE == "s3" else [])]
    for extra, what in needed:
        error = extras.problem(extra, what)
        if error is not None:
            return error.one_line()
    return None


@dataclass
class HelperServer:
    """A helper server (``services/``) of the run, shared by its processes through the lease file."""

    name: str  # chroma, s3
    server: BackgroundServer
    lease: Any = field(default=None, repr=False)  # the open lease file, locked shared

    @property
    def url(self) -> str:
        return self.server.url


class Stores:
    """The test tables of one process of one run: ``take`` one per test, ``give_back`` after; ``close`` at the end
    stops the helper servers when this process is the last of the run using them."""

    def __init__(self, run: str, worker: str, run_dir: Path, *, timeout: float = 120.0) -> None:
        self.run = run
        self.worker = re.sub(r"[^a-z0-9]", "", worker.lower())[:16] or "main"
        self.run_dir = run_dir  # shared by the run's processes: the helper servers' state
        self.timeout = timeout
        self.servers: dict[str, HelperServer] = {}
        self.stopped: list[str] = []  # servers this process stopped (the last to leave)
        self._count = itertools.count(1)

    def next_table(self) -> str:
        return f"tk_{self.run}_{self.worker}_{next(self._count)}"

    def take(self, backend: str, *, directory: Path | None = None,
             database: Callable[[], TestDatabase] | None = None) -> TestStore:
        """A new empty table in ``backend``: ``directory`` holds the file backends' data (a directory of the
        test's own); ``database`` gives postgres its database (called only for postgres)."""
        from toolkit.backends import open_store

        table = self.next_table()
        db = None
        if backend == "postgres":
            assert database is not None, "postgres needs a database"
            db = database()
            spec = Spec(backend, db.libpq_url)
        elif backend in ("local", "chroma", "lancedb"):
            assert directory is not None, f"{backend} needs a directory"
            spec = Spec(backend, str(directory / backend))
        elif backend == "chroma-http":
            spec = Spec(backend, self.chroma().url.removeprefix("http://"))
        elif backend == "lancedb-s3":
            spec = self.s3_spec(table)
        else:
            from toolkit.backends import backend as kind_of

            kind_of(backend)  # unknown: the usual UsageError listing the known ones
            raise NotImplementedError(f"the archival_store fixture has no place for backend {backend!r} yet")
        location = spec.store(table)
        store = open_store(location)
        try:
            if store.exists():  # never a table someone else filled: the fixture promises an empty one
                from toolkit.errors import BackendError

                raise BackendError(f"the test table {location.describe()} already exists",
                                   hint="another run with the same run id? run the tests again")
        except BaseException:
            store.close()
            raise
        return TestStore(backend, spec, location, store, db)

    def give_back(self, test_store: TestStore) -> None:
        """Drop the test's table (and close its store), whatever the test left in it."""
        try:
            test_store.store.drop()
        finally:
            test_store.store.close()

    # --- helper servers -------------------------------------------------------------------------------

    def chroma(self) -> HelperServer:
        """The run's Chroma server (chromadb installed here, format 1), started on first need."""
        from toolkit.services.chroma_server import chroma_server

        return self._server("chroma", lambda settings, port: chroma_server(settings, host="127.0.0.1", port=port))

    def s3(self) -> HelperServer:
        """The run's moto S3 server with the bucket ``toolkit``, started on first need."""
        from toolkit.services.s3_server import create_bucket, s3_server

        started = self._server("s3", lambda settings, port: s3_server(settings, port=port))
        create_bucket(started.server)  # idempotent: each process makes sure of it
        return started

    def s3_spec(self, table: str) -> Spec:
        from toolkit.backends import lancedb_s3
        from toolkit.services.s3_server import BUCKET, REGION, TEST_KEY

        server = self.s3()
        options = {"aws_endpoint": server.url, "aws_region": REGION, "allow_http": "true",
                   "aws_access_key_id": TEST_KEY, "aws_secret_access_key": TEST_KEY}
        return Spec(lancedb_s3.NAME, f"s3://{BUCKET}/{table}", options=options)

    def _server(self, name: str, make: Callable[[Any, int | None], BackgroundServer]) -> HelperServer:
        if name in self.servers:
            return self.servers[name]
        import fcntl

        from toolkit.ports import free_port
        from toolkit.settings import resolve

        state_dir = self.run_dir / name
        state_dir.mkdir(parents=True, exist_ok=True)
        settings = resolve({"state_dir": str(state_dir)}, environ={}, project_dir=state_dir)
        # a free port as the default, movable: when a process of this run started it already, `up` finds it
        # through the pid file of the shared state dir and uses it wherever it listens
        server = make(settings, free_port())
        lease = open(state_dir / _LEASE, "a+")  # noqa: SIM115 - held open for the session
        try:
            fcntl.flock(lease, fcntl.LOCK_SH)  # waits while the last process of a moment ago stops it
            status = server.up(timeout=self.timeout, movable=True)
            server = server.on_port(urlsplit(status.url).port or server.port)
        except BaseException:
            self._leave(lease, server)
            raise
        self.servers[name] = HelperServer(name, server, lease)
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
