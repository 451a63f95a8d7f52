"""The ArchivalStore Protocol and the Passage record shared by every archival backend.

The record mirrors MemGPT's archival passage (``memgpt_archival_memory_agent``), so data written through
any backend is MemGPT's data. ``smoke`` and ``migrate`` only ever speak this Protocol.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

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
        """Every passage, in batches, in a stable order (by id)."""

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        """The stored passages with these ids, in the order first asked; ids not stored are left out."""

    def delete(self, ids: Iterable[uuid.UUID]) -> int: ...

    def drop(self) -> None:
        """Remove the table/collection entirely. Idempotent."""

    def exists(self) -> bool: ...

    def close(self) -> None: ...
