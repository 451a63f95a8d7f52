"""The LanceDB backend (room: backends/): a local directory or an object store URI (``s3://bucket/prefix``).

One table with the passage fields (UUIDs as strings, ``metadata_`` as JSON text, ``created_at`` a UTC
timestamp) and a fixed-size float32 ``embedding`` column of the table's dimension. Writes are upserts
on ``id``: a plain append when the handle knows every id of the batch to be new (``insert``), else
``merge_insert``, whose join reads every id of the table; search is exact L2. Storage options (endpoint, region, allow_http,
keys) come with the location, from settings.

Formats: a Lance table's data files are written in one file format for its whole life. MemGPT 0.3.x
pins lancedb 0.3, which reads through pylance 0.8: it reads the "legacy" files (format 0.1) and finds
no rows in today's default (2.x) ones. A new table is created in the format asked for, else the one
the directory's other tables share, else the default; ``detect_format`` reads a table's format from
its newest manifest, without opening it through lance.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind
from toolkit.backends._util import (
    StoreBase,
    check_encodable,
    dim_mismatch,
    directory_lock,
    matrix,
    unique_by_id,
)
from toolkit.backends.base import Filters, Passage, Spec
from toolkit.backends.columns import (
    check_dates,
    check_insertable,
    conform,
    from_passages,
    id_bytes,
    rebatched,
    schema,
    to_passages,
)
from toolkit.errors import BackendError, error_line

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from toolkit.backends.base import Prompt, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "lancedb"
TITLE = "LanceDB (directory)"
MEMGPT_TYPE = "lancedb"
SCHEMES = ("lancedb",)
WORD = "lancedb"
OWN_QUERY = False
EXAMPLE = "lancedb:///PATH"
SERVER = None
SERVICE = None
EXTRA = "lancedb"  # pip install 'toolkit[lancedb]'

# format -> who reads it; lance's own name is what create_table takes as data_storage_version
FORMATS = {"legacy": "Lance file format 0.1 (lancedb 0.3 / pylance 0.8: MemGPT 0.3.x)",
           "stable": "Lance file format 2.x (current lancedb)"}
ALIASES = {"memgpt": "legacy", "current": "stable"}
# storage options for a new table: pylance 0.8 also needs the version-numbered manifest names (with
# today's default names, u64::MAX - version, it silently reads the table's first version only)
CREATE = {"legacy": {"new_table_data_storage_version": "legacy", "new_table_enable_v2_manifest_paths": "false"},
          "stable": {"new_table_data_storage_version": "stable"}}
# lance caches the manifest of every version a handle loads (each write and checkout_latest: one more, each
# listing every fragment): unbounded, a migration of 1M rows in 1000 writes held ~900 MB; bounded, ~300 MB
CACHE_BYTES = 32 << 20
# in a manifest, field 15 (data_format) = DataStorageFormat{file_format "lance", version "X.Y"}
_DATA_FORMAT = re.compile(rb"z[\x00-\x7f]\n\x05lance\x12([\x00-\x7f])", re.S)



# -- the backend: SPECs, MemGPT's words, checks (the Backend Protocol; lancedb_s3.py shares most) -------

def open_store(location: StoreLocation) -> LanceStore:
    import zoneinfo  # noqa: F401 - pyarrow imports it to read UTC timestamps; a first import racing in threads failed

    return LanceStore(location)


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    if rest is None:  # the word: where the settings put LanceDB, a directory or s3://
        return configured(settings.lancedb_location, settings)
    return Spec(NAME, _kind.directory(rest, raw, settings))


def configured(uri: str, settings: Settings) -> Spec:
    """The store of a LanceDB URI as MemGPT and TOOLKIT_LANCEDB_URI give it: a directory or s3://, with
    ?format= as in any SPEC."""
    from toolkit import specs

    uri = uri.strip()
    return specs.parse(uri if uri.startswith("s3://") else "lancedb://" + uri, settings)


def default_spec(settings: Settings) -> Spec:
    where = settings.lancedb_location
    return Spec(NAME, where if "://" not in where else str(settings.project_dir / ".lancedb"))


def render(spec: Spec) -> str:
    return _kind.with_format("lancedb://" + spec.location, spec)


identity = _kind.path_identity


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage("lancedb", "", spec.location)


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    return configured(storage.uri or "./.lancedb", settings)


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    return configured(uri or path or "./.lancedb", settings)


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    if uri is not None or path is not None:
        return uri, path
    fallback = old.uri if old is not None and old.type == MEMGPT_TYPE and old.uri else ""
    answer = prompt("Enter LanceDB URI (directory or s3://bucket/prefix; empty: ./.lancedb)", default=fallback,
                    show_default=bool(fallback))
    return answer or None, None


endpoint = _kind.no_endpoint
holds_nothing = _kind.directory_missing
guarded = _kind.unguarded


def describe_data(spec: Spec) -> str:
    tables = {p.stem: detect_format(p) for p in sorted(Path(spec.location).glob("*.lance"))}
    return ", ".join(f"{name}: {f[0]} (Lance files {f[1]})" for name, f in tables.items() if f) or "no data yet"


scratch_spec = _kind.scratch_directory(NAME)  # a directory of the test's own


# A pattern, not substrings: lance's message carries the endpoint URL, so a bare "403" matched port 40312
# and called a dead server a credentials problem.
_CREDENTIALS = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|(?<![\w:.])403(?![\w.])")
_UNREACHABLE = ("Connection refused", "error sending request", "tcp connect error", "dns error", "timed out")
_UNWRITABLE = ("Permission denied", "Not a directory", "Read-only file system", "os error 13", "os error 20")


class LanceStore(StoreBase):
    def __init__(self, location: StoreLocation) -> None:
        self.name = location.backend
        self.uri = location.location
        self.remote = "://" in self.uri
        self.table = location.table
        self.options = {k: str(v) for k, v in location.options.items()}
        self._db: Any = None
        self._table: Any = None
        self._own: _OwnIds | None = None  # the ids this handle wrote, while the table holds no others
        self.wanted = location.format
        self.default = ALIASES[location.default_format]
        self.format = self._table_format() or self.wanted or self.default
        self.format_note = f"format {self.format} ({FORMATS[self.format]})"

    def _table_format(self) -> str | None:
        """The format of this table when it exists, else of the directory's other tables (when they agree);
        refuses an explicit format the existing table cannot take."""
        if self.remote:
            return None  # nothing to read without a client; the default or the asked-for format applies
        root = Path(self.uri).expanduser()
        own = detect_format(root / f"{self.table}.lance")
        if own is not None:
            if self.wanted and self.wanted != own[0]:
                raise BackendError(f"lancedb table {self.table} in {self.uri} is in format {own[0]} "
                                   f"(Lance files {own[1]}); it cannot be written as {self.wanted}",
                                   hint=f"use another --table, or --format {own[0]} (or auto)")
            return own[0]
        if self.wanted:
            return None
        others = {found[0] for found in map(detect_format, root.glob("*.lance")) if found}
        return others.pop() if len(others) == 1 else None

    # -- connection and errors -------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - lance reports I/O through several exception types
            text = str(exc)
            where = f"LanceDB at {self.uri}"
            # A refused connection is never a refused key: test it first.
            if self.remote and any(s in text for s in _UNREACHABLE):
                endpoint = self.options.get("aws_endpoint", "the S3 endpoint")
                raise BackendError(f"{where}: {endpoint} is unreachable",
                                   hint="start the test S3 server with `toolkit s3 up`, or set TOOLKIT_S3_ENDPOINT") \
                    from None
            if self.remote and _CREDENTIALS.search(text):
                raise BackendError(f"{where}: the object store refused the credentials",
                                   hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or TOOLKIT_S3_*) "
                                   "to keys that bucket accepts") from None
            if not self.remote and any(s in text for s in _UNWRITABLE):
                raise BackendError(f"{where}: the path is not writable ({error_line(exc)})",
                                   hint="choose a writable directory (TOOLKIT_LANCEDB_URI) or fix its permissions") \
                    from None
            raise BackendError(f"{where} failed: {error_line(exc)}") from None

    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            if not self.remote:
                self._check_writable(Path(self.uri).expanduser())
            session = getattr(lancedb, "Session", None)  # lancedb >= 0.2x
            bounded = {"session": session(index_cache_size_bytes=CACHE_BYTES, metadata_cache_size_bytes=CACHE_BYTES)} \
                if session else {}
            with self._guard():
                self._db = lancedb.connect(self.uri, storage_options=self.options or None, **bounded)
        return self._db

    def _check_writable(self, path: Path) -> None:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise BackendError(f"LanceDB path {path} is not writable: {probe} is not a directory",
                               hint="choose a writable directory (TOOLKIT_LANCEDB_URI)")

    def _open(self, *, dim: int | None = None) -> Any:
        """The table, or None when it does not exist; created with ``dim`` when given."""
        if self._table is not None:
            return self._table
        db = self._connect()
        with self._guard():
            try:
                self._table = db.open_table(self.table)
            except ValueError as exc:
                if "not found" not in str(exc) and "does not exist" not in str(exc):
                    raise
                if dim is None:
                    return None
                self._table = db.create_table(self.table, schema=schema(dim), exist_ok=True,
                                              storage_options={**self.options, **CREATE[self.format]})
        return self._table

    def _dim(self, table: Any) -> int:
        return int(table.schema.field("embedding").type.list_size)

    # -- the Protocol ----------------------------------------------------------------------------

    def insert(self, passages: Iterable[Passage]) -> int:
        batch = unique_by_id(passages)
        if not batch:
            return 0
        vectors = matrix(batch)
        check_encodable(batch, f"lancedb table {self.table}")  # pyarrow cannot encode it
        data = from_passages(batch, vectors)
        check_dates(data, f"lancedb table {self.table}")
        return self._write(data, _id_keys(b"".join(p.id.bytes for p in batch)))

    def insert_columns(self, data: pa.Table) -> int:
        """Upsert rows already in the table's layout (``columns.conform``'s), as ``insert`` would their passages."""
        import numpy as np

        if not data.num_rows:
            return 0
        check_insertable(data, f"lancedb table {self.table}")
        check_dates(data, f"lancedb table {self.table}")
        keys = _id_keys(b"".join(id_bytes(data)))
        if len(np.unique(keys)) != len(keys):  # an id twice: insert keeps the last, as an upsert of each would
            return self.insert(to_passages(data))
        return self._write(data, keys)

    def _write(self, data: pa.Table, keys: np.ndarray) -> int:
        """Write rows of unique ids (``keys``: theirs, ``_id_keys``): an append when they are all new, else an upsert."""
        dim = data.schema.field("embedding").type.list_size
        # the table is created under the lock: two creators at once commit two Overwrites, and the
        # late one fails another writer's append (or would replace its rows)
        with self._writing(), self._guard():
            table = self._latest(dim=dim)  # what another writer committed while we waited for the lock
            if self._dim(table) != dim:
                raise dim_mismatch(f"lancedb table {self.table}", self._dim(table), dim)
            if self.remote:  # no lock, so nothing to know about other writers: always the upsert
                _merge(table, data)
                return data.num_rows
            before = table.version
            own = self._own_ids(table)
            if own is not None and not own.holds_any(keys):
                table.add(data)  # every id is new: an append, whose cost does not grow with the table
            else:
                _merge(table, data)
            if own is not None and table.version == before + 1:  # our commit, right after what we checked
                own.wrote(keys, (table.version, int(table.count_rows()), self._manifest_stamp(table.version)))
            else:
                self._own = None
        return data.num_rows

    def _latest(self, *, dim: int | None = None) -> Any:
        """The table at its newest version (as ``_open``, in a local directory): what other writers committed
        since this handle last looked. A table another writer dropped and created again, to a version below
        this handle's, is opened anew: lance's checkout_latest only moves forward, so the handle would go on
        reading the dropped table's files and commit on top of them (the other writer's rows gone)."""
        table = self._open(dim=dim)
        if table is None or self.remote:
            return table
        table.checkout_latest()
        if self._manifest_stamp(table.version) is None:  # the version this handle is at is not on disk
            self._table = None
            self._own = None
            table = self._open(dim=dim)
        return table

    def _own_ids(self, table: Any) -> _OwnIds | None:
        """What this handle knows of the table's ids, called under the lock: the ids it wrote, when the
        table holds nothing else (it was empty when this handle began writing it, and it is as this
        handle's last write left it: same version, row count and manifest file); else None."""
        own = self._own
        if own is not None:
            version = table.version
            if own.state != (version, int(table.count_rows()), self._manifest_stamp(version)):
                own = self._own = None  # another writer came in between: its ids are unknown here
        if own is None and table.count_rows() == 0:
            own = self._own = _OwnIds()
        return own

    def _manifest_stamp(self, version: int) -> tuple[int, int] | None:
        """(inode, mtime) of the manifest of ``version``: a table dropped and written again by another
        writer may come back to the same version and row count, never to the same manifest file."""
        versions = Path(self.uri).expanduser() / f"{self.table}.lance" / "_versions"
        for name in (f"{2**64 - 1 - version:020d}.manifest", f"{version}.manifest"):  # v2 names, then v1
            with contextlib.suppress(OSError):
                found = (versions / name).stat()
                return (found.st_ino, found.st_mtime_ns)
        return None

    def _writing(self) -> Any:
        """One write at a time in a local directory: two concurrent merge_insert both find an id new and
        both insert it (the table then holds it twice), and an append of ids this handle knows to be new
        holds only while no other write comes in between. An object store has no lock to take."""
        if self.remote:
            return contextlib.nullcontext()
        return directory_lock(Path(self.uri).expanduser(), f"LanceDB at {self.uri}")

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        table = self._open()
        if table is None or k <= 0:
            return []
        q = np.asarray(embedding, dtype=np.float32)
        if q.size != self._dim(table):
            raise dim_mismatch(f"lancedb table {self.table}", self._dim(table), q.size)
        with self._guard():
            search = table.search(q, vector_column_name="embedding").distance_type("l2")
            where = _where(filters)
            if where:
                search = search.where(where, prefilter=True)
            return self._passages(search.limit(k).to_arrow())

    def count(self, filters: Filters | None = None) -> int:
        table = self._open()
        if table is None:
            return 0
        with self._guard():
            return int(table.count_rows(_where(filters)))

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        """The table's rows in its own order (fragment by fragment), all from the version the table is at
        when the scan starts (rows written meanwhile do not shift it), in memory that does not grow with
        the table (``_pages``)."""
        for page in self._pages(batch_size):
            yield self._passages(page)

    def scan_columns(self, batch_size: int) -> Iterator[pa.Table | list[Passage]]:
        """``scan``'s rows as tables in ``columns.schema`` (a batch in another layout, as MemGPT's may be: passages)."""
        for page in self._pages(batch_size):
            conformed = conform(page)
            yield conformed if conformed is not None else self._passages(page)

    def _passages(self, page: pa.Table) -> list[Passage]:
        """``to_passages`` of rows read (a scan's page, a query's or a get's answer); rows it cannot read (a column
        missing, a null time, metadata that is not JSON: a table another writer made) are a line naming the
        table, not a traceback."""
        import pyarrow as pa

        try:
            return to_passages(page)
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError, pa.ArrowException) as exc:
            raise BackendError(f"cannot read the lancedb table {self.table} at {self.uri}: {type(exc).__name__}: "
                               f"{error_line(exc)}",
                               hint="its rows are not in the layout the toolkit and MemGPT write; fix them with "
                               "lancedb, or drop the table") from None

    def _pages(self, batch_size: int) -> Iterator[pa.Table]:
        """The rows of the version the table is at now, ``batch_size`` at a time. Lance 2.x files are read a
        page at a time by offset: one streaming read of them reads ahead of the consumer without bound (~1 GB
        at 300k rows of 1536 dimensions), while a page costs the same wherever it starts. Legacy (0.1) files
        are streamed: there a page by offset reads every row before it, and the stream's read-ahead is
        bounded (a few batches)."""

        if self._open() is None:
            return
        with self._guard():
            view = self._connect().open_table(self.table)
            view.checkout(view.version)  # pinned: a handle of its own, so writes through this one move on
            total = int(view.count_rows())
        if self.format != "legacy":
            for start in range(0, total, batch_size):
                with self._guard():
                    yield view.search().limit(min(batch_size, total - start)).offset(start).to_arrow()
            return
        with self._guard():
            reader = view.search().limit(None).to_batches(batch_size)

        def parts() -> Iterator[pa.RecordBatch]:
            while True:
                with self._guard():
                    part = next(reader, None)
                if part is None:
                    return
                yield part

        yield from rebatched(parts(), batch_size)  # lance's batches end at fragment ends: cut to the size asked

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        table = self._open()
        wanted = list(dict.fromkeys(str(i) for i in ids))
        return self._get_ids(table, wanted) if table is not None and wanted else []

    def _get_ids(self, table: Any, ids: list[str]) -> list[Passage]:
        with self._guard():
            rows = {p.id: p for p in self._passages(table.search().where(_in(ids)).limit(None).to_arrow())}
        return [rows[uuid.UUID(i)] for i in ids if uuid.UUID(i) in rows]

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        wanted = sorted({str(i) for i in ids})
        if self._open() is None or not wanted:
            return 0
        with self._guard():
            table = self._latest()
            if table is None:  # dropped by another writer
                return 0
            found = int(table.count_rows(_in(wanted)))
            if found:
                table.delete(_in(wanted))
        return found

    def drop(self) -> None:
        db = self._connect()
        self._table = None
        self._own = None
        with self._guard():
            db.drop_table(self.table, ignore_missing=True)

    def exists(self) -> bool:
        return self._open() is not None

    def close(self) -> None:
        self._table = None
        self._db = None
        self._own = None


class _OwnIds:
    """A set of 64-bit keys of ids (``_id_keys``) in sorted numpy chunks that merge as a binary counter
    does: a million ids take 8 MB, a lookup is a binary search per chunk (a few dozen at most). Two ids
    may share a key; that only sends a batch to the upsert, never an id that is stored to the append."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        # what this handle's last write left: the table's version, row count and manifest stamp
        self.state: tuple[int, int, tuple[int, int] | None] | None = None

    def holds_any(self, keys: np.ndarray) -> bool:
        import numpy as np

        for chunk in self.chunks:
            at = np.minimum(np.searchsorted(chunk, keys), len(chunk) - 1)
            if (chunk[at] == keys).any():
                return True
        return False

    def wrote(self, keys: np.ndarray, state: tuple[int, int, tuple[int, int] | None]) -> None:
        import numpy as np

        self.chunks.append(np.unique(keys))
        while len(self.chunks) > 1 and len(self.chunks[-2]) <= 2 * len(self.chunks[-1]):
            last = self.chunks.pop()
            self.chunks[-1] = np.union1d(self.chunks[-1], last)
        self.state = state


def _id_keys(ids: bytes) -> np.ndarray:
    """A 64-bit key per id (its two halves mixed) from the ids' 16 bytes each, joined: equal ids, equal keys."""
    import numpy as np

    halves = np.frombuffer(ids, dtype=">u8").reshape(-1, 2)
    return halves[:, 0] ^ (halves[:, 1] * np.uint64(0x9E3779B97F4A7C15))


def _merge(table: Any, data: pa.Table) -> None:
    table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)


def detect_format(table_dir: Path) -> tuple[str, str] | None:
    """(``legacy`` | ``stable``, the Lance file version) of the table at ``table_dir`` (``NAME.lance``),
    read from its newest manifest; None when there is no table there."""
    versions = table_dir / "_versions"
    try:
        manifests = [m for m in versions.iterdir() if m.suffix == ".manifest" and m.stem.isdigit()]
    except OSError:
        return None
    if not manifests:
        return None
    # manifests are named by version, or (v2 paths, numbers near 2**64) by u64::MAX - version
    numbers = {int(m.stem): m for m in manifests}
    newest = numbers[min(numbers)] if max(numbers) > 2**63 else numbers[max(numbers)]
    try:
        data = newest.read_bytes()
    except OSError:
        return None
    found = list(_DATA_FORMAT.finditer(data))
    if not found:
        return ("legacy", "0.1")  # manifests before the field existed: only legacy files were written then
    size = found[-1].group(1)[0]
    version = data[found[-1].end():found[-1].end() + size].decode("ascii", "replace")
    return ("legacy" if version.startswith("0.") else "stable", version)


def _where(filters: Filters | None) -> str | None:
    conditions = [f"{k} = '{uuid.UUID(str(v))}'" for k, v in (filters.as_dict() if filters else {}).items()]
    return " AND ".join(conditions) or None


def _in(ids: list[str]) -> str:
    return "id IN (" + ", ".join(f"'{uuid.UUID(i)}'" for i in ids) + ")"
