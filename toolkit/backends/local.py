"""The local backend (room: backends/): a directory per table, exact NumPy search.

Layout of ``<location>/<table>/``: ``manifest.json`` lists segments in write order; segment ``N`` is
``N.jsonl`` (one row per passage, or a ``{"id": ..., "deleted": true}`` tombstone) plus ``N.npy`` (its
float32 embeddings). Every file is written to a temporary name and renamed; the manifest is renamed
last, so a crash leaves either the old table or the new one. Later segments win per id (upsert).
This version writes each segment's rows in id order (any order reads), and merges small segments at the
end of the table into one, streaming them, by size tiers (``_tail_to_merge``); big ones stay as written.

Reads keep only a small index in memory (per live row: id, segment, where its line and its embedding
are) and copy rows out of the memory-mapped files a batch at a time, handing the pages back after each:
a scan of any size stays small. A scan goes in storage order; a query gathers every embedding once.
Search is exact L2 in NumPy, as MemGPT's connectors rank.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind, columns
from toolkit.backends._util import (
    StoreBase,
    dim_mismatch,
    directory_lock,
    dumps,
    matrix,
    owner_uuid,
    owner_uuid_or_none,
    to_utc,
    unique_by_id,
)
from toolkit.backends.base import Filters, Passage, Spec
from toolkit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

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
# compaction (see _tail_to_merge): segments of one size tier merge MERGE_FANOUT at a time; a tier is
# MERGE_FANOUT times the bytes of the one below, from MERGE_UNIT; segments of MERGE_BELOW bytes stay as written
MERGE_FANOUT = 4
MERGE_UNIT = 64 * 1024
MERGE_BELOW = 4 * 1024 * 1024


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


class _Segment:
    """One segment's files, memory-mapped. Reads copy what they need and hand the touched pages back
    (``release``), so mapped pages never pile up in the process's resident memory however big the table."""

    def __init__(self, directory: Path, name: str) -> None:
        import numpy as np

        self.name = name
        with open(directory / f"{name}.npy", "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"{name}.npy is in .npy format {version}")
            shape, fortran, dtype = read_header(handle)
            if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
                raise ValueError(f"{name}.npy holds {dtype} {shape}, not a float32 matrix")
            self.count, self.dim = shape
            start = handle.tell()
            self.npy = _map(handle)
        if len(self.npy) < start + self.count * self.dim * 4:
            raise ValueError(f"{name}.npy is cut short")
        self.vectors = np.frombuffer(self.npy, dtype=np.float32, count=self.count * self.dim,
                                     offset=start).reshape(self.count, self.dim)
        self.vectors_at = start  # where row 0 starts in the file
        self.jsonl_path = directory / f"{name}.jsonl"
        with open(self.jsonl_path, "rb") as handle:
            self.jsonl = _map(handle)

    def entries(self) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
        """Every line of the JSONL file, in file order: the ids (36 bytes each), the byte offset and length of
        each line, and each line's row in the .npy (-1: a tombstone). Read a block at a time (not mapped:
        nothing stays resident) and split with NumPy; only a line that does not start as this module writes
        it (``{"id": "<36 characters>"``) is parsed in Python."""
        import numpy as np

        ids, offsets, lengths, tombstones = [], [], [], []
        position, carry = 0, b""
        with open(self.jsonl_path, "rb") as handle:
            while True:
                block = handle.read(_BLOCK)
                data = carry + block
                if block:
                    cut = data.rfind(b"\n") + 1
                    data, carry = data[:cut], data[cut:]
                elif data:  # a last line without its newline (an editor dropped it): a line as any other
                    data += b"\n"
                if data:
                    part = _split_lines(data, self.name)
                    ids.append(part[0])
                    offsets.append(part[1] + position)
                    lengths.append(part[2])
                    tombstones.append(part[3])
                    position += len(data)
                if not block:
                    break
        deleted = np.concatenate(tombstones) if tombstones else np.zeros(0, dtype=bool)
        rows = np.cumsum(~deleted) - 1
        rows[deleted] = -1
        if len(deleted) - int(deleted.sum()) != self.count:
            raise ValueError(f"segment {self.name} has {len(deleted) - int(deleted.sum())} rows and {self.count} embeddings")
        return (b"".join(ids), np.concatenate(offsets or [np.zeros(0, np.int64)]),
                np.concatenate(lengths or [np.zeros(0, np.int64)]), rows.astype(np.int64))


_BLOCK = 8 * 1024 * 1024  # bytes of JSONL split at a time
_PREFIX = b'{"id": "'


def _split_lines(data: bytes, name: str) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """The whole lines ``data`` holds: their ids, offsets, lengths and which are tombstones."""
    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n")) + 1
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    # room for the prefix, the id, '"}' and the newline, and ending as this module ends a line ('}\n', not
    # '}\r\n' or '} \n' as another program or an editor may leave it: those are parsed below)
    fast = np.flatnonzero((lengths >= len(_PREFIX) + 39) & (buf[ends - 2] == ord("}")))
    prefix = np.frombuffer(_PREFIX, dtype=np.uint8)
    fast = fast[(buf[starts[fast, None] + np.arange(len(prefix))] == prefix).all(axis=1)
                & (buf[starts[fast] + 44] == ord('"'))]
    keys = np.zeros((len(starts), 36), dtype=np.uint8)
    keys[fast] = buf[starts[fast, None] + 8 + np.arange(36)]
    tail = np.frombuffer(_TOMBSTONE[44:], dtype=np.uint8)
    deleted = np.zeros(len(starts), dtype=bool)
    short = fast[lengths[fast] == len(_TOMBSTONE)]
    deleted[short] = (buf[starts[short, None] + 44 + np.arange(len(tail))] == tail).all(axis=1)
    slow = np.ones(len(starts), dtype=bool)
    slow[fast] = False
    for i in np.flatnonzero(slow).tolist():  # written by another program: ids in another form
        parsed = json.loads(data[starts[i]:ends[i]])
        if not isinstance(parsed, dict):
            raise ValueError(f"{name}.jsonl has a line that is not a JSON object")
        keys[i] = np.frombuffer(str(uuid.UUID(parsed["id"])).encode(), dtype=np.uint8)
        deleted[i] = bool(parsed.get("deleted"))
    return keys.tobytes(), starts.astype(np.int64), lengths.astype(np.int32), deleted


_TOMBSTONE = b'{"id": "00000000-0000-0000-0000-000000000000", "deleted": true}\n'


def _map(handle: Any) -> Any:
    import mmap

    if os.fstat(handle.fileno()).st_size == 0:
        return b""
    return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _release(mapped: Any, start: int, stop: int) -> None:
    """Drop the pages of mapped[start:stop] from this process (the page cache keeps them): a mapped page
    once read counts in RSS until the mapping goes, which for a scan of a big table is all of it. The range
    is widened by ``_AROUND`` each side: a page fault maps its neighbours too ("fault-around", 64 KB), so
    the first read of a batch maps pages of the batch before it again, which a release of the batch's own
    range alone would leave behind (measured: 130 MB at 300k rows x 1536)."""
    import mmap

    if isinstance(mapped, mmap.mmap) and stop > start:
        first = max(0, start - _AROUND)
        first -= first % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, first, min(stop + _AROUND, len(mapped)) - first)


_AROUND = 1 << 20


def _runs(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, positions holding it) for each distinct value of a small integer array."""
    import numpy as np

    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for group in np.split(order, bounds):
        if group.size:
            yield int(keys[group[0]]), group


class _Table:
    """The live rows of a table: a small index sorted by id (id, segment, where its JSON line is, its row in
    the segment's .npy), the rows themselves staying in their files until a batch is read. A scan reads them
    in storage order (``stored``), each file front to back. A query gathers every embedding into one matrix,
    once."""

    def __init__(self, where: Path, segments: list[_Segment], index: dict[str, np.ndarray], dim: int) -> None:
        self.where = where  # the table's directory, for errors
        self.segments = segments
        self.ids = index["ids"]  # sorted, 36 bytes each (the id's text)
        self.segment = index["segment"]  # which segment holds the row
        self.offset = index["offset"]  # its JSON line: bytes [offset, offset + length) of the segment's .jsonl
        self.length = index["length"]
        self.row = index["row"]  # its embedding's row in the segment's .npy (-1: a tombstone)
        self.stored = index["stored"]  # the rows in storage order: segment by segment, each in file order
        self.dim = dim

    def __len__(self) -> int:
        return len(self.ids)

    def lines(self, picks: np.ndarray) -> list[bytes]:
        out: list[bytes] = [b""] * len(picks)
        for number, group in _runs(self.segment[picks]):
            jsonl = self.segments[number].jsonl
            chosen = picks[group]
            spans = zip(group.tolist(), self.offset[chosen].tolist(), self.length[chosen].tolist(), strict=True)
            for at, offset, length in spans:
                out[at] = jsonl[offset:offset + length]
            _release(jsonl, int(self.offset[chosen].min()), int((self.offset[chosen] + self.length[chosen]).max()))
        return out

    def rows(self, picks: np.ndarray) -> list[dict[str, Any]]:
        lines = self.lines(picks)
        try:
            rows = json.loads(b"[" + b",".join(lines) + b"]") if lines else []  # one parse for the batch
        except ValueError as exc:  # the index reads only each line's id: the rest is first parsed here
            raise _damaged(self.where, exc) from None
        if not all(isinstance(row, dict) for row in rows):
            raise _damaged(self.where, ValueError("a line of a segment is not a JSON object"))
        return rows

    def vectors_of(self, picks: np.ndarray) -> np.ndarray:
        import numpy as np

        if "vectors" in self.__dict__:
            return self.vectors[picks]
        out = np.empty((len(picks), self.dim), dtype=np.float32)
        for number, group in _runs(self.segment[picks]):
            segment = self.segments[number]
            rows = self.row[picks[group]]
            first, last = int(rows.min()), int(rows.max())
            if last - first == len(rows) - 1 and bool((np.diff(rows) == 1).all()):  # one run: one slice
                out[group] = segment.vectors[first:last + 1]
            else:
                out[group] = segment.vectors[rows]
            row_bytes = self.dim * 4
            _release(segment.npy, segment.vectors_at + first * row_bytes, segment.vectors_at + (last + 1) * row_bytes)
        return out

    def passages(self, picks: np.ndarray) -> list[Passage]:
        vectors = self.vectors_of(picks)
        rows = self.rows(picks)
        try:
            return [_to_passage(row, vectors[i]) for i, row in enumerate(rows)]
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # a field missing or not of its type
            raise _damaged(self.where, exc) from None

    def as_columns(self, picks: np.ndarray) -> pa.Table | list[Passage]:
        """The rows as a table in ``columns.schema``, holding what ``columns.from_passages`` makes of
        ``passages(picks)``; those passages themselves where the rows are not in that layout (a hand-edited
        line: an id in capitals, a lone surrogate, a field of another type)."""
        try:
            import pyarrow as pa
        except ImportError:  # the base install, without the extras that bring it: passages then
            return self.passages(picks)
        vectors = self.vectors_of(picks)
        rows = self.rows(picks)
        metadata = [row.get("metadata") for row in rows]
        try:
            if not all(isinstance(value, dict) for value in metadata):  # passages keep another value as it is
                raise TypeError("metadata that is not a JSON object")
            data = pa.table({
                **{name: [row[name] for row in rows] for name in ("id", "user_id", "agent_id", "doc_id", "text",
                                                                   "data_source")},
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim),
                "embedding_dim": pa.repeat(pa.scalar(self.dim, pa.int64()), len(rows)),
                "embedding_model": [row["embedding_model"] for row in rows],
                "metadata_": [dumps(value) if value else "{}" for value in metadata],
                "created_at": _utc_times([row["created_at"] for row in rows]),
            }, schema=columns.schema(self.dim))
        except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException):
            data = None
        conformed = columns.conform(data, metadata_checked=True) if data is not None else None
        if conformed is not None:
            return conformed
        try:
            return [_to_passage(row, vectors[i]) for i, row in enumerate(rows)]
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise _damaged(self.where, exc) from None

    def find(self, ids: list[str]) -> np.ndarray:
        """Where each id is in the table (its position in ``ids``), the ids not in it left out, order kept."""
        import numpy as np

        if not ids or not len(self.ids):
            return np.zeros(0, dtype=np.intp)
        wanted = np.array([i.encode() for i in ids], dtype=self.ids.dtype)
        at = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        return at[self.ids[at] == wanted]

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The rows in storage order, ``size`` at a time."""
        for start in range(0, len(self), size):
            yield self.stored[start:start + size]

    @cached_property
    def vectors(self) -> np.ndarray:
        import numpy as np

        matrix = np.empty((len(self), self.dim), dtype=np.float32)
        for picks in self.chunks(_CHUNK):
            matrix[picks] = self.vectors_of(picks)
        matrix.setflags(write=False)  # passages handed out are views: nobody may change the cache through them
        return matrix

    @cached_property
    def norms(self) -> np.ndarray:
        """||x||^2 per row, for ||x - q||^2 = ||x||^2 - 2 x.q + ||q||^2: one matrix-vector product per query."""
        import numpy as np

        return np.einsum("ij,ij->i", self.vectors, self.vectors, dtype=np.float64)

    def owners(self, key: str) -> np.ndarray:
        """Column ``key`` (user_id, agent_id, doc_id) of every row, as bytes ("" for none), read once."""
        import numpy as np

        cache = self.__dict__.setdefault("_owners", {})
        if key not in cache:
            values = [(row.get(key) or "").encode() for picks in self.chunks(_CHUNK) for row in self.rows(picks)]
            column = np.zeros(len(self), dtype=np.array(values, dtype=bytes).dtype if values else "S1")
            column[self.stored] = values
            cache[key] = column
        return cache[key]

    def mask(self, filters: Filters | None) -> np.ndarray:
        import numpy as np

        keep = np.ones(len(self), dtype=bool)
        for key, value in (filters.as_dict() if filters else {}).items():
            keep &= self.owners(key) == str(value).encode()
        return keep


_CHUNK = 4096  # rows a query, a filter or a merge reads at a time


def _index(segments: list[_Segment], *, tombstones: bool) -> dict[str, np.ndarray]:
    """The last entry of each id across ``segments`` (in write order), sorted by id; tombstones kept only
    if asked (a merge of later segments keeps them: they hide rows of earlier ones)."""
    import numpy as np

    parts = [segment.entries() for segment in segments]
    ids = np.frombuffer(b"".join(p[0] for p in parts), dtype="S36")
    offset = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)])
    length = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.int32)]).astype(np.int32)
    row = np.concatenate([p[3] for p in parts] or [np.zeros(0, np.int64)])
    segment = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p[1]) for p in parts])
    del parts
    order = np.argsort(ids, kind="stable")  # equal ids stay in write order: the last one wins
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ids[order[:-1]] != ids[order[1:]]
    keep = order[last]
    if not tombstones:
        keep = keep[row[keep] >= 0]
    # entries are numbered in storage order: sorting the kept ones' numbers gives the order a scan reads
    return {"ids": ids[keep], "segment": segment[keep], "offset": offset[keep], "length": length[keep],
            "row": row[keep], "stored": np.argsort(keep)}


def _tier(size: int) -> int:
    tier = 0
    while size >= MERGE_UNIT * MERGE_FANOUT ** (tier + 1):
        tier += 1
    return tier


def _tail_to_merge(sizes: list[int]) -> int | None:
    """Where the trailing run of segments to merge into one starts (None: no merge). Size tiers: for the
    lowest tier that has MERGE_FANOUT segments at the end of the table (counting smaller ones), those
    segments merge. A row is so rewritten a few times while it is in small segments; segments of
    MERGE_BELOW bytes or more are never rewritten (a bulk write stays written once)."""
    for tier in range(_tier(MERGE_BELOW) + 1):
        start = len(sizes)
        while start and sizes[start - 1] < MERGE_BELOW and _tier(sizes[start - 1]) <= tier:
            start -= 1
        if len(sizes) - start >= MERGE_FANOUT:
            return start
    return None


_JSON = json.JSONEncoder(default=str)  # json.dumps(row, default=str), without a new encoder per row
_QUOTED = json.encoder.encode_basestring_ascii  # how _JSON writes a string (its ensure_ascii default)


def _together(first: Any, second: Any) -> None:
    """first() in a thread while second() runs here: the embeddings' write and fsync wait on the disk
    while the rows are encoded. Either one's error is raised, after both have ended."""
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            first()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="local-segment-write")
    thread.start()
    try:
        second()
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _allow_open_files(wanted: int) -> None:
    """Let this process open ``wanted`` more files (raising its soft limit towards the hard one, as Go's runtime
    does at start): a table being read holds each segment's two files open (mapped), and segments of
    MERGE_BELOW bytes are never merged, so a big table has hundreds of them (1M rows of 1536 dimensions
    written in 16 MiB batches: ~370 segments, 740 files), past the usual soft limit of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a generous share is taken
        in_use = 256
    needed = in_use + wanted + 64  # room for what the caller opens next
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    raised = max(needed, 2 * soft) if hard == resource.RLIM_INFINITY else min(hard, max(needed, 2 * soft))
    with contextlib.suppress(ValueError, OSError):  # e.g. macOS refuses more than kern.maxfilesperproc
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


def _damaged(where: Path, exc: BaseException) -> BackendError:
    return BackendError(f"cannot read the local table {where}: {type(exc).__name__}: {exc}",
                        hint="drop it (toolkit migrate from a copy) or restore the directory")


def _to_row(p: Passage) -> dict[str, Any]:
    return {"id": str(p.id), "user_id": str(p.user_id), "agent_id": p.agent_id and str(p.agent_id),
            "doc_id": p.doc_id and str(p.doc_id), "text": p.text, "data_source": p.data_source,
            "embedding_model": p.embedding_model, "metadata": p.metadata or {},
            "created_at": p.created_at.isoformat()}


def _jsonl(data: pa.Table) -> str:
    """The rows of a table in ``columns.schema`` as JSON lines: the bytes ``_JSON.encode(_to_row(p))`` gives
    each of their passages, put together without a dict a row. ``columns.conform`` checked the ids and owners
    (uuid text: nothing to escape) and that the metadata is a JSON object; its text goes in as it is (the
    same bytes when a store wrote it with sort_keys, as every store here does), unless a newline in it
    would end the line."""

    def quoted(value: str | None) -> str:
        return "null" if value is None else _QUOTED(value)

    created = _isoformat_utc(data["created_at"])
    return "".join(
        f'{{"id": "{i}", "user_id": "{user}", "agent_id": {quoted(agent)}, "doc_id": {quoted(doc)}, '
        f'"text": {quoted(text)}, "data_source": {quoted(source)}, "embedding_model": {quoted(model)}, '
        f'"metadata": {_one_line(meta)}, '
        f'"created_at": "{at}"}}\n'
        for i, user, agent, doc, text, source, model, meta, at in zip(
            *(data[name].to_pylist() for name in ("id", "user_id", "agent_id", "doc_id", "text", "data_source",
                                                  "embedding_model", "metadata_")), created, strict=True))


def _isoformat_utc(column: pa.ChunkedArray) -> list[str]:
    """``datetime.isoformat()`` of each UTC timestamp, in NumPy: a tenth of the time of a datetime a row."""
    import numpy as np
    import pyarrow as pa

    micros = column.cast(pa.int64()).to_numpy()
    stamps = micros.astype("datetime64[us]")
    seconds = np.datetime_as_string(stamps, unit="s")  # isoformat leaves out a fraction of .000000
    text = np.where(micros % 1_000_000 == 0, seconds, np.datetime_as_string(stamps, unit="us"))
    return [f"{t}+00:00" for t in text.tolist()]


def _utc_times(texts: list[Any]) -> pa.Array:
    """The ``created_at`` texts as UTC timestamps, as ``to_utc(datetime.fromisoformat(text))`` reads each: parsed
    by Arrow where each names its zone (as this module writes them), else a row at a time (no zone: UTC)."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    try:
        return pa.array(texts, pa.string()).cast(utc)
    except (pa.ArrowException, TypeError):
        return pa.array([to_utc(datetime.fromisoformat(text)) for text in texts], utc)


def _one_line(metadata: str) -> str:
    # a raw CR is JSON whitespace too, but ends a line for readers with universal newlines (Python's text mode)
    return metadata if "\n" not in metadata and "\r" not in metadata else _JSON.encode(json.loads(metadata))


def _to_passage(row: dict[str, Any], vector: np.ndarray) -> Passage:
    return Passage(id=uuid.UUID(row["id"]), user_id=owner_uuid(row["user_id"]),
                   agent_id=owner_uuid_or_none(row["agent_id"]), doc_id=owner_uuid_or_none(row["doc_id"]),
                   text=row["text"], embedding=vector, data_source=row["data_source"], embedding_model=row["embedding_model"],
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

    def _commit(self, manifest: dict[str, Any], jsonl: Callable[[], str], vectors: np.ndarray) -> None:
        """Write one segment (its lines: what ``jsonl()`` returns), then the manifest naming it."""
        import numpy as np

        self._add_segment(manifest, lambda h: h.write(jsonl().encode()), lambda h: np.save(h, vectors))

    def _add_segment(self, manifest: dict[str, Any], write_jsonl: Any, write_npy: Any, *, replacing: int | None = None) -> None:
        """Write segment ``manifest['next']`` (its files by ``write_jsonl`` and ``write_npy``), then the manifest
        naming it: at the end, or in place of the segments from index ``replacing`` on (a merge), whose files
        then go. ``write_jsonl`` None: the merge left no rows, the segments just go."""
        seg = f"{manifest['next']:06d}"
        kept = manifest["segments"] if replacing is None else manifest["segments"][:replacing]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if write_jsonl is not None:
                _together(lambda: self._write(self.dir / f"{seg}.npy", write_npy),
                          lambda: self._write(self.dir / f"{seg}.jsonl", write_jsonl))
                kept = [*kept, seg]
            manifest = {**manifest, "version": manifest["version"] + 1, "next": manifest["next"] + 1, "segments": kept}
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
            table = self._read(manifest["segments"], manifest["dim"] or 0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            # a compaction by another process between reading the manifest and its segments looks the same
            # as damage: read the manifest again once before calling it damage
            if self._manifest().get("version") == manifest["version"]:
                raise _damaged(self.dir, exc) from None
            return self._load()
        self._cache = (key, table)
        return table

    def _read(self, names: list[str], dim: int, *, tombstones: bool = False) -> _Table:
        _allow_open_files(2 * len(names))
        try:
            segments = [_Segment(self.dir, name) for name in names]
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the table is fine: this process may not open it all
                raise self._too_many_files(len(names)) from None
            raise
        if any(segment.dim != dim and segment.count for segment in segments):
            raise ValueError(f"a segment's embeddings are not {dim}-dimensional")
        return _Table(self.dir, segments, _index(segments, tombstones=tombstones), dim)

    def _too_many_files(self, segments: int) -> BackendError:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return BackendError(f"cannot read the local table {self.dir}: its {segments} segments need {2 * segments} open "
                            f"files, more than this process may open (ulimit -n: {soft}); the table is intact",
                            hint="raise the limit (ulimit -n, or LimitNOFILE= for a service) and run again")

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
        batch.sort(key=lambda p: str(p.id))  # each segment in id order: a scan reads it in runs
        self._append(lambda: "".join(_JSON.encode(_to_row(p)) + "\n" for p in batch), matrix(batch))
        return len(batch)

    def insert_columns(self, data: pa.Table) -> int:
        """Upsert rows in ``columns.schema`` (``columns.conform``'s), written as ``insert`` writes their passages."""
        import numpy as np

        if not data.num_rows:
            return 0
        columns.check_insertable(data, None)  # JSON escapes any text: only the dimension is refused
        if columns.repeats_ids(data):  # insert keeps the last, as an upsert of each would
            return self.insert(columns.to_passages(data))
        data = data.sort_by("id")  # canonical ids: their text's order is str(uuid)'s, as insert sorts
        self._append(lambda: _jsonl(data), np.ascontiguousarray(columns.vectors_of(data)))
        return data.num_rows

    def _append(self, jsonl: Callable[[], str], vectors: np.ndarray) -> None:
        """A segment of these rows (their lines: ``jsonl()``, encoded while the embeddings are written) at the
        table's end, under the lock; then the merges the size tiers ask for."""
        with self._writing():
            manifest = self._manifest()
            if manifest["dim"] is not None and manifest["dim"] != vectors.shape[1]:
                raise dim_mismatch(f"local table {self.dir}", manifest["dim"], vectors.shape[1])
            manifest["dim"] = vectors.shape[1]
            self._commit(manifest, jsonl, vectors)
            self._compact()

    def _compact(self) -> None:
        """Merge the small segments at the end of the table while the size tiers ask for it (under the lock)."""
        while True:
            manifest = self._manifest()
            names = manifest["segments"]
            sizes: list[int] = []
            try:
                for name in reversed(names):  # only the tail can merge: stat it back to the first big segment
                    sizes.insert(0, sum((self.dir / f"{name}{suffix}").stat().st_size for suffix in (".npy", ".jsonl")))
                    if sizes[0] >= MERGE_BELOW:
                        break
            except OSError as exc:  # a segment's file is gone: the table is damaged (the reads say so too)
                raise _damaged(self.dir, exc) from None
            start = _tail_to_merge(sizes)
            if start is None:
                return
            self._merge(manifest, len(names) - len(sizes) + start)

    def _merge(self, manifest: dict[str, Any], start: int) -> None:
        """Segments ``start`` on become one: the last entry of each id, in id order, copied batch by batch
        (lines as they are, embeddings as bytes), never the whole table in memory. Tombstones stay unless
        the merge starts at the first segment (then nothing older is left for them to hide)."""
        import numpy as np

        dim = manifest["dim"] or 0
        try:
            merged = self._read(manifest["segments"][start:], dim, tombstones=start > 0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise _damaged(self.dir, exc) from None
        if not len(merged):
            self._add_segment(manifest, None, None, replacing=start)
        else:
            with_rows = np.flatnonzero(merged.row >= 0)

            def write_npy(handle: Any) -> None:
                np.lib.format.write_array_header_1_0(
                    handle, {"descr": "<f4", "fortran_order": False, "shape": (len(with_rows), dim)})
                for first in range(0, len(with_rows), _CHUNK):
                    handle.write(merged.vectors_of(with_rows[first:first + _CHUNK]).tobytes())

            def write_jsonl(handle: Any) -> None:  # in id order, as the embeddings
                for first in range(0, len(merged), _CHUNK):
                    lines = merged.lines(np.arange(first, min(first + _CHUNK, len(merged))))
                    # a segment's last line may lack its newline (another program wrote it): one each here
                    handle.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))

            self._add_segment(manifest, write_jsonl, write_npy, replacing=start)
        for name in manifest["segments"][start:]:
            for suffix in (".npy", ".jsonl"):
                (self.dir / f"{name}{suffix}").unlink(missing_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove what writers killed mid-write left (under the lock, so no writer is mid-write now): their
        temporary files, and segments a merge replaced but had not yet removed. Else each kill during a
        merge leaves up to two segments' worth of bytes on disk for good."""
        manifest = self._manifest()
        live = set(manifest["segments"])
        with contextlib.suppress(OSError):
            for path in self.dir.iterdir():
                stem, _, suffix = path.name.partition(".")
                leftover = path.name.startswith(".") and path.name.endswith(".tmp") or (
                    suffix in ("npy", "jsonl") and stem.isdigit() and stem not in live and int(stem) < manifest["next"])
                if leftover:
                    path.unlink(missing_ok=True)

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        table = self._load()
        if not len(table) or k <= 0:
            return []
        q = np.asarray(embedding, dtype=np.float32)
        if q.shape != (table.dim,):
            raise dim_mismatch(f"local table {self.dir}", table.dim, q.size)
        distances = table.norms - 2.0 * (table.vectors @ q)
        if filters and filters.as_dict():
            candidates = np.flatnonzero(table.mask(filters))
            distances = distances[candidates]
        else:
            candidates = np.arange(len(table))
        if candidates.size == 0:
            return []
        k = min(k, candidates.size)
        top = np.argpartition(distances, k - 1)[:k]
        top = top[np.argsort(distances[top], kind="stable")]
        return table.passages(candidates[top])

    def count(self, filters: Filters | None = None) -> int:
        table = self._load()
        return int(table.mask(filters).sum()) if filters and filters.as_dict() else len(table)

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        table = self._load()
        for picks in table.chunks(batch_size):
            yield table.passages(picks)

    def scan_columns(self, batch_size: int) -> Iterator[pa.Table | list[Passage]]:
        table = self._load()
        for picks in table.chunks(batch_size):
            yield table.as_columns(picks)

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        table = self._load()
        found = table.find(list(dict.fromkeys(str(i) for i in ids)))
        return table.passages(found) if len(found) else []

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        import numpy as np

        wanted = sorted({str(i) for i in ids})
        if not self.exists():
            return 0
        with self._writing():
            table = self._load()
            gone = [table.ids[i].decode() for i in table.find(wanted)]
            if gone:
                manifest = self._manifest()
                self._commit(manifest, lambda: "".join(_JSON.encode({"id": i, "deleted": True}) + "\n" for i in gone),
                             np.zeros((0, manifest["dim"] or 0), dtype=np.float32))
                self._compact()
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
