"""The local backend (room: backends/): a directory per table, exact NumPy search.

Layout of ``<location>/<table>/``: ``manifest.json`` lists segments in write order; segment ``N`` is
``N.jsonl`` (one row per passage, or a ``{"id": ..., "deleted": true}`` tombstone) plus ``N.npy`` (its
float32 embeddings). Every file is written to a temporary name and renamed; the manifest is renamed
last, so a crash leaves either the old table or the new one. Later segments win per id (upsert);
many segments are compacted into one. Search is exact L2 in NumPy, as MemGPT's connectors rank.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind
from toolkit.backends._util import StoreBase, dim_mismatch, directory_lock, matrix, unique_by_id, uuid_or_none
from toolkit.backends.base import Filters, Passage, Spec
from toolkit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np

    from toolkit.backends.base import Prompt, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "local"
TITLE = "local files"
MEMGPT_TYPE = "local"
SCHEMES = ("local",)
WORD = "local"
OWN_QUERY = False
EXAMPLE = "local:///PATH"
SERVER = None
SERVICE = None
EXTRA = None  # in the base install
FORMATS: dict[str, str] = {}  # one format
ALIASES: dict[str, str] = {}
COMPACT_AFTER = 32  # segments


# -- the backend: SPECs, MemGPT's words, checks (the Backend Protocol) -------------------------------

def open_store(location: StoreLocation) -> LocalStore:
    return LocalStore(location)


def default_dir() -> Path:
    return Path.home() / ".memgpt" / "archival"  # MemGPT's default archival directory


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    return Spec(NAME, str(default_dir()) if rest is None else _kind.directory(rest, raw, settings))


def default_spec(settings: Settings) -> Spec:
    return parse(None, WORD, settings)


def render(spec: Spec) -> str:
    return "local://" + spec.location


identity = _kind.path_identity


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage("local", spec.location, "")


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    return parse(storage.path, storage.path, settings) if storage.path else parse(None, WORD, settings)


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    from toolkit import specs

    return specs.parse("local://" + path if path else WORD, settings)


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    if path is not None:
        return uri, path
    fallback = old.path if old is not None and old.type == MEMGPT_TYPE and old.path else str(default_dir())
    return uri, prompt("Enter local archival directory", default=fallback)


endpoint = _kind.no_endpoint
holds_nothing = _kind.directory_missing
guarded = _kind.unguarded
describe_data = _kind.one_format

scratch_spec = _kind.scratch_directory(NAME)  # a directory of the test's own


class _Table:
    """The live rows of a table, sorted by id string. Embeddings stay in their (memory-mapped) segment
    files until needed: a scan copies one batch at a time, a query gathers them into one matrix once."""

    def __init__(self, rows: list[dict[str, Any]], blocks: list[np.ndarray], order: np.ndarray, dim: int) -> None:
        self.rows = rows
        self.blocks = blocks  # each segment's embeddings, in file order
        self.order = order  # row i's embedding is row order[i] of the segments stacked end to end
        self.dim = dim
        self.index = {row["id"]: i for i, row in enumerate(rows)}

    @cached_property
    def vectors(self) -> np.ndarray:
        matrix = _gather(self.blocks, self.order, self.dim)
        matrix.setflags(write=False)  # passages handed out are views: nobody may change the cache through them
        return matrix

    def vectors_of(self, start: int, stop: int) -> np.ndarray:
        if "vectors" in self.__dict__:
            return self.vectors[start:stop]
        return _gather(self.blocks, self.order[start:stop], self.dim)

    @cached_property
    def norms(self) -> np.ndarray:
        """||x||^2 per row, for ||x - q||^2 = ||x||^2 - 2 x.q + ||q||^2: one matrix-vector product per query."""
        import numpy as np

        return np.einsum("ij,ij->i", self.vectors, self.vectors, dtype=np.float64)

    def mask(self, filters: Filters | None) -> np.ndarray:
        import numpy as np

        keep = np.ones(len(self.rows), dtype=bool)
        for key, value in (filters.as_dict() if filters else {}).items():
            keep &= np.fromiter((row.get(key) == str(value) for row in self.rows), dtype=bool, count=len(self.rows))
        return keep


def _gather(blocks: list[np.ndarray], order: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``order`` of the blocks stacked end to end, as one new float32 matrix: each row copied once,
    a run of consecutive rows from one block as one slice."""
    import numpy as np

    out = np.empty((len(order), dim), dtype=np.float32)
    if not len(order):
        return out
    first, last = int(order[0]), int(order[-1])
    # the common case, rows written in id order: one slice of one block
    consecutive = last - first == len(order) - 1 and bool((np.diff(order) == 1).all())
    start = 0
    for block in blocks:
        end = start + len(block)
        if consecutive and start <= first and last < end:
            out[:] = block[first - start:last - start + 1]
            return out
        chosen = np.flatnonzero((order >= start) & (order < end))
        if chosen.size:
            out[chosen] = block[order[chosen] - start]
        start = end
    return out


def _damaged(where: Path, exc: BaseException) -> BackendError:
    return BackendError(f"cannot read the local table {where}: {type(exc).__name__}: {exc}",
                        hint="drop it (toolkit migrate from a copy) or restore the directory")


def _to_row(p: Passage) -> dict[str, Any]:
    return {"id": str(p.id), "user_id": str(p.user_id), "agent_id": p.agent_id and str(p.agent_id),
            "doc_id": p.doc_id and str(p.doc_id), "text": p.text, "data_source": p.data_source,
            "embedding_model": p.embedding_model, "metadata": p.metadata or {},
            "created_at": p.created_at.isoformat()}


def _to_passage(row: dict[str, Any], vector: np.ndarray) -> Passage:
    return Passage(id=uuid.UUID(row["id"]), user_id=uuid.UUID(row["user_id"]), agent_id=uuid_or_none(row["agent_id"]),
                   doc_id=uuid_or_none(row["doc_id"]), text=row["text"], embedding=vector,
                   data_source=row["data_source"], embedding_model=row["embedding_model"],
                   metadata=row["metadata"], created_at=datetime.fromisoformat(row["created_at"]))


class LocalStore(StoreBase):
    name = "local"

    def __init__(self, location: StoreLocation) -> None:
        self.dir = Path(location.location).expanduser() / location.table
        self._cache: tuple[tuple[str | None, int], _Table] | None = None

    # -- files -----------------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads((self.dir / "manifest.json").read_text())
        except FileNotFoundError:
            # uid: a dropped and re-created table starts its versions again; (uid, version) stays unique
            return {"uid": uuid.uuid4().hex, "version": 0, "dim": None, "segments": [], "next": 1}
        except (OSError, ValueError) as exc:
            raise _damaged(self.dir, exc) from None
        if not isinstance(manifest, dict) or not {"version", "dim", "segments", "next"} <= manifest.keys():
            raise _damaged(self.dir, ValueError("manifest.json lacks version, dim, segments or next"))
        return manifest

    def _write(self, path: Path, write: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _commit(self, manifest: dict[str, Any], rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Write one segment, then the manifest naming it."""
        import numpy as np

        seg = f"{manifest['next']:06d}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write(self.dir / f"{seg}.npy", lambda h: np.save(h, vectors))
            self._write(self.dir / f"{seg}.jsonl",
                        lambda h: h.write("".join(json.dumps(r, default=str) + "\n" for r in rows).encode()))
            manifest = {**manifest, "version": manifest["version"] + 1, "next": manifest["next"] + 1,
                        "segments": [*manifest["segments"], seg]}
            self._write(self.dir / "manifest.json", lambda h: h.write(json.dumps(manifest).encode()))
        except OSError as exc:
            raise BackendError(f"local path {self.dir} is not writable: {exc.strerror or exc}",
                               hint="choose a writable directory or fix its permissions") from None
        self._cache = None

    def _load(self) -> _Table:
        manifest = self._manifest()
        key = (manifest.get("uid"), manifest["version"])
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        try:
            table = self._read(manifest)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            # a compaction by another process between reading the manifest and its segments looks the same
            # as damage: read the manifest again once before calling it damage
            if self._manifest().get("version") == manifest["version"]:
                raise _damaged(self.dir, exc) from None
            return self._load()
        self._cache = (key, table)
        return table

    def _read(self, manifest: dict[str, Any]) -> _Table:
        import numpy as np

        live: dict[str, tuple[dict[str, Any], int]] = {}  # id -> (row, index into the stacked segments)
        blocks = []
        offset = 0
        for seg in manifest["segments"]:
            block = np.load(self.dir / f"{seg}.npy", mmap_mode="r")  # read when a row is wanted
            blocks.append(block)
            with open(self.dir / f"{seg}.jsonl", encoding="utf-8") as handle:
                position = offset
                for line in handle:
                    row = json.loads(line)
                    if row.get("deleted"):
                        live.pop(row["id"], None)
                    else:
                        live[row["id"]] = (row, position)
                        position += 1
            offset += len(block)
        ids = sorted(live)
        order = np.fromiter((live[i][1] for i in ids), dtype=np.intp, count=len(ids))
        return _Table([live[i][0] for i in ids], blocks, order, manifest["dim"] or 0)

    # -- the Protocol ----------------------------------------------------------------------------

    def _writing(self) -> Any:
        """One writer at a time, across threads and processes: each write reads the manifest, adds a
        segment and renames a new manifest in, and two at once would lose one's segment. The lock is on
        the directory holding the tables (drop renames a table's own directory away)."""
        return directory_lock(self.dir.parent, f"local path {self.dir}")

    def insert(self, passages: Iterable[Passage]) -> int:
        batch = unique_by_id(passages)
        if not batch:
            return 0
        vectors = matrix(batch)
        with self._writing():
            manifest = self._manifest()
            if manifest["dim"] is not None and manifest["dim"] != vectors.shape[1]:
                raise dim_mismatch(f"local table {self.dir}", manifest["dim"], vectors.shape[1])
            manifest["dim"] = vectors.shape[1]
            self._commit(manifest, [_to_row(p) for p in batch], vectors)
            if len(manifest["segments"]) + 1 >= COMPACT_AFTER:
                self._compact()
        return len(batch)

    def _compact(self) -> None:
        table = self._load()
        manifest = self._manifest()
        old = manifest["segments"]
        self._commit({**manifest, "segments": []}, table.rows, table.vectors)
        for seg in old:
            for suffix in (".npy", ".jsonl"):
                (self.dir / f"{seg}{suffix}").unlink(missing_ok=True)

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        table = self._load()
        if not table.rows or k <= 0:
            return []
        q = np.asarray(embedding, dtype=np.float32)
        if q.shape != (table.vectors.shape[1],):
            raise dim_mismatch(f"local table {self.dir}", table.vectors.shape[1], q.size)
        distances = table.norms - 2.0 * (table.vectors @ q)
        if filters and filters.as_dict():
            candidates = np.flatnonzero(table.mask(filters))
            distances = distances[candidates]
        else:
            candidates = np.arange(len(table.rows))
        if candidates.size == 0:
            return []
        k = min(k, candidates.size)
        top = np.argpartition(distances, k - 1)[:k]
        top = top[np.argsort(distances[top], kind="stable")]
        return [_to_passage(table.rows[i], table.vectors[i]) for i in candidates[top]]

    def count(self, filters: Filters | None = None) -> int:
        table = self._load()
        return int(table.mask(filters).sum()) if filters and filters.as_dict() else len(table.rows)

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        table = self._load()
        for start in range(0, len(table.rows), batch_size):
            stop = min(start + batch_size, len(table.rows))
            vectors = table.vectors_of(start, stop)
            yield [_to_passage(table.rows[i], vectors[i - start]) for i in range(start, stop)]

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        table = self._load()
        found = [table.index[k] for k in dict.fromkeys(str(i) for i in ids) if k in table.index]
        return [_to_passage(table.rows[i], table.vectors_of(i, i + 1)[0]) for i in found]

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        import numpy as np

        wanted = {str(i) for i in ids}
        if not self.exists():
            return 0
        with self._writing():
            gone = sorted(wanted & self._load().index.keys())
            if gone:
                manifest = self._manifest()
                self._commit(manifest, [{"id": i, "deleted": True} for i in gone],
                             np.zeros((0, manifest["dim"] or 0), dtype=np.float32))
        return len(gone)

    def drop(self) -> None:
        if not self.dir.exists():  # nothing to drop: take no lock (and create no parent directory)
            return
        with self._writing():
            self._drop()

    def _drop(self) -> None:
        if not self.dir.exists():  # dropped by another writer while we waited for the lock
            return
        # rename first so a half-deleted table is never mistaken for a table
        trash = self.dir.with_name(f".{self.dir.name}.dropped.{os.getpid()}")
        try:
            os.replace(self.dir, trash)
        except OSError as exc:
            raise BackendError(f"cannot drop local table {self.dir}: {exc.strerror or exc}",
                               hint="check the directory's permissions") from None
        shutil.rmtree(trash, ignore_errors=True)
        self._cache = None

    def exists(self) -> bool:
        return (self.dir / "manifest.json").is_file()

    def close(self) -> None:
        self._cache = None
