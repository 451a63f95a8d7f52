"""The Chroma backend (room: backends/): persistent directory or HTTP server, MemGPT's collection layout.

A collection named as the table; ids are the UUID strings, documents the text, metadatas the other
fields as MemGPT writes them (UUIDs as strings, ``created_at`` a numeric timestamp, Nones left out,
the passage's own scalar metadata merged in; non-scalar values go JSON-encoded under ``metadata_``).
Embeddings are always passed explicitly and the collection has no embedding function, so Chroma never
downloads a model. Writes are ``upsert``; search is L2, Chroma's (and MemGPT's) default.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.backends._util import StoreBase, batched, dim_mismatch, matrix, to_utc, unique_by_id, uuid_or_none
from toolkit.backends.base import Filters, Passage
from toolkit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np

    from toolkit.backends import StoreLocation

FIELDS = ("user_id", "agent_id", "doc_id", "data_source", "embedding_model", "embedding_dim", "created_at")
_DIM = re.compile(r"dimension of (\d+), got (\d+)")
_SCALARS = (str, int, float, bool)


class ChromaStore(StoreBase):
    def __init__(self, location: StoreLocation) -> None:
        self.name = location.backend
        self.http = location.backend == "chroma-http"
        self.table = location.table
        self.address = _host_port(location.location) if self.http else None
        self.path = None if self.http else Path(location.location).expanduser()
        self.where = (f"Chroma server {self.address[0]}:{self.address[1]}" if self.address
                      else f"Chroma directory {self.path}")
        with self._guard():
            self.client = self._client()
        self._collection: Any = None

    def _client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self.address:
            return chromadb.HttpClient(host=self.address[0], port=self.address[1], settings=settings)
        assert self.path is not None
        return chromadb.PersistentClient(path=str(self.path), settings=settings)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Chroma's errors, as one line with the fix."""
        from chromadb.errors import InvalidArgumentError

        try:
            yield
        except BackendError:
            raise
        except InvalidArgumentError as exc:
            found = _DIM.search(str(exc))
            if found:
                raise dim_mismatch(f"chroma collection {self.table}", int(found[1]), int(found[2])) from None
            raise BackendError(f"{self.where} rejected the request: {_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - transport and storage errors have many types
            if self.address:
                raise BackendError(f"{self.where} is unreachable ({_first_line(exc)})",
                                   hint="start it with `toolkit chroma up` (or `make chroma-up`)") from None
            raise BackendError(f"{self.where} is not usable: {_first_line(exc)}",
                               hint="choose a writable directory (--path) or fix its permissions") from None

    def _get(self, *, create: bool) -> Any:
        """The collection, or None when it does not exist and ``create`` is false."""
        if self._collection is not None:
            return self._collection
        from chromadb.errors import NotFoundError

        with self._guard():
            if create:
                self._collection = self.client.get_or_create_collection(self.table, embedding_function=None)
            else:
                try:
                    self._collection = self.client.get_collection(self.table, embedding_function=None)
                except NotFoundError:
                    return None
        return self._collection

    # -- the Protocol ----------------------------------------------------------------------------

    def insert(self, passages: Iterable[Passage]) -> int:
        batch = unique_by_id(passages)
        if not batch:
            return 0
        vectors = matrix(batch)
        collection = self._get(create=True)
        size = min(1000, self.client.get_max_batch_size())
        with self._guard():
            for start in range(0, len(batch), size):
                part = batch[start:start + size]
                collection.upsert(ids=[str(p.id) for p in part], embeddings=vectors[start:start + size],
                                  documents=[p.text for p in part], metadatas=[_metadata(p) for p in part])
        return len(batch)

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        collection = self._get(create=False)
        if collection is None or k <= 0:
            return []
        with self._guard():
            found = collection.query(query_embeddings=[np.asarray(embedding, dtype=np.float32)], n_results=k,
                                     where=_where(filters), include=["embeddings", "documents", "metadatas"])
        return [_passage(*row) for row in zip(found["ids"][0], found["documents"][0], found["metadatas"][0],
                                              found["embeddings"][0], strict=True)]

    def count(self, filters: Filters | None = None) -> int:
        collection = self._get(create=False)
        if collection is None:
            return 0
        with self._guard():
            if not filters or not filters.as_dict():
                return int(collection.count())
            return len(collection.get(where=_where(filters), include=[])["ids"])

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        collection = self._get(create=False)
        if collection is None:
            return
        with self._guard():
            ids = sorted(collection.get(include=[])["ids"])
        for part in batched(ids, batch_size):
            yield self._get_ids(collection, part)

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        collection = self._get(create=False)
        wanted = list(dict.fromkeys(str(i) for i in ids))
        return self._get_ids(collection, wanted) if collection is not None and wanted else []

    def _get_ids(self, collection: Any, ids: list[str]) -> list[Passage]:
        with self._guard():
            got = collection.get(ids=ids, include=["embeddings", "documents", "metadatas"])
        rows = {i: (i, d, m, e) for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"],
                                                      got["embeddings"], strict=True)}
        passages = []
        for i in ids:
            if i not in rows:
                continue
            try:
                passages.append(_passage(*rows[i]))
            except (KeyError, ValueError, TypeError) as exc:  # a collection some other program wrote
                what = "no user_id" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
                raise BackendError(f"record {i!r} in chroma collection {self.table} is not a MemGPT passage ({what})",
                                   hint="only collections written by MemGPT or the toolkit can be read") from None
        return passages

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        collection = self._get(create=False)
        wanted = sorted({str(i) for i in ids})
        if collection is None or not wanted:
            return 0
        with self._guard():
            present = collection.get(ids=wanted, include=[])["ids"]
            if present:
                collection.delete(ids=present)
        return len(present)

    def drop(self) -> None:
        from chromadb.errors import NotFoundError

        self._collection = None
        with self._guard():
            segments = self._segment_dirs()
            try:
                self.client.delete_collection(self.table)
            except NotFoundError:
                pass
        for directory in segments:
            shutil.rmtree(directory, ignore_errors=True)

    def _segment_dirs(self) -> list[Path]:
        """The collection's on-disk segment directories (persistent client only).

        Chroma deletes the collection but leaves its HNSW segment directory behind (chroma-core/chroma
        issue 1309, still so in 1.5); we remove it, so a dropped table leaves nothing on disk.
        """
        if self.path is None or not (self.path / "chroma.sqlite3").is_file():
            return []
        import sqlite3

        try:
            with closing(sqlite3.connect(f"file:{self.path / 'chroma.sqlite3'}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT s.id FROM segments s JOIN collections c ON s.collection = c.id "
                                  "WHERE c.name = ?", [self.table]).fetchall()
        except sqlite3.Error:
            return []
        return [self.path / str(row[0]) for row in rows if (self.path / str(row[0])).is_dir()]

    def exists(self) -> bool:
        return self._get(create=False) is not None

    def close(self) -> None:
        self._collection = None


def _host_port(location: str) -> tuple[str, int]:
    text = location.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"expected HOST:PORT for a Chroma server, not {location!r}", hint="e.g. 127.0.0.1:8000")
    return host, int(port)


def _where(filters: Filters | None) -> dict[str, Any] | None:
    conditions = [{k: str(v)} for k, v in (filters.as_dict() if filters else {}).items()]
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _metadata(p: Passage) -> dict[str, Any]:
    """As MemGPT's chroma connector: fields flattened, UUIDs as strings, no Nones, own metadata merged."""
    own = p.metadata or {}
    flat = {k: v for k, v in own.items() if isinstance(v, _SCALARS) and k not in FIELDS and k != "metadata_"}
    rest = {k: v for k, v in own.items() if k not in flat}
    fields = {"user_id": str(p.user_id), "agent_id": p.agent_id and str(p.agent_id),
              "doc_id": p.doc_id and str(p.doc_id), "data_source": p.data_source,
              "embedding_model": p.embedding_model, "embedding_dim": p.embedding_dim,
              "created_at": to_utc(p.created_at).timestamp()}
    meta = {**flat, **{k: v for k, v in fields.items() if v is not None}}
    if rest:
        meta["metadata_"] = json.dumps(rest, default=str, sort_keys=True)
    return meta


def _passage(record_id: str, text: str, meta: dict[str, Any] | None, embedding: Any) -> Passage:
    import numpy as np

    meta = dict(meta or {})
    own = {k: v for k, v in meta.items() if k not in FIELDS and k != "metadata_"}
    if "metadata_" in meta:
        own.update(json.loads(meta["metadata_"]))
    created = meta.get("created_at")
    return Passage(id=uuid.UUID(record_id), user_id=uuid.UUID(str(meta["user_id"])), text=text or "",
                   agent_id=uuid_or_none(meta.get("agent_id")), doc_id=uuid_or_none(meta.get("doc_id")),
                   data_source=meta.get("data_source"), embedding_model=meta.get("embedding_model"),
                   embedding=np.asarray(embedding, dtype=np.float32), metadata=own,
                   created_at=datetime.fromtimestamp(float(created), timezone.utc) if created is not None
                   else datetime.now(timezone.utc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
