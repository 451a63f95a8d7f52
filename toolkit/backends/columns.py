"""Passages as Arrow columns: the table a migration carries between stores that speak Arrow (``ScansColumns``,
``InsertsColumns`` in base.py) without a Passage object per row, which cost more than the rows' own writes.

The layout is LanceDB's own table (``schema``): ids and owners as uuid text, ``metadata_`` as JSON text,
``created_at`` in UTC microseconds. A table in it holds exactly what ``from_passages`` makes of the same
passages, so a store may take either, and ``to_passages`` gives the passages back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from datetime import timezone
from typing import TYPE_CHECKING, Any

from toolkit.backends._util import check_dim, check_encodable, dumps, owner_text, owner_uuid_or_none, to_utc
from toolkit.backends.base import Passage
from toolkit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

STRINGS = ("id", "user_id", "agent_id", "doc_id", "text", "data_source", "embedding_model", "metadata_")
OWNERS = ("user_id", "agent_id", "doc_id")
# what str(uuid.UUID(...)) gives: an id in any other spelling is not in this layout
_FIRST_MICROSECOND, _LAST_MICROSECOND = -62_135_596_800_000_000, 253_402_300_799_999_999  # 0001-01-01, 9999-12-31
CANONICAL_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([*(pa.field(name, pa.string(), nullable=name != "id") for name in STRINGS[:6]),
                      pa.field("embedding", pa.list_(pa.float32(), dim)),
                      pa.field("embedding_dim", pa.int64()),
                      *(pa.field(name, pa.string()) for name in STRINGS[6:]),
                      pa.field("created_at", pa.timestamp("us", tz="UTC"))])


def from_passages(batch: list[Passage], vectors: np.ndarray) -> pa.Table:
    """The passages as a table of ``schema``: the embeddings straight from their (n, dim) float32 matrix."""
    import pyarrow as pa

    dim = vectors.shape[1]
    columns: dict[str, Any] = {
        "id": [str(p.id) for p in batch], "user_id": [owner_text(p.user_id) for p in batch],
        "agent_id": [owner_text(p.agent_id) for p in batch],
        "doc_id": [owner_text(p.doc_id) for p in batch], "text": [p.text for p in batch],
        "data_source": [p.data_source for p in batch],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "embedding_dim": pa.repeat(pa.scalar(dim, pa.int64()), len(batch)),
        "embedding_model": [p.embedding_model for p in batch],
        "metadata_": [dumps(p.metadata) if p.metadata else "{}" for p in batch],  # what dumps gives {}
        "created_at": pa.array([to_utc(p.created_at) for p in batch], pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=schema(dim))


def to_passages(data: pa.Table) -> list[Passage]:
    """The rows of a table with ``schema``'s columns (a LanceDB table's, MemGPT's included) as passages."""
    import numpy as np
    import pyarrow as pa

    if data.num_rows == 0:
        return []
    column = data["embedding"].combine_chunks()
    vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = vectors.reshape(data.num_rows, column.type.list_size)
    owners = [[owner_uuid_or_none(v) for v in data[name].to_pylist()] for name in OWNERS]
    created = data["created_at"].cast(pa.timestamp("us")).to_pylist()  # naive UTC: tzinfo set below, cheaply
    return [Passage(id=uuid.UUID(i), user_id=user, agent_id=agent, doc_id=doc, text=text, data_source=source,
                    embedding=vectors[n], embedding_model=model, metadata=json.loads(meta) if meta and meta != "{}" else {},
                    created_at=at.replace(tzinfo=timezone.utc))
            for n, (i, user, agent, doc, text, source, model, meta, at) in enumerate(zip(
                data["id"].to_pylist(), *owners, data["text"].to_pylist(), data["data_source"].to_pylist(),
                data["embedding_model"].to_pylist(), data["metadata_"].to_pylist(), created, strict=True))]


def conform(data: pa.Table, *, metadata_checked: bool = False) -> pa.Table | None:
    """``data`` (a LanceDB table's rows, a column store's) in exactly ``schema``'s layout, as ``from_passages``
    would have written the same rows; None when it is not (another type, an id or owner spelled otherwise,
    a missing embedding, text a passage would change): the caller goes through passages then.
    ``metadata_checked``: the caller wrote ``metadata_`` itself from dicts (``dumps``), so it is not parsed again."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        dim = data.schema.field("embedding").type.list_size
        if dim <= 0 or data["embedding"].null_count or data["id"].null_count or data["user_id"].null_count:
            return None
        data = data.select(list(schema(dim).names)).cast(schema(dim))
        if any(chunk.flatten().null_count for chunk in data["embedding"].chunks):  # passages: NaN there
            return None
        if not all(pc.all(pc.match_substring_regex(data[name], CANONICAL_UUID)).as_py() is not False
                   for name in ("id", *OWNERS)):  # (all null: None)
            return None
        created = data["created_at"].cast(pa.int64())  # microseconds: within the years a datetime holds
        if created.null_count or data.num_rows and not (
                _FIRST_MICROSECOND <= pc.min(created).as_py() and pc.max(created).as_py() <= _LAST_MICROSECOND):
            return None
        embedding_dims = data["embedding_dim"]
        if embedding_dims.null_count or data.num_rows and not pc.all(pc.equal(embedding_dims, dim)).as_py():
            return None
        # to_passages reads null, "" and "null" as {} (written "{}"), and fails on text that is not JSON:
        # only JSON objects are passed on
        metadata = data["metadata_"]
        if metadata.null_count or not metadata_checked and not all(_json_object(text) for text in metadata.to_pylist()):
            return None
        return data  # chunks as they came: combining them would copy the batch's embeddings once more
    except (KeyError, AttributeError, TypeError, ValueError, pa.ArrowException):  # another layout
        return None


def check_insertable(data: pa.Table, where: str | None) -> None:
    """Refuse, before anything is written, what ``insert`` refuses of the same rows' passages: embeddings of
    more dimensions than MemGPT stores (``_util.matrix``) and, given ``where`` (a store whose ``insert``
    checks it), metadata whose JSON escapes a lone surrogate (``check_encodable``; the other texts are
    Arrow's, valid UTF-8 already). Only rows with a surrogate escape at all are parsed."""
    import pyarrow.compute as pc

    check_dim(data.schema.field("embedding").type.list_size)
    if where is None or not data.num_rows:
        return
    escaped = pc.match_substring_regex(data["metadata_"], r"\\u[dD][89a-fA-F]")  # paired or not: checked below
    if pc.any(escaped).as_py():
        check_encodable(to_passages(data.filter(escaped)), where)


def check_dates(data: pa.Table, where: str) -> None:
    """Refuse, before anything is written, a ``created_at`` outside the years 1-9999 in UTC (a passage's own
    zone can hold one, as 0001-01-01T00:30+01:00): the store would take it, and then no datetime reads it back."""
    import pyarrow as pa
    import pyarrow.compute as pc

    created = data["created_at"].cast(pa.int64())
    outside = pc.or_(pc.less(created, _FIRST_MICROSECOND), pc.greater(created, _LAST_MICROSECOND))
    if data.num_rows and pc.any(outside).as_py():
        row = data.filter(outside).slice(0, 1)
        raise BackendError(f"passage {row['id'][0]} has a created_at outside the years 1-9999 in UTC; nothing of "
                           f"this batch was written to {where}", hint="fix that passage's created_at, then write again")


def repeats_ids(data: pa.Table) -> bool:
    """Whether an id is in the table twice (``insert`` then keeps the last of them)."""
    import pyarrow.compute as pc

    return bool(pc.count_distinct(data["id"]).as_py() != data.num_rows)


def _json_object(text: str) -> bool:
    if text == "{}":
        return True
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def vectors_of(data: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The embeddings of a table in ``schema`` as an (n, dim) float32 array (a view of one chunk's)."""
    import numpy as np
    import pyarrow as pa

    column = data["embedding"]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(data.num_rows, column.type.list_size)


def id_bytes(data: pa.Table | pa.RecordBatch) -> list[bytes]:
    """The 16 bytes of each id of a table in ``schema`` (canonical text: the hex digits, dashes left out)."""
    raw = bytes.fromhex("".join(data["id"].to_pylist()).replace("-", ""))
    return [raw[at:at + 16] for at in range(0, len(raw), 16)]


def rebatched(parts: Iterable[pa.RecordBatch | pa.Table], size: int) -> Iterator[pa.Table]:
    """The rows of ``parts`` (a file's row groups, a stream's batches ending where fragments end) as tables of
    exactly ``size`` rows, the last one shorter."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    held = 0
    for part in parts:
        pending.extend(part.to_batches() if isinstance(part, pa.Table) else [part])
        held += part.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)
