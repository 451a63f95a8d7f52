"""The Parquet archive (room: backends/): one portable file of passages, read by pyarrow, pandas and DuckDB alone.

``parquet:///path/archive.parquet`` is a `toolkit migrate` SPEC like any store's, but an archive, not a store MemGPT
can use (``MEMGPT_TYPE`` None: `configure` does not offer it, `migrate --switch` refuses it). The file holds one
table, named in its key-value metadata with a format marker and version; its columns (``schema``): the passage
record with the embedding unpadded as ``fixed_size_list<float32>[dim]``, ``embedding_dim``, metadata as JSON and
``created_at`` as a UTC timestamp. Rows are in id order.

A migration writes it aside (``stage``/``publish``): batches stream into a hidden temporary file in the same
directory, one row group each, and the final name appears only once every row was read back and verified; an
existing file is refused unless the migration may overwrite it. So a killed migration never leaves half an archive
under the final name, and a re-run writes the archive afresh. The other operations (upsert, delete: used by smoke
and the conformance tests) rewrite the file in one streamed pass, renamed over the old one; reads stream row groups.
Memory stays bounded by a batch throughout.

Reading takes files written elsewhere too (pandas ``to_parquet``: embeddings as a variable list of floats,
timestamps in ns): the columns ``id``, ``user_id``, ``text`` and ``embedding`` are required, the others optional.
What does not fit (a missing column, a column of another type, an embedding of another length than its row's
``embedding_dim`` or than the other rows', an id twice, a truncated file) is refused in one line naming it; files the toolkit
did not write are only ever read.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import heapq
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import TYPE_CHECKING, Any, NoReturn

from toolkit.backends import _kind, columns
from toolkit.backends._util import (
    StoreBase,
    check_encodable,
    dim_mismatch,
    directory_lock,
    dumps,
    matrix,
    to_utc,
    unique_by_id,
)
from toolkit.backends.base import Filters, Passage, Spec
from toolkit.errors import BackendError, UsageError, error_line

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolkit.backends.base import Prompt, Scratch, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "parquet"
TITLE = "Parquet archive file"
MEMGPT_TYPE = None  # an archive: MemGPT cannot be configured to use it
SCHEMES = ("parquet",)
WORD = None
OWN_QUERY = False
EXAMPLE = "parquet:///PATH/ARCHIVE.parquet"
SERVER = None
SERVICE = None
EXTRA = "parquet"
FORMATS: dict[str, str] = {}  # one format
ALIASES: dict[str, str] = {}

MARKER = b"toolkit.archive"  # file key-value metadata: MARKER -> FORMAT, VERSION_KEY -> VERSION, TABLE_KEY -> table
FORMAT = b"memgpt-archival-passages"
VERSION_KEY = b"toolkit.archive_version"
VERSION = b"1"
TABLE_KEY = b"toolkit.table"
ROWS = 1024  # rows per internal batch: a 4096-dimensional batch is 16 MiB of embeddings
STALE = 60.0  # seconds untouched after which a temporary file no process holds is a dead writer's

FIRST_SECOND, LAST_SECOND = -62135596800, 253402300799  # 0001-01-01 and 9999-12-31T23:59:59 UTC, in Unix seconds
STRINGS = ("id", "text", "embedding_model", "user_id", "agent_id", "doc_id", "data_source", "metadata")
REQUIRED = ("id", "user_id", "text", "embedding")


# -- the backend: SPECs, MemGPT's words, checks (the Backend Protocol) -------------------------------

def open_store(location: StoreLocation) -> ParquetStore:
    return ParquetStore(location)


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    if not rest or rest.endswith("/"):
        raise UsageError(f"no file in {raw!r}", hint="use parquet:///abs/path/archive.parquet or parquet://relative.parquet")
    path = Path(rest).expanduser()
    location = str(path if path.is_absolute() else settings.project_dir / path)
    try:
        location.encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8: pyarrow opens paths as UTF-8 only
        raise UsageError(f"the path {location!r} is not valid UTF-8, which pyarrow cannot open",
                         hint="rename the file (or its directory) to a UTF-8 name") from None
    return Spec(NAME, location)


def default_spec(settings: Settings) -> Spec:
    """smoke's location: a new file in the temporary directory (its check writes, then drops the file)."""
    return Spec(NAME, str(Path(tempfile.gettempdir()) / f"toolkit-smoke-{uuid.uuid4().hex}.parquet"))


def render(spec: Spec) -> str:
    return "parquet://" + spec.location


identity = _kind.path_identity


def _not_for_memgpt(what: str) -> NoReturn:
    raise UsageError(f"MemGPT cannot use a Parquet archive{what} as its archival storage",
                     hint="restore the archive into a store first: toolkit migrate --from parquet:///PATH --to postgres")


def to_memgpt(spec: Spec) -> ArchivalStorage:
    _not_for_memgpt(f" ({spec})")


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    _not_for_memgpt("")


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    _not_for_memgpt("")


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    _not_for_memgpt("")


endpoint = _kind.no_endpoint
guarded = _kind.unguarded
describe_data = _kind.one_format


def holds_nothing(spec: Spec) -> bool:
    try:
        return _stat(Path(spec.location)) is None
    except BackendError:
        return False  # there may be one: opening it says why it cannot be reached, in one line


def scratch_spec(scratch: Scratch) -> Spec:
    return Spec(NAME, str(scratch.directory() / "archive.parquet"))


def schema(dim: int, table: str) -> pa.Schema:
    """The archive's columns, with the file's key-value metadata (format, version, table)."""
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
                      pa.field("embedding", pa.list_(pa.float32(), dim)), pa.field("embedding_dim", pa.int32()),
                      pa.field("embedding_model", pa.string()), pa.field("user_id", pa.string()),
                      pa.field("agent_id", pa.string()), pa.field("doc_id", pa.string()),
                      pa.field("data_source", pa.string()), pa.field("metadata", pa.string()),
                      pa.field("created_at", pa.timestamp("us", tz="UTC"))],
                     metadata={MARKER: FORMAT, VERSION_KEY: VERSION, TABLE_KEY: table.encode()})


def arrow_table(passages: list[Passage], table: str) -> pa.Table:
    """Passages as the archive's columns, in id order (the caller checked they share one dimension)."""
    import pyarrow as pa

    rows = sorted(passages, key=lambda p: str(p.id))
    vectors = matrix(rows)
    dim = vectors.shape[1]
    columns = {
        "id": [str(p.id) for p in rows], "text": [p.text for p in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
        "embedding_dim": pa.array([dim] * len(rows), pa.int32()),
        "embedding_model": [p.embedding_model for p in rows], "user_id": [str(p.user_id) for p in rows],
        "agent_id": [p.agent_id and str(p.agent_id) for p in rows], "doc_id": [p.doc_id and str(p.doc_id) for p in rows],
        "data_source": [p.data_source for p in rows], "metadata": [dumps(p.metadata) for p in rows],
        "created_at": pa.array([to_utc(p.created_at) for p in rows], pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=schema(dim, table))


# -- reading a file: what it is, checked before any row is used --------------------------------------

@dataclass
class _Archive:
    """An open, checked file: ``ours`` when the toolkit wrote it (then ``table`` is the one it holds)."""

    path: Path
    file: pq.ParquetFile
    ours: bool
    table: str | None
    dim: int | None  # None: a variable list column, known from the first row
    columns: list[str]  # the ones of ours present
    rows: int


def _refuse(path: Path, what: str, hint: str | None = None) -> BackendError:
    return BackendError(f"the archive {path} {what}",
                        hint=hint or "use a file that `toolkit migrate --to parquet://` wrote, or one with the columns "
                                     "id, user_id, text and embedding (a list of floats)")


def _open_archive(path: Path) -> _Archive:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # streams a row group of any size in 4 MiB reads; pyarrow's default pre-buffering would read every column
        # chunk of the file ahead into memory (a 200k x 1536 archive: 1.3 GB held while scanning)
        file = pq.ParquetFile(path, buffer_size=1 << 22, pre_buffer=False)
        arrow = file.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise _refuse(path, f"is not a readable Parquet file ({error_line(exc)})",
                      "it is truncated or not Parquet: write it again, or restore it from a copy") from None
    meta = arrow.metadata or {}
    ours = meta.get(MARKER) == FORMAT
    if ours and meta.get(VERSION_KEY) != VERSION:
        version = meta.get(VERSION_KEY, b"?").decode("utf-8", "replace")
        raise _refuse(path, f"is in archive format version {version}; this toolkit reads version {VERSION.decode()}",
                      "read it with the toolkit version that wrote it")
    names = set(arrow.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise _refuse(path, f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for name in STRINGS:
        if name in names and not (pa.types.is_string(arrow.field(name).type) or pa.types.is_large_string(arrow.field(name).type)
                                  or pa.types.is_null(arrow.field(name).type)):
            raise _refuse(path, f"has column {name!r} of type {arrow.field(name).type}, not string")
    embedding = arrow.field("embedding").type
    if not (pa.types.is_fixed_size_list(embedding) or pa.types.is_list(embedding) or pa.types.is_large_list(embedding)) \
            or not pa.types.is_floating(embedding.value_type):
        raise _refuse(path, f"has column 'embedding' of type {embedding}, not a list of floats")
    if "embedding_dim" in names and not pa.types.is_integer(arrow.field("embedding_dim").type):
        raise _refuse(path, f"has column 'embedding_dim' of type {arrow.field('embedding_dim').type}, not an integer")
    if "created_at" in names and not pa.types.is_timestamp(arrow.field("created_at").type):
        raise _refuse(path, f"has column 'created_at' of type {arrow.field('created_at').type}, not a timestamp")
    table = meta[TABLE_KEY].decode("utf-8", "replace") if ours and TABLE_KEY in meta else None
    dim = embedding.list_size if pa.types.is_fixed_size_list(embedding) else None
    wanted = [*STRINGS, "embedding", "embedding_dim", "created_at"]
    return _Archive(path, file, ours, table, dim, [c for c in wanted if c in names], file.metadata.num_rows)


def _uuids(values: list[Any], path: Path, name: str, *, nullable: bool) -> list[uuid.UUID | None]:
    """A column of uuids; a bad one (or a missing one where one is required) is refused naming the column."""
    out: list[uuid.UUID | None] = []
    for value in values:
        if value is None and nullable:
            out.append(None)
            continue
        try:
            out.append(uuid.UUID(value))
        except (TypeError, ValueError, AttributeError):
            raise _refuse(path, f"has {value!r} in column {name!r}, not a uuid") from None
    return out


def _vectors(batch: pa.RecordBatch, archive: _Archive, dim: int | None) -> np.ndarray:
    """The embeddings of ``batch`` as a float32 (rows, dim) matrix; every row must have ``dim`` values (None: the
    first row's), as its ``embedding_dim`` says."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = batch.column("embedding")
    if column.null_count:
        raise _refuse(archive.path, "has a row without an embedding (column 'embedding' is null)")
    if pa.types.is_fixed_size_list(column.type):
        size = column.type.list_size
        lengths = np.full(len(column), size)
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        size = int(lengths[0]) if len(lengths) else 0
    expected = dim or size
    if len(lengths) and (lengths != expected).any():
        row = int(np.flatnonzero(lengths != expected)[0])
        raise _refuse(archive.path, f"has embeddings of different lengths in column 'embedding' ({expected} and "
                                    f"{int(lengths[row])}, row id {batch.column('id')[row]})")
    if "embedding_dim" in batch.schema.names:
        said = batch.column("embedding_dim").to_numpy(zero_copy_only=False)
        if len(said) and (said != expected).any():
            row = int(np.flatnonzero(said != expected)[0])
            raise _refuse(archive.path, f"says {said[row]} in column 'embedding_dim' for a {expected}-value embedding "
                                        f"(row id {batch.column('id')[row]})")
    values = column.flatten() if pa.types.is_fixed_size_list(column.type) else pc.list_flatten(column)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), expected)


def _text_or_empty(data: pa.Table) -> pa.Table:
    """A missing text as ``_passages`` reads it: "" (a null would go on as null, then read back as "")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "text" not in data.column_names or not data["text"].null_count:
        return data
    if not (pa.types.is_string(data["text"].type) or pa.types.is_large_string(data["text"].type)):
        return data  # another type: conform refuses it
    return data.set_column(data.schema.get_field_index("text"), "text", pc.fill_null(data["text"], ""))


def _passages(batch: pa.RecordBatch, archive: _Archive, dim: int | None) -> list[Passage]:
    import pyarrow as pa

    if batch.num_rows == 0:
        return []
    vectors = _vectors(batch, archive, dim)
    names = batch.schema.names

    def strings(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if name in names else [None] * batch.num_rows

    ids = _uuids(strings("id"), archive.path, "id", nullable=False)
    users = _uuids(strings("user_id"), archive.path, "user_id", nullable=False)
    agents = _uuids(strings("agent_id"), archive.path, "agent_id", nullable=True)
    docs = _uuids(strings("doc_id"), archive.path, "doc_id", nullable=True)
    metadata = []
    for value in strings("metadata"):
        try:
            loaded = json.loads(value) if value else {}
        except ValueError:
            raise _refuse(archive.path, f"has {value[:40]!r} in column 'metadata', not JSON") from None
        metadata.append(loaded if isinstance(loaded, dict) else {"value": loaded})
    created: list[Any] = [None] * batch.num_rows
    if "created_at" in names:
        column = batch.column("created_at")
        if column.type.tz is None:
            column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))  # naive: read as UTC, as MemGPT writes
        _check_dates(column, batch, archive)
        created = column.cast(pa.timestamp("us", tz="UTC"), safe=False).to_pylist()
    out = []
    for i, (text, model, source) in enumerate(zip(strings("text"), strings("embedding_model"), strings("data_source"),
                                                 strict=True)):
        p = Passage(id=ids[i], user_id=users[i], agent_id=agents[i],  # type: ignore[arg-type]  # not null: checked
                    doc_id=docs[i], text=text or "", embedding=vectors[i], data_source=source,
                    embedding_model=model, metadata=metadata[i])
        if created[i] is not None:
            p.created_at = created[i].astimezone(timezone.utc)
        out.append(p)
    return out


def _check_dates(column: pa.Array, batch: pa.RecordBatch, archive: _Archive) -> None:
    """A ``created_at`` outside the years 1-9999 (which Python's datetime holds; the cast to microseconds would
    also wrap past int64) is refused naming its row, not a traceback."""
    import numpy as np
    import pyarrow as pa

    ticks = column.cast(pa.int64()).to_numpy(zero_copy_only=False)  # nulls: NaN, never out of range
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
    with np.errstate(invalid="ignore"):
        out = (ticks < FIRST_SECOND * per_second) | (ticks > LAST_SECOND * per_second)
    if out.any():
        row = int(np.flatnonzero(out)[0])
        raise _refuse(archive.path, f"has a date outside the years 1-9999 in column 'created_at' (row id "
                                    f"{batch.column('id')[row]})")


def _fold(id: uuid.UUID) -> int:
    """An id folded to 64 bits: 8 bytes a row to find a duplicate id with."""
    return (id.int >> 64) ^ (id.int & ((1 << 64) - 1))


def _folded(rows: list[Passage]) -> np.ndarray:
    import numpy as np

    return np.fromiter((_fold(p.id) for p in rows), dtype=np.uint64, count=len(rows))


def _check_unique(archive: _Archive, folded: list[np.ndarray], rows: Any) -> None:
    """Refuse a file holding an id twice (one written by other tools): a copy of it cannot be verified (a store
    keeps one row an id), and re-running would fail the same way. ``rows(archive)`` reads the rows again, only when
    two folded ids are equal, to tell a duplicate from two ids that fold alike."""
    import numpy as np

    ids = np.sort(np.concatenate(folded)) if folded else np.zeros(0, np.uint64)
    alike = set(ids[1:][ids[1:] == ids[:-1]].tolist())
    if not alike:
        return
    seen: set[uuid.UUID] = set()
    for batch in rows(archive):
        for p in batch:
            if _fold(p.id) in alike:
                if p.id in seen:
                    raise _refuse(archive.path, f"has id {p.id} twice in column 'id'",
                                  "keep one row per id (e.g. pandas drop_duplicates('id')), then migrate it again")
                seen.add(p.id)


def _rebatched(batches: Iterable[list[Passage]], size: int) -> Iterator[list[Passage]]:
    """The same passages in batches of exactly ``size`` (the last one shorter), whatever the row groups were."""
    pending: list[Passage] = []
    for rows in batches:
        pending.extend(rows)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def _mask(batch: pa.RecordBatch, filters: Filters | None) -> np.ndarray:
    import numpy as np

    keep = np.ones(batch.num_rows, dtype=bool)
    for key, value in (filters.as_dict() if filters else {}).items():
        if key not in batch.schema.names:
            return np.zeros(batch.num_rows, dtype=bool)
        column = np.asarray(batch.column(key).to_pylist(), dtype=object)
        keep &= column == str(value)
    return keep


# -- the store -----------------------------------------------------------------------------------------

@dataclass
class _Stage:
    """A migration's archive being written aside: ``temp`` holds what was written (None: nothing yet)."""

    overwrite: bool
    temp: Path | None = None
    writer: Any = None
    dim: int | None = None


class ParquetStore(StoreBase):
    name = NAME

    def __init__(self, location: StoreLocation) -> None:
        self.path = Path(location.location).expanduser()
        self.table = location.table
        self._stage: _Stage | None = None
        self._checked: tuple[Path, int, int] | None = None  # (file, size, mtime) read through once without fault
        self._held: dict[Path, int] = {}  # temporary files of ours -> the descriptor holding their lock

    # -- writing aside (a migration's destination: base.WritesAside) ---------------------------------

    def stage(self, *, overwrite: bool) -> None:
        """From now on writes go to a temporary file, and reads read it; ``publish`` puts it in place. An existing
        archive is refused unless ``overwrite``: nothing is written then."""
        target = _stat(self.path)
        if target is not None and S_ISDIR(target.st_mode):
            raise _refuse(self.path, "is a directory", "name a file: parquet:///path/archive.parquet")
        if _stat(self.path, follow=False) is not None and not overwrite:  # a dangling symlink too: never written through
            raise BackendError(f"the archive {self.path} exists already",
                               hint="add --overwrite to replace it (the archive is written afresh), or name another file")
        # --overwrite: a file we did not write (a device, a FIFO: never opened) is never replaced
        if target is not None and not (S_ISREG(target.st_mode) and self._ours(self.path)):
            raise _refuse(self.path, "is not an archive the toolkit wrote; --overwrite does not replace it",
                          "remove it yourself, or name another file")
        self._let_go(self._new_temp(), remove=True)  # a directory it cannot write in is refused now, before the copy
        self._sweep()
        self._stage = _Stage(overwrite)

    @staticmethod
    def _ours(path: Path) -> bool:
        try:
            return _open_archive(path).ours
        except BackendError:  # not Parquet, or of another archive version
            return False

    def publish(self) -> None:
        """Put the staged archive under its final name: atomically, and (without ``overwrite``) only if no file
        appeared there meanwhile."""
        stage = self._stage
        assert stage is not None, "publish() without stage()"
        self._finish()
        if stage.temp is None:
            raise BackendError(f"nothing was written to the archive {self.path}", hint="migrate a table that has rows")
        try:
            if stage.overwrite:
                os.replace(stage.temp, self.path)
            else:
                try:
                    os.link(stage.temp, self.path)  # fails if the name is taken: never clobbers
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    # EEXIST: taken meanwhile. The others: no hard links here (vfat/exFAT USB sticks, some CIFS
                    # mounts): checked, then renamed; a file put there in between by another writer would be replaced
                    if exc.errno == errno.EEXIST or os.path.lexists(self.path):
                        raise BackendError(f"the archive {self.path} appeared while it was being written",
                                           hint="add --overwrite to replace it") from None
                    os.rename(stage.temp, self.path)
            self._let_go(stage.temp, remove=True)
            _sync_directory(self.path.parent)
        except OSError as exc:
            raise BackendError(f"cannot write the archive {self.path}: {exc.strerror or exc}",
                               hint="choose a writable directory") from None
        self._stage = None

    def _finish(self) -> None:
        stage = self._stage
        if stage is not None and stage.writer is not None:
            writer, stage.writer = stage.writer, None
            assert stage.temp is not None
            with self._io():
                writer.close()
                with open(stage.temp, "rb+") as handle:
                    os.fsync(handle.fileno())
            stat = stage.temp.stat()
            self._checked = (stage.temp, stat.st_size, stat.st_mtime_ns)  # what was written is read by the verification

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        """A write that fails (a full disk) as a BackendError of one line."""
        try:
            yield
        except OSError as exc:
            raise BackendError(f"cannot write the archive {self.path}: {exc.strerror or error_line(exc)}",
                               hint="free some space or choose another directory") from None

    def _new_temp(self) -> Path:
        """A new empty hidden file next to the archive, readable by its owner only."""
        probe = self.path.parent
        while _stat(probe) is None and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise BackendError(f"cannot write the archive {self.path}: {probe} is not a directory",
                               hint="choose a writable directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise BackendError(f"cannot write the archive {self.path}: {exc.strerror or exc}",
                               hint="choose a writable directory") from None
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)  # held while the file lives: a sweep never takes a live writer's file
        self._held[Path(name)] = fd  # mkstemp made it 0600
        return Path(name)

    def _let_go(self, temp: Path, *, remove: bool) -> None:
        """``temp`` is renamed away (or, ``remove``, removed now): close its lock."""
        if remove:
            temp.unlink(missing_ok=True)
        fd = self._held.pop(temp, None)
        if fd is not None:
            os.close(fd)

    def _sweep(self) -> None:
        """Remove what writers killed outright (SIGKILL, a crash) left next to the archive: hidden temporary files
        that no process holds and nobody touched for a while. Only our own regular files: in a shared directory
        (/tmp) another user may put anything under such a name, and opening a FIFO would block for ever."""
        import fcntl
        import glob
        import time

        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            try:
                fd = os.open(leftover, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                found = os.fstat(fd)
                if not S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                    continue
                if time.time() - found.st_mtime < STALE:
                    continue  # just made: its writer may not hold it yet
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                leftover.unlink(missing_ok=True)
            except OSError:
                continue  # a live writer's
            finally:
                os.close(fd)

    # -- files -------------------------------------------------------------------------------------------

    def _current(self) -> Path | None:
        """The file reads read (a staged one while staging), None when there is none."""
        if self._stage is not None:
            self._finish()
            return self._stage.temp
        return self.path if _stat(self.path) is not None else None

    def _archive(self, path: Path | None = None) -> _Archive | None:
        """The current file, opened and checked: its schema, its table, and once per version of the file every row
        (so a bad row is refused before a migration writes anything)."""
        path = path or self._current()
        if path is None:
            return None
        found = _stat(path)
        if found is not None and S_ISDIR(found.st_mode):
            raise _refuse(path, "is a directory", "name a file: parquet:///path/archive.parquet")
        if found is not None and not S_ISREG(found.st_mode):  # a FIFO, a device: opening it may block for ever
            raise _refuse(path, "is not a regular file", "name a file: parquet:///path/archive.parquet")
        archive = _open_archive(path)
        if archive.ours and archive.table != self.table:
            raise BackendError(f"the archive {path} holds table {archive.table}, not {self.table}",
                               hint=f"use --table {archive.table}")
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if self._checked != key:
            folded = [_folded(rows) for rows in self._rows(archive)]
            _check_unique(archive, folded, self._rows)
            self._checked = key
        return archive

    def _batches(self, archive: _Archive, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        try:
            yield from archive.file.iter_batches(ROWS, columns=columns or archive.columns)
        except (pa.ArrowException, OSError) as exc:  # damage past the footer: a page that does not decode
            raise _refuse(archive.path, f"cannot be read ({error_line(exc)})",
                          "it is damaged: write it again, or restore it from a copy") from None

    def _rows(self, archive: _Archive) -> Iterator[list[Passage]]:
        dim = archive.dim
        for batch in self._batches(archive):
            rows = _passages(batch, archive, dim)
            dim = dim or (rows[0].embedding_dim if rows else None)
            yield rows

    def _writable(self, archive: _Archive | None, dim: int) -> None:
        if archive is None:
            return
        if not archive.ours:
            raise _refuse(archive.path, "was not written by the toolkit; it is only read",
                          "migrate it into a new archive (toolkit migrate --from parquet://... --to parquet://...)")
        if archive.dim != dim:
            raise dim_mismatch(f"the archive {archive.path}", archive.dim or 0, dim)

    def _rewrite(self, archive: _Archive, dim: int, new: pa.Table | None, drop: set[str]) -> None:
        """Write the archive again in one pass: its rows but those in ``drop`` and ``new``'s ids, with ``new``'s rows
        merged in id order; then rename it over the old file."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        temp = self._new_temp()
        try:
            new_ids = new["id"].to_pylist() if new is not None else []
            gone = pa.array(sorted(drop | set(new_ids)), pa.string())
            written = 0
            with pq.ParquetWriter(temp, schema(dim, self.table)) as writer:
                for batch in self._batches(archive, archive.file.schema_arrow.names):
                    kept = pa.Table.from_batches([batch]).filter(pc.invert(pc.is_in(batch.column("id"), gone)))
                    if kept.num_rows == 0:
                        continue
                    upto = bisect.bisect_right(new_ids, kept["id"][-1].as_py())
                    if new is not None and upto > written:
                        kept = pa.concat_tables([kept, new.slice(written, upto - written)]).sort_by("id")
                        written = upto
                    writer.write_table(kept)
                if new is not None and written < len(new_ids):
                    writer.write_table(new.slice(written))
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, archive.path)
        except BaseException:
            self._let_go(temp, remove=True)
            raise
        self._let_go(temp, remove=False)

    def _writing(self) -> Any:
        """One writer at a time (across processes), as each write reads the file and renames a new one in."""
        return directory_lock(self.path.parent, f"the archive {self.path}")

    # -- the Protocol --------------------------------------------------------------------------------------

    def insert(self, passages: Iterable[Passage]) -> int:
        batch = unique_by_id(passages)
        if not batch:
            return 0
        check_encodable(batch, f"the archive {self.path}")  # pyarrow cannot encode it
        return self._write(arrow_table(batch, self.table))

    def insert_columns(self, data: pa.Table) -> int:
        """Rows in ``columns.schema`` (``columns.conform``'s), written as ``insert`` writes their passages."""
        import pyarrow as pa

        if not data.num_rows:
            return 0
        columns.check_insertable(data, f"the archive {self.path}")
        if columns.repeats_ids(data):  # insert keeps the last, as an upsert of each would
            return self.insert(columns.to_passages(data))
        data = data.sort_by("id")  # canonical ids: their text's order is str(uuid)'s, as arrow_table sorts
        dim = data.schema.field("embedding").type.list_size
        layout = schema(dim, self.table)
        return self._write(pa.table([data["metadata_" if name == "metadata" else name] for name in layout.names],
                                    names=layout.names).cast(layout))

    def _write(self, data: pa.Table) -> int:
        import pyarrow.parquet as pq

        dim = data.schema.field("embedding").type.list_size
        stage = self._stage
        if stage is not None and (stage.writer is not None or stage.temp is None):
            if stage.dim is not None and stage.dim != dim:
                raise dim_mismatch(f"the archive {self.path}", stage.dim, dim)
            with self._io():
                if stage.temp is None:
                    stage.temp = self._new_temp()
                    stage.writer = pq.ParquetWriter(stage.temp, schema(dim, self.table))
                    stage.dim = dim
                stage.writer.write_table(data, row_group_size=data.num_rows)  # one row group per batch
            return data.num_rows
        with self._writing(), self._io():
            archive = self._archive()
            self._writable(archive, dim)
            if archive is None:
                temp = self._new_temp()
                try:
                    pq.write_table(data, temp)
                    os.replace(temp, self.path)
                except BaseException:
                    self._let_go(temp, remove=True)
                    raise
                self._let_go(temp, remove=False)
            else:
                self._rewrite(archive, dim, data, set())
        return data.num_rows

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        """Exact L2 over the embedding column, a batch at a time (the k best kept); then the k passages by id."""
        import numpy as np

        archive = self._archive()
        if archive is None or k <= 0:
            return []
        keys = list(filters.as_dict()) if filters else []
        if any(key not in archive.columns for key in keys):
            return []
        q = np.asarray(embedding, dtype=np.float32)
        best: list[tuple[float, int, str]] = []  # (-distance, -row, id): a max-heap of the k nearest, earlier rows first
        start, dim = 0, archive.dim
        for batch in self._batches(archive, ["id", "embedding", *(c for c in ("embedding_dim",) if c in archive.columns),
                                             *keys]):
            vectors = _vectors(batch, archive, dim)
            dim = dim or (vectors.shape[1] if len(vectors) else None)
            if len(vectors) and q.shape != (vectors.shape[1],):
                raise dim_mismatch(f"the archive {archive.path}", vectors.shape[1], q.size)
            candidates = np.flatnonzero(_mask(batch, filters))
            if candidates.size:
                distances = ((vectors[candidates] - q) ** 2).sum(axis=1, dtype=np.float64)
                nearest = candidates[np.argsort(distances, kind="stable")[:k]]  # this batch's best, in order
                ranked = dict(zip(candidates.tolist(), distances.tolist(), strict=True))
                ids = batch.column("id")
                for i in nearest.tolist():
                    item = (-ranked[i], -(start + i), ids[i].as_py())
                    if len(best) < k:
                        heapq.heappush(best, item)
                    elif item[:2] > best[0][:2]:
                        heapq.heapreplace(best, item)
                    else:
                        break  # the rest of this batch is farther still
            start += batch.num_rows
        found = {p.id: p for p in self.get(uuid.UUID(i) for _, _, i in best)}
        return [found[uuid.UUID(i)] for _, _, i in sorted(best, key=lambda item: item[:2], reverse=True)
                if uuid.UUID(i) in found]

    def count(self, filters: Filters | None = None) -> int:
        archive = self._archive()
        if archive is None:
            return 0
        if not filters or not filters.as_dict():
            return archive.rows
        keys = list(filters.as_dict())
        if any(key not in archive.columns for key in keys):
            return 0
        return sum(int(_mask(batch, filters).sum()) for batch in self._batches(archive, keys))

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        archive = self._archive()
        if archive is None:
            return
        yield from _rebatched(self._rows(archive), batch_size)

    def scan_columns(self, batch_size: int) -> Iterator[pa.Table | list[Passage]]:
        """``scan``'s rows as tables in ``columns.schema`` (rows another tool wrote otherwise: passages)."""
        archive = self._archive()
        if archive is None:
            return
        for part in columns.rebatched(self._batches(archive), batch_size):
            names = ["metadata_" if name == "metadata" else name for name in part.schema.names]
            conformed = columns.conform(_text_or_empty(part.rename_columns(names)))
            if conformed is not None:
                yield conformed
            else:
                yield [p for batch in part.to_batches() for p in _passages(batch, archive, archive.dim)]

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = list(dict.fromkeys(str(i) for i in ids))
        archive = self._archive()
        if archive is None or not wanted:
            return []
        keys = pa.array(wanted, pa.string())
        found: dict[str, Passage] = {}
        dim = archive.dim
        for batch in self._batches(archive):
            chosen = batch.filter(pc.is_in(batch.column("id"), keys))
            for p in _passages(chosen, archive, dim):
                found[str(p.id)] = p
                dim = dim or p.embedding_dim
        return [found[i] for i in wanted if i in found]

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = {str(i) for i in ids}
        if not wanted or self._current() is None:
            return 0
        with self._writing():
            archive = self._archive()
            if archive is None:
                return 0
            keys = pa.array(sorted(wanted), pa.string())
            gone = sum(int(pc.sum(pc.is_in(b.column("id"), keys)).as_py() or 0) for b in self._batches(archive, ["id"]))
            if gone:
                self._writable(archive, archive.dim or 0)
                with self._io():
                    self._rewrite(archive, archive.dim or 0, None, wanted)
        return gone

    def drop(self) -> None:
        """Remove the archive file: only one the toolkit wrote, holding this table (never a foreign file)."""
        if self._stage is not None:
            self._discard()
            self._stage = _Stage(self._stage.overwrite)
            return
        if not self.path.exists():
            return
        with self._writing():
            archive = _open_archive(self.path) if self.path.is_file() else None
            if archive is None or not archive.ours:
                raise _refuse(self.path, "was not written by the toolkit; it is not removed", "remove it yourself")
            if archive.table != self.table:
                raise BackendError(f"the archive {self.path} holds table {archive.table}, not {self.table}; "
                                   "it is not removed", hint=f"use --table {archive.table}")
            self.path.unlink(missing_ok=True)
            self._checked = None

    def exists(self) -> bool:
        return self._archive() is not None

    def _discard(self) -> None:
        stage = self._stage
        if stage is None:
            return
        if stage.writer is not None:
            try:
                stage.writer.close()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
            stage.writer = None
        if stage.temp is not None:
            self._let_go(stage.temp, remove=True)
            stage.temp = None

    def close(self) -> None:
        """An archive staged and not published is removed: a failed or interrupted migration leaves no file."""
        self._discard()
        self._stage = None


def _stat(path: Path, *, follow: bool = True) -> os.stat_result | None:
    """``path``'s status, None when there is no such file (``follow``: nor a file a symlink there points to); a
    directory on the way that cannot be searched (another user's) is refused in one line."""
    try:
        return path.stat() if follow else path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise BackendError(f"cannot reach the archive {path}: {exc.strerror or error_line(exc)}",
                           hint="check the permissions of the directories on its path, or name another file") from None


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
