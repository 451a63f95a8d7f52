"""Passages as Arrow columns (toolkit/backends/columns.py): what a store's ``scan_columns`` hands on and its
``insert_columns`` takes must be exactly what the passages of the same rows give, so a migration between
stores that speak Arrow (local, lancedb) writes the same table as one through Passage objects. Real local
segment files (some lines edited by hand, as users do) and real LanceDB tables in both formats."""

from __future__ import annotations

import json
import uuid
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pytest

from tests.backend_support import passages
from toolkit import migrate as migrate_module
from toolkit.backends import Passage, StoreLocation, open_store
from toolkit.backends import lancedb as lance_backend
from toolkit.backends.columns import conform, from_passages, to_passages
from toolkit.migrate import Checksum, checksum_of, migrate
from toolkit.specs import Spec

TABLE = "t_columns"


def _awkward(n: int = 40) -> list[Passage]:
    rows = passages(n, 8, 3)
    rows[0].metadata = {"nested": {"b": [1, 2], "a": "é"}, "z": None}
    rows[1].metadata = {}
    rows[2].created_at = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=timezone.utc)
    rows[3].doc_id = uuid.UUID(int=99)
    rows[4].text = "tabs\tand\nnewlines and 🙂"
    rows[5].data_source = None
    rows[6].embedding_model = None
    return rows


def _as_table(batch: pa.Table | list[Passage]) -> pa.Table:
    if isinstance(batch, list):
        return from_passages(batch, np.stack([np.asarray(p.embedding, dtype=np.float32) for p in batch]))
    return batch


def _key(p: Passage) -> tuple[Any, ...]:
    return (p.id, p.user_id, p.agent_id, p.doc_id, p.text, p.data_source, p.embedding_model,
            json.dumps(p.metadata, sort_keys=True), p.created_at, np.asarray(p.embedding, dtype=np.float32).tobytes())


def _same_as_passages(store: Any, batch_size: int) -> list[str]:
    """Compare scan_columns with scan, batch by batch; the kinds of batch seen ("table" / "passages")."""
    kinds = []
    for columns, rows in zip(store.scan_columns(batch_size), store.scan(batch_size), strict=True):
        if isinstance(columns, list):
            kinds.append("passages")
            assert list(map(_key, columns)) == list(map(_key, rows))
        else:
            kinds.append("table")
            assert columns.equals(_as_table(rows)), "scan_columns differs from the passages of scan"
    return kinds


def _edit_line(table_dir: Path, number: int, change: Any) -> None:
    """Rewrite line ``number`` of the table's only segment's JSONL as a hand edit would (same length or not)."""
    [jsonl] = sorted(table_dir.glob("*.jsonl"))
    lines = jsonl.read_bytes().splitlines(keepends=True)
    row = json.loads(lines[number])
    change(row)
    lines[number] = json.dumps(row).encode() + b"\n"
    jsonl.write_bytes(b"".join(lines))


def test_local_columns_are_the_passages_of_its_rows(tmp_path: Path) -> None:
    location = StoreLocation("local", str(tmp_path / "local"), TABLE)
    rows = _awkward()
    rows[7].created_at = datetime(2020, 1, 1, 12, 0)  # no zone: read as UTC
    with closing(open_store(location)) as store:
        store.insert(rows)  # one segment
        assert _same_as_passages(store, 16) == ["table"] * 3
    # hand edits that passages read in their own way (an id without dashes, an owner in braces) or that a
    # table cannot hold (a lone surrogate) leave their batch to passages; the other batches stay columns
    [segment_dir] = {p.parent for p in (tmp_path / "local").rglob("*.jsonl")}
    _edit_line(segment_dir, 0, lambda row: row.update(id=uuid.UUID(row["id"]).hex))
    _edit_line(segment_dir, 20, lambda row: row.update(user_id="{" + row["user_id"] + "}"))
    _edit_line(segment_dir, 39, lambda row: row.update(text="lone \udc80"))
    with closing(open_store(location)) as store:
        assert _same_as_passages(store, 16) == ["passages", "passages", "passages"]
        assert _same_as_passages(store, 10) == ["passages", "table", "passages", "passages"]
        assert checksum_of(store).hexdigest() == _checksum_of_passages(store)


def _checksum_of_passages(store: Any) -> str:
    total = Checksum()
    for rows in store.scan(7):
        total.update(rows)
    return total.hexdigest()


@pytest.mark.parametrize("fmt", ["legacy", "stable"])
def test_lancedb_columns_round_trip_and_insert_like_passages(tmp_path: Path, fmt: str) -> None:
    rows = _awkward(50)
    by_passages = StoreLocation("lancedb", str(tmp_path / "a"), TABLE, format=fmt)
    by_columns = StoreLocation("lancedb", str(tmp_path / "b"), TABLE, format=fmt)
    with closing(open_store(by_passages)) as a, closing(open_store(by_columns)) as b:
        a.insert(rows)
        assert _same_as_passages(a, 16) == ["table"] * 4
        for batch in a.scan_columns(16):
            b.insert_columns(batch)
        b.insert_columns(next(iter(a.scan_columns(50))))  # again: every id is there, so the upsert
        assert b.count() == 50
        assert _sorted(b).equals(_sorted(a))
        assert list(map(_key, to_passages(_sorted(b)))) == list(map(_key, to_passages(_sorted(a))))


def _sorted(store: Any) -> pa.Table:
    return pa.concat_tables(_as_table(t) for t in store.scan_columns(1000)).sort_by("id")


def test_lancedb_insert_columns_keeps_the_last_of_a_repeated_id(tmp_path: Path) -> None:
    rows = passages(5, 8, 4)
    again = Passage(**{**rows[2].__dict__, "text": "the second one"})
    data = _as_table([*rows, again])
    with closing(open_store(StoreLocation("lancedb", str(tmp_path / "l"), TABLE))) as store:
        assert store.insert_columns(data) == 5
        assert store.count() == 5 and store.get([rows[2].id])[0].text == "the second one"


def test_a_table_in_another_layout_is_read_as_passages(tmp_path: Path) -> None:
    """A LanceDB table whose columns differ from ours (a naive timestamp, no embedding_dim, a variable-length
    list: as another writer may leave it) is scanned as passages and migrates all the same."""
    import lancedb

    rows = passages(30, 8, 5)
    data = pa.table({"id": [str(p.id) for p in rows], "user_id": [str(p.user_id) for p in rows],
                     "agent_id": [str(p.agent_id) for p in rows], "doc_id": [None] * 30,
                     "text": [p.text for p in rows], "data_source": ["x"] * 30,
                     "embedding": pa.array([list(map(float, p.embedding)) for p in rows], pa.list_(pa.float32(), 8)),
                     "embedding_model": ["m"] * 30, "metadata_": ["null"] * 30,
                     "created_at": pa.array([datetime(2023, 5, 1)] * 30, pa.timestamp("us"))})
    lancedb.connect(str(tmp_path / "other")).create_table(TABLE, data=data)
    source = Spec("lancedb", str(tmp_path / "other"))
    with closing(open_store(source.store(TABLE))) as store:
        assert all(isinstance(batch, list) for batch in store.scan_columns(10))
        assert conform(data) is None
    result = migrate(source, Spec("local", str(tmp_path / "local")), table=TABLE)
    assert result.verified and result.copied == 30
    back = migrate(Spec("local", str(tmp_path / "local")), Spec("lancedb", str(tmp_path / "again")), table=TABLE)
    assert back.verified and back.checksum == result.checksum
    with closing(open_store(Spec("lancedb", str(tmp_path / "again")).store(TABLE))) as store:
        got = {p.id: p for batch in store.scan(100) for p in batch}
    assert got[rows[0].id].metadata == {} and got[rows[0].id].created_at == datetime(2023, 5, 1, tzinfo=timezone.utc)


@runtime_checkable
class _NoStore(Protocol):
    def not_a_method_of_any_store(self) -> None: ...


def test_migrate_through_columns_writes_what_passages_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """local -> lancedb moves columns; with the columns turned off it moves passages: the same table either way."""
    source = Spec("local", str(tmp_path / "src"))
    with closing(open_store(source.store(TABLE))) as store:
        store.insert(_awkward(300))
    inserted: list[str] = []
    real_columns, real_insert = lance_backend.LanceStore.insert_columns, lance_backend.LanceStore.insert

    def insert_columns(self: Any, data: pa.Table) -> int:
        inserted.append("columns")
        return real_columns(self, data)

    def insert(self: Any, rows: list[Passage]) -> int:
        inserted.append("passages")
        return real_insert(self, rows)

    monkeypatch.setattr(lance_backend.LanceStore, "insert_columns", insert_columns)
    monkeypatch.setattr(lance_backend.LanceStore, "insert", insert)
    fast = migrate(source, Spec("lancedb", str(tmp_path / "fast")), table=TABLE, batch=100)
    assert inserted == ["columns"] * 3
    monkeypatch.setattr(migrate_module, "InsertsColumns", _NoStore)  # the destination takes passages only
    inserted.clear()
    slow = migrate(source, Spec("lancedb", str(tmp_path / "slow")), table=TABLE, batch=100)
    assert inserted == ["passages"] * 3
    assert fast.checksum == slow.checksum and fast.verified and slow.verified
    tables = []
    for name in ("fast", "slow"):
        with closing(open_store(Spec("lancedb", str(tmp_path / name)).store(TABLE))) as store:
            tables.append(_sorted(store))
    assert tables[0].equals(tables[1])


def test_conform_refuses_what_passages_would_change() -> None:
    """A table in our layout is passed on as it is only where passages would give it back unchanged."""
    import pyarrow.compute as pc

    rows = passages(4, 8, 6)
    data = _as_table(rows)
    assert conform(data) is not None and conform(data).equals(data)  # type: ignore[union-attr]

    def with_column(name: str, values: list[Any]) -> pa.Table:
        return data.set_column(data.schema.get_field_index(name), name, pa.array(values, data.schema.field(name).type))

    assert conform(with_column("metadata_", ["null", "{}", "{}", "{}"])) is None  # passages: {} -> "{}"
    assert conform(with_column("metadata_", [None, "{}", "{}", "{}"])) is None
    assert conform(with_column("id", [rows[0].id.hex] + [str(p.id) for p in rows[1:]])) is None  # no dashes
    assert conform(with_column("agent_id", [None] * 4)) is not None  # owners may be missing
    assert conform(with_column("embedding_dim", [8, 8, 7, 8])) is None
    holed = pa.FixedSizeListArray.from_arrays(pa.array([None if i == 9 else 0.5 for i in range(32)], pa.float32()), 8)
    assert conform(data.set_column(data.schema.get_field_index("embedding"), "embedding", holed)) is None  # passages: NaN
    assert conform(data.drop_columns(["embedding_dim"])) is None
    assert pc.all(pc.equal(conform(data)["embedding_dim"], 8)).as_py()  # type: ignore[index]


def test_local_insert_columns_writes_the_files_insert_writes(tmp_path: Path) -> None:
    """The same segment files, byte for byte, as insert of the passages the table holds."""
    rows = to_passages(_as_table(_awkward(60)))  # as read from a table: metadata keys sorted, times in UTC
    stores = [StoreLocation("local", str(tmp_path / name), TABLE) for name in ("passages", "columns")]
    with closing(open_store(stores[0])) as by_passages, closing(open_store(stores[1])) as by_columns:
        by_passages.insert(list(reversed(rows[:30])))
        by_passages.insert(rows[20:])  # ids 20-29 again: the upsert
        assert by_columns.insert_columns(_as_table(list(reversed(rows[:30])))) == 30
        assert by_columns.insert_columns(_as_table(rows[20:])) == 40
        assert by_columns.insert_columns(_as_table([rows[0], rows[1], rows[0]])) == 2  # a repeated id: the last wins
        by_passages.insert([rows[0], rows[1], rows[0]])
        assert by_columns.count() == by_passages.count() == 60
    files = [sorted(p for p in (tmp_path / name / TABLE).iterdir() if p.suffix in (".npy", ".jsonl"))
             for name in ("passages", "columns")]
    assert [p.name for p in files[0]] == [p.name for p in files[1]] and files[0]
    for a, b in zip(*files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_parquet_columns_are_what_its_passages_give(tmp_path: Path) -> None:
    """An archive written from columns is the archive written from their passages (read back equal, file
    metadata included), and its scan_columns gives what from_passages makes of its scan."""
    import pyarrow.parquet as pq

    data = _as_table(to_passages(_as_table(_awkward(70))))
    written = []
    for name, write in (("passages", lambda store: store.insert(to_passages(data))),
                        ("columns", lambda store: store.insert_columns(data))):
        spec = Spec("parquet", str(tmp_path / f"{name}.parquet"))
        with closing(open_store(spec.store(TABLE))) as store:
            assert write(store) == 70
            assert _same_as_passages(store, 32) == ["table"] * 3
        written.append(pq.read_table(spec.location))
    assert written[0].equals(written[1]) and written[0].schema.metadata == written[1].schema.metadata
    with closing(open_store(Spec("parquet", str(tmp_path / "again.parquet")).store(TABLE))) as store:
        assert store.insert_columns(_as_table([*to_passages(data)[:3], to_passages(data)[0]])) == 3  # repeated id
        assert store.count() == 3


def test_local_lines_write_times_as_isoformat_does() -> None:
    from toolkit.backends.local import _isoformat_utc

    rng = np.random.default_rng(9)
    micros = np.concatenate([rng.integers(-62_135_596_800_000_000, 253_402_300_799_999_999, 2000),
                             rng.integers(-10**15, 10**15, 2000) // 1_000_000 * 1_000_000,  # whole seconds
                             [-62_135_596_800_000_000, 253_402_300_799_999_999, 0, -1, 1]])
    column = pa.chunked_array([pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))])
    expected = [at.replace(tzinfo=timezone.utc).isoformat() for at in column.cast(pa.timestamp("us")).to_pylist()]
    assert _isoformat_utc(column) == expected
    outside = pa.table({**{n: _as_table(passages(1, 8))[n] for n in _as_table(passages(1, 8)).column_names},
                        "created_at": pa.array([253_402_300_800_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    assert conform(outside) is None  # year 10000: passages cannot hold it, so neither do the columns


def test_parquet_columns_read_a_missing_text_as_its_passages_do(tmp_path: Path) -> None:
    """An archive another tool wrote with a null text: its passages read "", and so must its columns (a null
    went on as null, into a local line as "text": null, while the checksum, blind to it, verified)."""
    import pyarrow.parquet as pq

    from toolkit.backends.parquet import arrow_table

    data = arrow_table(passages(12, 8, 7), TABLE)
    texts = [None, *data["text"].to_pylist()[1:]]
    pq.write_table(data.set_column(data.schema.get_field_index("text"), "text", pa.array(texts, pa.large_string())),
                   tmp_path / "large.parquet")  # as another tool may type it
    with closing(open_store(Spec("parquet", str(tmp_path / "large.parquet")).store(TABLE))) as store:
        assert _same_as_passages(store, 5) == ["table"] * 3
    data = data.set_column(data.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    pq.write_table(data, tmp_path / "archive.parquet")
    with closing(open_store(Spec("parquet", str(tmp_path / "archive.parquet")).store(TABLE))) as store:
        assert _same_as_passages(store, 5) == ["table"] * 3
    migrate(Spec("parquet", str(tmp_path / "archive.parquet")), Spec("local", str(tmp_path / "local")), table=TABLE)
    with closing(open_store(Spec("local", str(tmp_path / "local")).store(TABLE))) as store:
        assert sorted(p.text for batch in store.scan(100) for p in batch)[0] == ""


@pytest.mark.parametrize("backend", ["local", "lancedb", "parquet"])
def test_insert_columns_refuses_what_insert_refuses(tmp_path: Path, backend: str) -> None:
    """Embeddings wider than MemGPT stores, and (where insert checks it) metadata escaping a lone surrogate,
    are refused before anything is written, as insert refuses their passages; a surrogate pair is not."""
    from toolkit.errors import BackendError

    location = str(tmp_path / "store") + (".parquet" if backend == "parquet" else "")
    with closing(open_store(StoreLocation(backend, location, TABLE))) as store:
        wide = passages(2, 4097, 8)
        for write in (store.insert, lambda rows: store.insert_columns(_as_table(rows))):
            with pytest.raises(BackendError, match="embedding dimension 4097 is out of range"):
                write(wide)
        rows = passages(3, 8, 9)
        rows[1].metadata = {"k": "half \ud800 of a pair"}
        refused = [None, None]
        for n, write in enumerate((store.insert, lambda rows: store.insert_columns(_as_table(rows)))):
            try:
                write(rows)
            except BackendError as exc:
                refused[n] = exc.message
        assert refused[0] == refused[1]
        assert (refused[1] is None) == (backend == "local"), refused  # local's JSON escapes it
        rows[1].metadata = {"k": "a pair 🙂 (JSON escapes it as two)", "\\ud800": "an escaped backslash"}
        assert store.insert_columns(_as_table(rows)) == 3
        assert store.get([rows[1].id])[0].metadata == rows[1].metadata


def test_local_lines_hold_no_carriage_return_from_metadata_text(tmp_path: Path) -> None:
    """Metadata text passed on as its source wrote it keeps to one line for every reader: a raw CR (JSON
    whitespace) ends a line in Python's text mode, so that text is written again as insert writes it."""
    rows = passages(3, 8, 10)
    data = _as_table(rows)
    data = data.set_column(data.schema.get_field_index("metadata_"), "metadata_",
                           pa.array(['{"a":\r1}', '{"b":\n2}', "{}"], pa.string()))
    assert conform(data) is not None
    with closing(open_store(StoreLocation("local", str(tmp_path / "local"), TABLE))) as store:
        store.insert_columns(data)
        assert store.get([rows[0].id])[0].metadata == {"a": 1}
    [jsonl] = (tmp_path / "local").rglob("*.jsonl")
    assert b"\r" not in jsonl.read_bytes()
    with open(jsonl) as lines:  # universal newlines
        assert len(list(lines)) == 3


def test_lancedb_refuses_a_time_no_datetime_reads_back(tmp_path: Path) -> None:
    """A created_at inside the years 1-9999 in its own zone but not in UTC (a local line may hold one): LanceDB
    stored it, and then the migration's read-back failed with a traceback (OverflowError), the rows written.
    Refused before writing now, a line naming the passage, through passages and columns alike."""
    from datetime import timedelta

    from toolkit.errors import BackendError

    rows = passages(4, 8, 11)
    rows[2].created_at = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    source = Spec("local", str(tmp_path / "local"))
    with closing(open_store(source.store(TABLE))) as store:
        store.insert(rows)
    with pytest.raises(BackendError, match=f"passage {rows[2].id} has a created_at outside the years 1-9999"):
        migrate(source, Spec("lancedb", str(tmp_path / "lance")), table=TABLE)
    with closing(open_store(StoreLocation("lancedb", str(tmp_path / "lance"), TABLE))) as store:
        assert store.count() == 0
        with pytest.raises(BackendError, match="outside the years 1-9999"):
            store.insert(rows)
        data = from_passages(rows, np.stack([p.embedding for p in rows]).astype(np.float32))
        with pytest.raises(BackendError, match="outside the years 1-9999"):
            store.insert_columns(data)
        assert store.count() == 0


def test_a_lancedb_table_passages_cannot_read_is_refused_in_a_line(tmp_path: Path) -> None:
    """A table another writer made (no created_at column, a null time, metadata that is not JSON) goes as
    passages, which cannot read it: a line naming the table, where a KeyError, AttributeError or
    JSONDecodeError traceback came out of the scan."""
    import lancedb

    from toolkit.errors import ToolkitError

    rows = passages(6, 8, 12)
    base = {"id": [str(p.id) for p in rows], "user_id": [str(p.user_id) for p in rows], "agent_id": [None] * 6,
            "doc_id": [None] * 6, "text": [p.text for p in rows], "data_source": ["x"] * 6,
            "embedding": pa.array([list(map(float, p.embedding)) for p in rows], pa.list_(pa.float32(), 8)),
            "embedding_model": ["m"] * 6, "metadata_": ["{}"] * 6}
    at = pa.array([datetime(2023, 5, 1)] * 6, pa.timestamp("us"))
    for name, data in (("no_time", base), ("null_time", {**base, "created_at": pa.array([None] * 6, pa.timestamp("us"))}),
                       ("not_json", {**base, "created_at": at, "metadata_": ["{}"] * 5 + ["not json"]})):
        lancedb.connect(str(tmp_path / name)).create_table(TABLE, data=pa.table(data))
        with pytest.raises(ToolkitError, match=f"cannot read the lancedb table {TABLE} at .*{name}"):  # refused or failed
            migrate(Spec("lancedb", str(tmp_path / name)), Spec("local", str(tmp_path / f"{name}-out")), table=TABLE)
        with closing(open_store(Spec("lancedb", str(tmp_path / name)).store(TABLE))) as store:  # get, query: the same
            for read in (lambda: store.get([p.id for p in rows]), lambda: store.query(rows[0].embedding, 6)):
                with pytest.raises(ToolkitError, match=f"cannot read the lancedb table {TABLE} at .*{name}"):
                    read()
