"""The Chroma backend (room: backends/): persistent directory or HTTP server, MemGPT's collection layout.

A collection named as the table; ids are the UUID strings, documents the text, metadatas the other
fields as MemGPT writes them (UUIDs as strings, ``created_at`` a numeric timestamp, Nones left out,
the passage's own scalar metadata merged in; non-scalar values go JSON-encoded under ``metadata_``).
Embeddings are always passed explicitly and the collection has no embedding function, so Chroma never
downloads a model. Writes are ``upsert``; search is L2, Chroma's (and MemGPT's) default.

Formats: a directory is written by one client generation and read by the same (chromadb 1.x upgrades a
0.5 directory in place; 0.5 cannot open a 1.x one). ``detect_format`` reads the generation from
``chroma.sqlite3`` (read-only), ``server_format`` from a server's version endpoint. The store keeps to
what is on disk, talks to chromadb 0.4/0.5 through a worker in an isolated environment
(``backends/compat``), and in those formats writes MemGPT's own layout: every embedding zero-padded to
4096 (``embedding_dim`` in the metadata), ``created_at`` an integer, the passage's metadata as JSON under
``metadata_`` (MemGPT's reader passes every other key to its Passage constructor). Reading cuts each
vector back to ``embedding_dim`` whatever the layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind
from toolkit.backends._util import StoreBase, batched, check_encodable, dim_mismatch, matrix, to_utc, unique_by_id, uuid_or_none
from toolkit.backends.base import MAX_EMBEDDING_DIM, Filters, Passage, Spec
from toolkit.errors import BackendError, UsageError, error_line

if TYPE_CHECKING:
    import numpy as np

    from toolkit.backends.base import Prompt, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "chroma"
TITLE = "Chroma (persistent directory)"
MEMGPT_TYPE = "chroma"
SCHEMES = ("chroma",)
WORD = "chroma"
OWN_QUERY = False
EXAMPLE = "chroma:///PATH"
SERVER = None
SERVICE = None
EXTRA = "chroma"  # pip install 'toolkit[chroma]'

FIELDS = ("user_id", "agent_id", "doc_id", "data_source", "embedding_model", "embedding_dim", "created_at")
_DIM = re.compile(r"dimension of (\d+), got (\d+)")  # chromadb 1.x: existing, new
_DIM_OLD = re.compile(r"Embedding dimension (\d+) does not match collection dimensionality (\d+)")  # 0.4/0.5: new, existing

# format -> who reads it; the toolkit reads and writes each of these
FORMATS = {"0.4": "chromadb 0.4 (MemGPT 0.2.x)", "0.5": "chromadb 0.5/0.6 (MemGPT 0.3.x)", "1": "chromadb 1.x (current)"}
ALIASES = {"memgpt": "0.5", "current": "1"}
IN_PROCESS = "1"  # the generation imported here; the others run in a worker
MEMGPT_LAYOUT = ("0.4", "0.5")


def describe(fmt: str) -> str:
    """``format 0.5 (chromadb 0.5/0.6 (MemGPT 0.3.x))``: a format and who reads it, for messages."""
    return f"format {fmt} ({FORMATS.get(fmt, 'chromadb ' + fmt)})"


# -- the backend: SPECs, MemGPT's words, checks (the Backend Protocol; chroma_http.py shares most) ------

def open_store(location: StoreLocation) -> ChromaStore:
    return ChromaStore(location)


def default_dir() -> Path:
    return Path.home() / ".memgpt" / "chroma"  # MemGPT's default archival_storage_path


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    return Spec(NAME, str(settings.chroma_dir) if rest is None else _kind.directory(rest, raw, settings))


def default_spec(settings: Settings) -> Spec:
    return parse(None, WORD, settings)


def render(spec: Spec) -> str:
    return _kind.with_format("chroma://" + spec.location, spec)


identity = _kind.path_identity


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage("chroma", spec.location, "")


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    from toolkit.backends import chroma_http

    if storage.path:  # MemGPT picks the persistent client whenever path is set
        return Spec(NAME, _kind.directory(storage.path, storage.path, settings))
    if storage.uri:
        return chroma_http.parse(storage.uri, storage.uri, settings)
    return Spec(NAME, str(default_dir()))


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    from toolkit import specs
    from toolkit.backends import chroma_http

    if uri and path:
        raise UsageError("give chroma either --path (persistent) or --uri HOST:PORT (http), not both",
                         hint="MemGPT would silently pick the persistent client")
    if uri:
        return chroma_http.from_choice(uri, "", settings)
    return specs.parse("chroma://" + (path or str(default_dir())), settings)  # ?format= as in any SPEC


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    return ask_client(uri, path, old, settings, prompt, http=False)


def ask_client(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings, prompt: Prompt,
               *, http: bool) -> tuple[str | None, str | None]:
    """MemGPT's questions: which client (``http`` its default), then where."""
    if uri is not None or path is not None:
        return uri, path
    same = old if old is not None and old.type == MEMGPT_TYPE else None
    kind = "http" if http or (same and not same.path and same.uri) else "persistent"
    kind = prompt("Select chroma backend", default=kind, choices=["persistent", "http"])
    if kind == "http":
        fallback = same.uri if same and same.uri else f"{settings.chroma_host}:{settings.chroma_port}"
        return prompt("Enter chroma host:port (e.g. localhost:8000)", default=fallback), None
    fallback = same.path if same and same.path else str(default_dir())
    return None, prompt("Enter chroma persistent path", default=fallback)


endpoint = _kind.no_endpoint


def holds_nothing(spec: Spec) -> bool:
    # opening a directory creates chroma.sqlite3 in it: without one, there is nothing to read
    return not (Path(spec.location) / "chroma.sqlite3").exists()


def guarded(location: StoreLocation) -> StoreLocation:
    """A directory of a generation other than the one imported here is written on a private copy: its own
    client must still read it as it was."""
    from dataclasses import replace

    found = detect_format(Path(location.location).expanduser())
    return replace(location, snapshot=True) if found not in (None, IN_PROCESS) else location


def describe_data(spec: Spec) -> str:
    found = detect_format(Path(spec.location))
    return describe(found) if found else "no data yet"


scratch_spec = _kind.scratch_directory(NAME)  # a directory of the test's own


_SCALARS = (str, int, float, bool)


class ChromaStore(StoreBase):
    def __init__(self, location: StoreLocation) -> None:
        self.name = location.backend
        self.http = location.backend == "chroma-http"
        self.table = location.table
        self.address = host_port(location.location) if self.http else None
        self.path = None if self.http else Path(location.location).expanduser()
        self.where = (f"Chroma server {self.address[0]}:{self.address[1]}" if self.address
                      else f"Chroma directory {self.path}")
        self._scratch: Path | None = None
        self._collection: Any = None
        self._shape: tuple[int, int] | None = None  # (stored width, embedding_dim) of the collection
        self.client: Any = None
        self.format, self.on_disk = self._choose_format(location)
        if location.snapshot and self.path is not None:
            self._take_snapshot()
        try:
            with self._guard():
                self.client = self._client(location)
        except BaseException:
            self.close()  # no caller will: the private copy goes now, not at some later run
            raise
        self.format_note = self._note(location)

    def _choose_format(self, location: StoreLocation) -> tuple[str, str | None]:
        """(the format this store reads and writes, the one found on disk or on the server)."""
        wanted = location.format
        if self.address:
            found = server_format(*self.address)
            if found is not None and found not in FORMATS:
                raise BackendError(f"{self.where} runs chromadb {found}, which the toolkit does not speak to",
                                   hint=f"the toolkit speaks to servers of {', '.join(FORMATS.values())}")
            if wanted and found and wanted != found:
                raise BackendError(f"{self.where} runs {describe(found)}, not format {wanted}",
                                   hint=f"start a server of that format with `toolkit chroma up --format {wanted}`")
            return found or IN_PROCESS, found
        assert self.path is not None
        found = detect_format(self.path)
        if found is not None and found not in FORMATS:
            raise BackendError(f"{self.where} was written by chromadb {found}, which the toolkit does not run",
                               hint=f"the toolkit reads and writes {', '.join(FORMATS.values())}; "
                                    "open it with the client that wrote it")
        if found and wanted and wanted != found:
            if location.snapshot:  # read (or checked on a copy): by the generation that wrote it, or not at all
                raise BackendError(f"{self.where} holds {FORMATS[found]} data, not format {wanted}",
                                   hint=f"drop --format (or ?format=), or use {found}")
            raise BackendError(f"{self.where} holds {FORMATS[found]} data; writing format {wanted} would make it "
                               f"unreadable to chromadb {found}",
                               hint=f"write into another directory, or use --format {found} (or auto)")
        return found or wanted or ALIASES[location.default_format], found

    def _take_snapshot(self) -> None:
        """Work on a private copy: the directory itself is never opened by a client, so stays byte-identical."""
        assert self.path is not None
        _remove_stale_snapshots()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"toolkit-chroma-{os.getpid()}-"))
        copy = self._scratch / "chroma"
        try:
            if self.on_disk is not None:
                shutil.copytree(self.path, copy, symlinks=True)
        except OSError as exc:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise BackendError(f"cannot copy {self.where} to read it untouched: {exc}",
                               hint="free space in the temporary directory (TMPDIR)") from None
        self.path = copy

    def _client(self, location: StoreLocation) -> Any:
        if self.format != IN_PROCESS:
            from toolkit.backends.compat import envs
            from toolkit.backends.compat.chroma_client import WorkerClient

            if location.clients_dir:
                clients = Path(location.clients_dir)
            else:  # a location built by hand: the settings' directory, as the CLI would use
                from toolkit.settings import resolve

                clients = resolve().clients_path
            python = envs.python(envs.CHROMA[self.format], clients)
            if self.address:
                return WorkerClient(python, host=self.address[0], port=self.address[1])
            return WorkerClient(python, path=str(self.path))
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self.address:
            return chromadb.HttpClient(host=self.address[0], port=self.address[1], settings=settings)
        assert self.path is not None
        return chromadb.PersistentClient(path=str(self.path), settings=settings)

    def _note(self, location: StoreLocation) -> str:
        client = getattr(self.client, "version", None)
        text = describe(self.format)
        if client:
            text += f" through chromadb {client} in an isolated environment"
        if location.snapshot and self.on_disk:
            text += "; on a private copy, the directory itself untouched"
        return text

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Chroma's errors (in-process or from the worker), as one line with the fix."""
        from toolkit.backends.compat.chroma_client import InvalidArgument

        try:
            yield
        except BackendError:
            raise
        except InvalidArgument as exc:
            found = _DIM_OLD.search(str(exc))
            if found:
                raise dim_mismatch(f"chroma collection {self.table}", int(found[2]), int(found[1])) from None
            raise BackendError(f"{self.where} rejected the request: {error_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - transport and storage errors have many types
            if type(exc).__name__ == "InvalidArgumentError":  # chromadb 1.x; no import of chromadb for this
                found = _DIM.search(str(exc))
                if found:
                    raise dim_mismatch(f"chroma collection {self.table}", int(found[1]), int(found[2])) from None
                raise BackendError(f"{self.where} rejected the request: {error_line(exc)}") from None
            raise self._failure(exc) from None

    def _failure(self, exc: BaseException) -> BackendError:
        if self.address:
            return BackendError(f"{self.where} is unreachable ({error_line(exc)})",
                                hint="start it with `toolkit chroma up` (or `make chroma-up`)")
        return BackendError(f"{self.where} is not usable: {error_line(exc)}",
                            hint="choose a writable directory (--path) or fix its permissions")

    def _get(self, *, create: bool) -> Any:
        """The collection, or None when it does not exist and ``create`` is false."""
        if self._collection is not None:
            return self._collection
        with self._guard():
            if create:
                self._collection = self.client.get_or_create_collection(self.table, embedding_function=None)
            else:
                try:
                    self._collection = self.client.get_collection(self.table, embedding_function=None)
                except Exception as exc:  # noqa: BLE001 - only a missing collection is an answer here
                    if _missing(exc):
                        return None
                    raise
        return self._collection

    def _stored_shape(self, collection: Any) -> tuple[int, int] | None:
        """(width of the stored vectors, their embedding_dim): MemGPT's layout pads, so the two differ."""
        if self._shape is None:
            with self._guard():
                got = collection.get(limit=1, include=["embeddings", "metadatas"])
            if len(got["ids"]):
                width = len(got["embeddings"][0])
                meta = (got["metadatas"] or [{}])[0] or {}
                self._shape = (width, int(meta.get("embedding_dim") or width))
        return self._shape

    # -- the Protocol ----------------------------------------------------------------------------

    def insert(self, passages: Iterable[Passage]) -> int:
        import numpy as np

        batch = unique_by_id(passages)
        if not batch:
            return 0
        vectors = matrix(batch)
        dim = vectors.shape[1]
        check_encodable(batch, f"chroma collection {self.table}")  # chromadb 0.5 stores it, then cannot read it
        collection = self._get(create=True)
        stored = self._stored_shape(collection)
        if stored and stored[1] != dim:
            raise dim_mismatch(f"chroma collection {self.table}", stored[1], dim)
        memgpt = self.format in MEMGPT_LAYOUT
        width = stored[0] if stored else (MAX_EMBEDDING_DIM if memgpt else dim)
        if width > dim:
            vectors = np.pad(vectors, ((0, 0), (0, width - dim)))
        with self._guard():
            size = min(1000, self.client.get_max_batch_size())
            for start in range(0, len(batch), size):
                part, rows = batch[start:start + size], vectors[start:start + size]
                ids, metadatas = [str(p.id) for p in part], [_metadata(p, memgpt=memgpt) for p in part]
                # an empty collection holds none of them: no need to ask
                keep, shrunk = _changed(collection, ids, rows, part, metadatas) if stored else (list(range(len(part))), [])
                if shrunk:  # upsert merges metadata: a key the row no longer has would stay
                    collection.delete(ids=[ids[i] for i in shrunk])
                if keep:
                    collection.upsert(ids=[ids[i] for i in keep], embeddings=rows[keep],
                                      documents=[part[i].text for i in keep], metadatas=[metadatas[i] for i in keep])
        self._shape = (width, dim)
        return len(batch)

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        collection = self._get(create=False)
        if collection is None or k <= 0:
            return []
        q = np.asarray(embedding, dtype=np.float32)
        stored = self._stored_shape(collection)
        if stored and stored[1] != q.size:
            raise dim_mismatch(f"chroma collection {self.table}", stored[1], q.size)
        if stored and stored[0] > q.size:
            q = np.pad(q, (0, stored[0] - q.size))  # as MemGPT queries its padded vectors
        with self._guard():
            found = collection.query(query_embeddings=[q], n_results=k, where=_where(filters),
                                     include=["embeddings", "documents", "metadatas"])
        return self._passages(zip(found["ids"][0], found["documents"][0], found["metadatas"][0], found["embeddings"][0],
                                  strict=True))

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
        return self._passages(rows[i] for i in ids if i in rows)

    def _passages(self, rows: Iterable[tuple[str, str, dict[str, Any] | None, Any]]) -> list[Passage]:
        """Records (id, document, metadata, embedding) as passages; one clear error for a record not in MemGPT's layout."""
        passages = []
        for row in rows:
            try:
                passages.append(_passage(*row))
            except (KeyError, ValueError, TypeError) as exc:  # a collection some other program wrote
                what = "no user_id" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
                raise BackendError(f"record {row[0]!r} in chroma collection {self.table} is not a MemGPT passage ({what})",
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
        self._collection = None
        self._shape = None
        with self._guard():
            segments = self._segment_dirs()
            try:
                self.client.delete_collection(self.table)
            except Exception as exc:  # noqa: BLE001 - only a missing collection is fine here
                if not _missing(exc):
                    raise
        for directory in segments:
            shutil.rmtree(directory, ignore_errors=True)

    def _segment_dirs(self) -> list[Path]:
        """The collection's on-disk segment directories (persistent client only).

        Chroma deletes the collection but leaves its HNSW segment directory behind (chroma-core/chroma
        issue 1309, still so in 1.5); we remove it, so a dropped table leaves nothing on disk.
        """
        import sqlite3

        if self.path is None or not (self.path / "chroma.sqlite3").is_file():
            return []
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
        if self.client is not None and self.format != IN_PROCESS:
            self.client.close()  # the worker process
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


# -- formats ----------------------------------------------------------------------------------------

def detect_format(path: Path) -> str | None:
    """The client generation that wrote the Chroma directory ``path`` ("0.4", "0.5", "1"), from its
    ``chroma.sqlite3`` opened read-only; None when there is none. Each generation adds schema
    migrations, recorded in the ``migrations`` table: 0.5.0 brought ``sysdb/00005-remove-topic``, 1.0
    ``metadb/00005-max-seq-id-int`` (sequence ids became integers, which 0.5 cannot decode). 0.5.x and
    0.6.x share one schema (0.5.23 and 0.6.3 apply the same 15 migrations), so "0.5" covers both."""
    import sqlite3

    database = path / "chroma.sqlite3"
    if not database.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            applied = {f"{d}/{name.split('.')[0]}" for d, name in db.execute("SELECT dir, filename FROM migrations")}
    except sqlite3.Error as exc:
        raise BackendError(f"{database} is not a Chroma database ({exc})",
                           hint="point at the directory MemGPT or Chroma wrote") from None
    if "metadb/00005-max-seq-id-int" in applied:
        return "1"
    if "sysdb/00005-remove-topic" in applied:
        return "0.5"
    if any(name.startswith("sysdb/") for name in applied):
        return "0.4"
    raise BackendError(f"{database} records no Chroma schema migrations",
                       hint="point at the directory MemGPT or Chroma wrote")


def server_format(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The generation of the Chroma server at host:port, from the version it states (1.x answers on
    /api/v2 only; late 0.5 releases on both), or None when nothing answers."""
    import urllib.error
    import urllib.request

    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    for path in ("/api/v2/version", "/api/v1/version"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                version = str(json.loads(response.read() or b'""'))
        except urllib.error.HTTPError:
            continue
        except (OSError, ValueError):
            return None
        if not version.startswith("0."):
            return "1"
        major_minor = ".".join(version.split(".")[:2])
        if major_minor == "0.6":  # one schema and API with 0.5, as for directories
            return "0.5"
        return major_minor if major_minor in FORMATS else version
    return None


def _missing(exc: Exception) -> bool:
    """A collection that does not exist: chromadb 1.x's NotFoundError (not imported for this), or the
    worker's NotFound (which chromadb 0.4/0.5's errors for it become)."""
    return type(exc).__name__ in ("NotFoundError", "NotFound")


def _remove_stale_snapshots() -> None:
    """Private copies left by a process that was killed (SIGTERM, kill -9) before it could remove them."""
    from toolkit import proc

    for stale in Path(tempfile.gettempdir()).glob("toolkit-chroma-*-*"):
        pid = stale.name.split("-")[2]
        try:
            ours = stale.is_dir() and stale.stat().st_uid == os.geteuid()
        except OSError:  # another process removed it first
            continue
        if pid.isdigit() and ours and not proc.pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def host_port(location: str) -> tuple[str, int]:
    """(host, port) of a server location ``host:port`` (or ``http://host:port``)."""
    text = location.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"expected HOST:PORT for a Chroma server, not {location!r}", hint="e.g. 127.0.0.1:8000")
    return host, int(port)


def _changed(collection: Any, ids: list[str], vectors: np.ndarray, part: list[Passage],
             metadatas: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Indexes of the rows not already stored exactly so, and of those among them whose stored metadata has
    keys the new one lacks (a doc_id now None, a dropped key: upsert would merge, so they are deleted first).
    Upserting an unchanged row is not a no-op: Chroma's HNSW index re-links the row's neighbours (4x the cost
    of inserting it, nmslib/hnswlib issue 303), and the links it prunes can leave rows not rewritten
    unreachable by search. A resumed migration rewrites every row it had copied; smoke upserts half its rows
    twice."""
    import numpy as np

    got = collection.get(ids=ids, include=["embeddings", "documents", "metadatas"])
    if not len(got["ids"]):
        return list(range(len(ids))), []
    stored = {i: (d, m, e) for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"],
                                                 strict=True)}
    keep, shrunk = [], []
    for n, key in enumerate(ids):
        old = stored.get(key)
        if old is None or old[0] != part[n].text or (old[1] or {}) != metadatas[n] or \
                not np.array_equal(np.asarray(old[2], dtype=np.float32), vectors[n]):
            keep.append(n)
            if old is not None and set(old[1] or {}) - set(metadatas[n]):
                shrunk.append(n)
    return keep, shrunk


def _where(filters: Filters | None) -> dict[str, Any] | None:
    conditions = [{k: str(v)} for k, v in (filters.as_dict() if filters else {}).items()]
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _metadata(p: Passage, *, memgpt: bool = False) -> dict[str, Any]:
    """As MemGPT's chroma connector: fields flattened, UUIDs as strings, no Nones. Outside MemGPT's layout
    the passage's scalar metadata is merged in (the rest JSON under ``metadata_``); in it, all of it goes
    under ``metadata_``, and ``created_at`` is an integer, as MemGPT writes it."""
    own = p.metadata or {}
    flat = {} if memgpt else {k: v for k, v in own.items()
                              if isinstance(v, _SCALARS) and k not in FIELDS and k != "metadata_"}
    rest = {k: v for k, v in own.items() if k not in flat}
    stamp = to_utc(p.created_at).timestamp()
    fields = {"user_id": str(p.user_id), "agent_id": p.agent_id and str(p.agent_id),
              "doc_id": p.doc_id and str(p.doc_id), "data_source": p.data_source,
              "embedding_model": p.embedding_model, "embedding_dim": p.embedding_dim,
              "created_at": int(stamp) if memgpt else stamp}
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
    vector = np.asarray(embedding, dtype=np.float32)
    dim = int(meta.get("embedding_dim") or vector.size)
    return Passage(id=uuid.UUID(record_id), user_id=uuid.UUID(str(meta["user_id"])), text=text or "",
                   agent_id=uuid_or_none(meta.get("agent_id")), doc_id=uuid_or_none(meta.get("doc_id")),
                   data_source=meta.get("data_source"), embedding_model=meta.get("embedding_model"),
                   embedding=vector[:dim], metadata=own,
                   created_at=datetime.fromtimestamp(float(created), timezone.utc) if created is not None
                   else datetime.now(timezone.utc))

