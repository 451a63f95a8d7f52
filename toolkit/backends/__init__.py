"""Archival storage backends (room: backends/): one module each, registered here.

Each module owns everything about its backend (the ``Backend`` Protocol in ``base.py``): its store class
behind ``ArchivalStore``, its SPEC scheme, MemGPT's words for it, its default location, the server it
needs, its formats. Adding a backend is one module and one line in ``BACKENDS``; mypy checks each module
against the Protocol. The modules import their clients (chromadb, lancedb, psycopg) only when a store
is opened, and this package imports the modules only when the registry is first asked for.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from typing import Any

from toolkit.backends.base import (
    DEFAULT_TABLE,
    ArchivalStore,
    Backend,
    Filters,
    NotConfigured,
    Passage,
    Prompt,
    Spec,
    StoreLocation,
)
from toolkit.errors import UsageError

BACKENDS: dict[str, Backend]  # built on first use (__getattr__): `toolkit --help` imports no backend module
MEMGPT_DEFAULT = "local"  # MemGPT's archival storage when its config names none


@functools.cache
def _registry() -> dict[str, Backend]:
    """name -> module, typed: mypy checks each module against Backend here. The order is the order of
    `smoke --backend all` and of every list shown to people."""
    from toolkit.backends import chroma, chroma_http, lancedb, lancedb_s3, local, parquet, postgres

    return {
        "local": local,
        "postgres": postgres,
        "chroma": chroma,
        "chroma-http": chroma_http,
        "lancedb": lancedb,
        "lancedb-s3": lancedb_s3,
        "parquet": parquet,
    }


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# valid as a Postgres identifier, a Chroma collection name and a LanceDB table name alike
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{1,61}[A-Za-z0-9]$")

__all__ = ["BACKENDS", "DEFAULT_TABLE", "MEMGPT_DEFAULT", "ArchivalStore", "Backend", "Filters", "NotConfigured",
           "Passage", "Prompt", "Spec", "StoreLocation", "backend", "by_scheme", "by_word",
           "memgpt_backends", "memgpt_types", "open_store"]


def backend(name: str) -> Backend:
    """The module of backend ``name``; an unknown name raises UsageError listing the known ones."""
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}", hint=f"choose one of {', '.join(registry)}") from None


def by_scheme(scheme: str) -> Backend | None:
    """The backend whose SPECs start ``scheme://`` (lower case)."""
    return next((b for b in _registry().values() if any(fnmatch.fnmatchcase(scheme, s) for s in b.SCHEMES)), None)


def by_word(word: str) -> Backend | None:
    """The backend whose bare SPEC is ``word`` (``chroma+http``)."""
    return next((b for b in _registry().values() if b.WORD == word), None)


def memgpt_types() -> list[str]:
    """MemGPT's archival storage types, in registry order: what `configure` offers (an archive has none)."""
    return list(dict.fromkeys(b.MEMGPT_TYPE for b in _registry().values() if b.MEMGPT_TYPE is not None))


def memgpt_backends() -> list[str]:
    """The backends MemGPT can be configured to use (not an archive), in registry order."""
    return [name for name, b in _registry().items() if b.MEMGPT_TYPE is not None]


def open_store(location: StoreLocation) -> ArchivalStore:
    """Open (never create) one table in one backend; the table is created by the first insert.

    Opening is cheap and lazy where the client allows it; unreachable servers raise ``BackendError``
    at the first operation or here. Callers own the store: call ``close()`` (or use ``with``).
    """
    kind = backend(location.backend)
    if not _TABLE_NAME.match(location.table):
        raise UsageError(f"invalid table name {location.table!r}",
                         hint="use 3-63 letters, digits and underscores, starting with a letter")
    from toolkit import extras

    extras.require(kind.EXTRA, kind.NAME)  # one line naming the extra, not an ImportError from deep inside
    return kind.open_store(location)
