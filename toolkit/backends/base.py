"""What every archival backend shares: the Passage record, the ArchivalStore and Backend Protocols, and
the two addresses of stored data (``Spec``: a store; ``StoreLocation``: one table in it).

The record mirrors MemGPT's archival passage (``memgpt_archival_memory_agent``), so data written through
any backend is MemGPT's data. ``smoke`` and ``migrate`` only ever speak ``ArchivalStore``; ``specs``,
``configure``, ``smoke`` and ``doctor`` learn everything else about a backend from its module, through
``Backend`` (the registry is ``toolkit.backends.BACKENDS``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toolkit.errors import ToolkitError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

DEFAULT_TABLE = "memgpt_archival_memory_agent"

# MemGPT's Postgres connector stores every embedding in vector(4096), zero-padded
MAX_EMBEDDING_DIM = 4096


@dataclass
class Passage:
    text: str
    embedding: Sequence[float] | np.ndarray  # backends return 1-d float32 numpy arrays
    user_id: uuid.UUID
    agent_id: uuid.UUID | None = None
    doc_id: uuid.UUID | None = None
    data_source: str | None = None
    embedding_model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        # readers of untyped data (local JSON lines, Chroma metadata) can meet a hand-edited `"text": 5`: it is
        # refused here, where each reader makes the TypeError its one-line error, not deep in a writer or a checksum
        for name, value in (("text", self.text), ("data_source", self.data_source),
                            ("embedding_model", self.embedding_model)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} is {type(value).__name__}, not a string")

    @property
    def embedding_dim(self) -> int:
        return len(self.embedding)


@dataclass(frozen=True)
class Filters:
    """Equality filters on the ownership columns; None means no condition."""

    user_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None
    doc_id: uuid.UUID | None = None

    def as_dict(self) -> dict[str, uuid.UUID]:
        return {k: v for k, v in (("user_id", self.user_id), ("agent_id", self.agent_id),
                                  ("doc_id", self.doc_id)) if v is not None}


@runtime_checkable
class ArchivalStore(Protocol):
    """One table/collection of passages in one backend. Writes are upserts by ``id``."""

    name: str  # backend name: local, postgres, chroma, chroma-http, lancedb, lancedb-s3
    # True when a second handle's get() sees what this one's insert() committed, at little cost: a
    # migration then verifies each batch while the next is copied, instead of re-reading at the end
    reads_while_writing: bool

    def insert(self, passages: Iterable[Passage]) -> int:
        """Upsert passages by id; return how many were written."""

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        """The k nearest passages to ``embedding``, nearest first."""

    def count(self, filters: Filters | None = None) -> int: ...

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        """Every passage, in batches, in a stable order (the same on every scan of an unchanged table): by
        id, except where that order would cost random reads or a sort of every id: local scans its segment
        files front to back (each in id order), LanceDB its table's own order."""

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        """The stored passages with these ids, in the order first asked; ids not stored are left out."""

    def delete(self, ids: Iterable[uuid.UUID]) -> int: ...

    def drop(self) -> None:
        """Remove the table/collection entirely. Idempotent."""

    def exists(self) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class WritesAside(Protocol):
    """A store a migration writes aside (an archive file): after ``stage``, writes go to a temporary copy that
    reads read, and only ``publish`` (called once the copy is verified) puts it in place; ``close`` without it
    removes the copy. ``stage`` refuses existing data unless ``overwrite``, before anything is written."""

    def stage(self, *, overwrite: bool) -> None: ...

    def publish(self) -> None: ...


@runtime_checkable
class ScansColumns(Protocol):
    """A store that reads its rows as Arrow tables too (``toolkit/backends/columns.py``): a migration then
    carries and checksums columns, never a Passage object per row."""

    def scan_columns(self, batch_size: int) -> Iterator[pa.Table | list[Passage]]:
        """``scan``'s batches, each a table in ``columns.schema``, or passages where its rows are not in
        that layout (``columns.conform`` said None)."""


@runtime_checkable
class InsertsColumns(Protocol):
    """A store that writes a table in ``columns.schema`` as ``insert`` writes the same rows as passages."""

    def insert_columns(self, data: pa.Table) -> int: ...


@dataclass(frozen=True)
class StoreLocation:
    """Where one table of passages lives: what ``open_store`` opens.

    ``backend``: a key of ``BACKENDS``. ``location``: in the backend's words (a directory, a libpq URL,
    ``host:port``, ``s3://bucket/prefix``). ``table``: table/collection name. ``options``: storage options
    (lancedb-s3: ``aws_endpoint``, ``aws_region``, ``allow_http``, ``aws_access_key_id``,
    ``aws_secret_access_key``); ignored by the other backends.

    Formats (chroma, lancedb; see ``backends/formats.py``): ``format`` is an explicit one in the backend's
    words (``0.5``, ``legacy``...), None for the one already on disk, else ``default_format`` (``memgpt``
    or ``current``). ``snapshot``: work on a private copy of the directory, so the original stays byte
    for byte as it was (a migration's source, a smoke check of someone else's data). ``clients_dir``:
    where isolated environments of older clients are cached (None: ``./.toolkit/clients``).
    """

    backend: str
    location: str
    table: str = DEFAULT_TABLE
    options: Mapping[str, str] = field(default_factory=dict)
    format: str | None = None
    default_format: str = "current"
    snapshot: bool = False
    clients_dir: str | None = None

    def describe(self) -> str:
        """A redacted one-liner for messages: ``postgres postgresql://u:***@h:5432/db table t``."""
        from toolkit.urls import redact

        return f"{self.backend} {redact(self.location)} table {self.table}"


@dataclass(frozen=True)
class Spec:
    """A store, as a SPEC string names it: which backend, and where (in the backend's words, as in
    ``StoreLocation``). What it means (its canonical SPEC, its identity, MemGPT's words for it) its
    backend module says; ``kind`` is that module."""

    backend: str
    location: str
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    format: str | None = None  # explicit, in the backend's words; None: on disk, else default_format
    default_format: str = field(default="current", compare=False)
    clients_dir: str | None = field(default=None, compare=False)

    @property
    def kind(self) -> Backend:
        from toolkit.backends import backend

        return backend(self.backend)

    def store(self, table: str = DEFAULT_TABLE, *, snapshot: bool = False) -> StoreLocation:
        """Where ``table`` lives in this store, for ``toolkit.backends.open_store``; ``snapshot``: read a
        private copy, leaving the directory itself untouched (a migration's source)."""
        return StoreLocation(self.backend, self.location, table, dict(self.options), format=self.format,
                             default_format=self.default_format, snapshot=snapshot, clients_dir=self.clients_dir)

    def with_format(self, text: str | None) -> Spec:
        """This SPEC writing ``text`` (``memgpt``, ``current``, ``0.5``, ``legacy``...); None keeps it."""
        from toolkit.backends import formats

        return self if text is None else replace(self, format=formats.normalize(self.backend, text))

    def __str__(self) -> str:
        """The canonical SPEC, passwords redacted: safe to print."""
        from toolkit.urls import redact

        return redact(self.render())

    def render(self) -> str:
        """The canonical SPEC with credentials: what `toolkit migrate` accepts back."""
        return self.kind.render(self)

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes two SPECs the same store (modulo the table name)."""
        return self.kind.identity(self)


class NotConfigured(ToolkitError):
    """A backend has no location to check until its server is set up (``smoke``: not running)."""


class Prompt(Protocol):
    """Asks the user one question (``configure``; the command passes click's prompt). ``choices``: the
    only answers accepted; ``show_default``: show ``default`` in brackets."""

    def __call__(self, text: str, *, default: str, choices: Sequence[str] | None = None,
                 show_default: bool = True) -> str: ...


class Scratch(Protocol):
    """What a test run offers a backend for a store of one test's own (``toolkit/testing/stores.py``): each
    backend takes what it needs (``scratch_spec``), and only that is made."""

    table: str  # the test's table name: unique per test, per pytest-xdist worker and per run

    def directory(self) -> Path:
        """A new empty directory of the test's own."""

    def database(self) -> str:
        """The libpq URL of a new database of the test's own (the vector extension in it)."""

    def service(self, name: str) -> Settings:
        """Settings that point at the run's helper server ``name`` (a key of ``services.registry.SERVICES``),
        started on first need and shared by the run's tests."""


class Backend(Protocol):
    """What one backend module provides; ``BACKENDS`` maps each name to its module and mypy checks the
    module against this (modules as protocol implementations, as pre-commit's ``all_languages.py``).
    Modules take the usual answers from ``backends/_kind.py``."""

    # constants, read only (so a module's dict or None matches): see each property's line
    @property
    def NAME(self) -> str: ...  # its key in BACKENDS: Spec.backend, StoreLocation.backend, `smoke --backend`

    @property
    def TITLE(self) -> str: ...  # for people: "Chroma server (HTTP client)"

    @property
    def MEMGPT_TYPE(self) -> str | None: ...  # MemGPT's [archival_storage] type for it; None: an archive MemGPT cannot use

    @property
    def SCHEMES(self) -> tuple[str, ...]: ...  # the SPEC schemes it parses (fnmatch patterns): chroma for chroma:///

    @property
    def WORD(self) -> str | None: ...  # the bare SPEC that names its default location (chroma+http); None: none

    @property
    def OWN_QUERY(self) -> bool: ...  # its SPEC's ?query is its own (libpq's parameters), not the toolkit's ?format=

    @property
    def EXAMPLE(self) -> str: ...  # its SPEC form, for hints: "chroma+http://HOST:PORT"

    @property
    def SERVER(self) -> str | None: ...  # the command that starts the server it needs; None: it needs none

    @property
    def SERVICE(self) -> str | None: ...  # the helper server the toolkit runs for it (services.registry); None: none

    @property
    def EXTRA(self) -> str | None: ...  # the pip extra its client comes in (toolkit/extras.py); None: the base has it

    @property
    def FORMATS(self) -> Mapping[str, str]: ...  # on-disk format -> who reads it; empty: one format, any reader's

    @property
    def ALIASES(self) -> Mapping[str, str]: ...  # memgpt / current -> a FORMATS key

    def open_store(self, location: StoreLocation) -> ArchivalStore:
        """Open (never create) one table; the first insert creates it."""

    def parse(self, rest: str | None, raw: str, settings: Settings) -> Spec:
        """The Spec of ``raw``: ``SCHEME://rest``, or (``rest`` None) its bare WORD, which names the
        location the settings give it. A bad one raises UsageError."""

    def default_spec(self, settings: Settings) -> Spec:
        """The location `smoke` checks (its WORD's, where it has one); NotConfigured when there is none."""

    def render(self, spec: Spec) -> str:
        """The canonical SPEC string, with credentials."""

    def identity(self, spec: Spec) -> tuple[str, ...]:
        """What makes two Specs the same store."""

    def to_memgpt(self, spec: Spec) -> ArchivalStorage:
        """The ``[archival_storage]`` section that makes MemGPT use ``spec``."""

    def from_memgpt(self, storage: ArchivalStorage, settings: Settings) -> Spec:
        """The store a section of its MEMGPT_TYPE selects, read as MemGPT reads it (asked of the
        backend whose NAME is the type)."""

    def from_choice(self, uri: str, path: str, settings: Settings) -> Spec:
        """The store `configure --uri/--path` selects ("" where not given: its defaults)."""

    def ask(self, uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
            prompt: Prompt) -> tuple[str | None, str | None]:
        """(uri, path): ``uri``/``path`` as given (None: not given), and what `configure` asks for when the
        ones this backend takes are missing; ``old``: the section in MemGPT's config now, for defaults."""

    def endpoint(self, location: StoreLocation) -> tuple[str, int] | None:
        """The server's host and port, for a quick "is it running?"; None: no server."""

    def holds_nothing(self, spec: Spec) -> bool:
        """Known without opening it (opening may create files) that nothing is stored there."""

    def guarded(self, location: StoreLocation) -> StoreLocation:
        """The location a check that writes should use, so the data's own client can still read it."""

    def describe_data(self, spec: Spec) -> str:
        """What the data there is, for `doctor`: its format and who reads it, or "no data yet"."""

    def scratch_spec(self, scratch: Scratch) -> Spec:
        """A store of one test's own, from what the test run offers (the ``archival_store`` fixture)."""
