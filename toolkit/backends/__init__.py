"""Archival storage backends (room: backends/): one module each behind ``ArchivalStore``, registered here.

Adding a backend is one module and one line in ``BACKENDS``. Entries are lazy ``module:Class`` strings so
importing this package never imports chromadb, lancedb or psycopg. ``migrate`` parses its SPEC strings
into a ``StoreLocation`` and calls ``open_store``; ``smoke`` builds locations from settings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from toolkit.backends.base import ArchivalStore, Filters, Passage
from toolkit.errors import UsageError

DEFAULT_TABLE = "memgpt_archival_memory_agent"

# backend name -> "module:Class"; the class is called as Class(location: StoreLocation)
BACKENDS: dict[str, str] = {
    "local": "toolkit.backends.local:LocalStore",
    "postgres": "toolkit.backends.postgres:PostgresStore",
    "chroma": "toolkit.backends.chroma:ChromaStore",  # persistent: location is a directory
    "chroma-http": "toolkit.backends.chroma:ChromaStore",  # location is host:port or http://host:port
    "lancedb": "toolkit.backends.lancedb:LanceStore",  # location is a directory
    "lancedb-s3": "toolkit.backends.lancedb:LanceStore",  # location is s3://bucket/prefix
}

# valid as a Postgres identifier, a Chroma collection name and a LanceDB table name alike
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{1,61}[A-Za-z0-9]$")

__all__ = ["BACKENDS", "DEFAULT_TABLE", "ArchivalStore", "Filters", "Passage", "StoreLocation", "open_store"]


@dataclass(frozen=True)
class StoreLocation:
    """Where one table of passages lives.

    ``backend``: a key of ``BACKENDS``. ``location``: local and lancedb a directory; postgres a URL
    (``postgresql://``, ``postgresql+pg8000://`` or ``postgresql+psycopg://``); chroma a directory;
    chroma-http ``host:port``; lancedb-s3 ``s3://bucket/prefix``. ``table``: table/collection name.
    ``options``: storage options (lancedb: ``aws_endpoint``, ``aws_region``, ``allow_http``,
    ``aws_access_key_id``, ``aws_secret_access_key``); ignored by the other backends.

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


def open_store(location: StoreLocation) -> ArchivalStore:
    """Open (never create) one table in one backend; the table is created by the first insert.

    Opening is cheap and lazy where the client allows it; unreachable servers raise ``BackendError``
    at the first operation or here. Callers own the store: call ``close()`` (or use ``with``).
    """
    if location.backend not in BACKENDS:
        raise UsageError(f"unknown backend {location.backend!r}", hint=f"choose one of {', '.join(BACKENDS)}")
    if not _TABLE_NAME.match(location.table):
        raise UsageError(f"invalid table name {location.table!r}",
                         hint="use 3-63 letters, digits and underscores, starting with a letter")
    module, _, cls = BACKENDS[location.backend].partition(":")
    store: ArchivalStore = getattr(importlib.import_module(module), cls)(location)
    return store
