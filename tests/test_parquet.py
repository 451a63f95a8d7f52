"""The Parquet archive: any backend -> file -> the same backend (the restore drill), readable with no toolkit code,
and bad input refused in one line with nothing lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from tests.backend_support import passages
from tests.support import run_toolkit, wait_until
from toolkit.backends import open_store
from toolkit.backends.base import StoreLocation
from toolkit.errors import BackendError, MigrationError, UsageError
from toolkit.migrate import checksum_of, migrate
from toolkit.specs import Spec
from toolkit.testing.stores import TestStore

N, DIM = 120, 24
SIX = ("local", "postgres", "chroma", "chroma-http", "lancedb", "lancedb-s3")
TABLE = "memgpt_archival_memory_agent"


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A directory of the test's own holding only what the test makes (tmp_path also holds the test's HOME)."""
    data = tmp_path / "data"
    data.mkdir()
    return data


def archive(here: Path, name: str = "archive.parquet") -> Spec:
    return Spec("parquet", str(here / name))


def rows_of(spec: Spec, table: str) -> list[tuple[object, ...]]:
    """Every field of every passage, embeddings as float32 bytes: what "identical rows" means."""
    with closing(open_store(spec.store(table))) as store:
        return [(p.id, p.text, p.user_id, p.agent_id, p.doc_id, p.data_source, p.embedding_model,
                 json.dumps(p.metadata, sort_keys=True), p.created_at,
                 np.asarray(p.embedding, dtype="<f4").tobytes())
                for batch in store.scan(50) for p in batch]


def fill_local(here: Path, table: str = TABLE, n: int = N, dim: int = DIM, seed: int = 3) -> Spec:
    spec = Spec("local", str(here / f"local-{seed}-{dim}"))
    with closing(open_store(spec.store(table))) as store:
        store.insert(passages(n, dim, seed))
    return spec


# -- the restore drill, for each of the six backends -----------------------------------------------------------


@pytest.mark.archival_backends(*SIX)
def test_backend_to_archive_and_back_gives_identical_rows(archival_store: TestStore, here: Path) -> None:
    data = passages(N, DIM, seed=5)
    data[3].metadata = {"nested": {"a": [1, 2]}, "k": "v", "é": "ü"}
    data[4].doc_id = uuid.UUID(int=99)
    data[5].agent_id = None
    archival_store.insert(data)
    spec, table = archival_store.spec, archival_store.table
    before = rows_of(spec, table)
    assert len(before) == N
    with closing(archival_store.open()) as store:
        expected = checksum_of(store).hexdigest()
    file = archive(here)

    saved = migrate(spec, file, table=table, batch=37)
    assert saved.verified and saved.rows == N and saved.checksum == expected

    archival_store.store.drop()  # the data is lost; the archive brings it back
    archival_store.store.close()
    assert rows_of(spec, table) == []
    restored = migrate(file, spec, table=table, batch=29)

    assert restored.verified and restored.checksum == expected and restored.destination_before == 0
    assert rows_of(spec, table) == before
    assert rows_of(file, table) == before  # the archive holds the same rows (and is left as it was)


# -- read with no toolkit code ----------------------------------------------------------------------------------


def test_archive_is_read_by_pyarrow_pandas_and_duckdb_alone(here: Path) -> None:
    source = fill_local(here)
    file = archive(here)
    migrate(source, file, batch=50)
    path = file.location
    want = sorted(passages(N, DIM, 3), key=lambda p: str(p.id))

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.num_rows == N and str(table.schema.field("embedding").type) == f"fixed_size_list<element: float>[{DIM}]"
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert table.schema.metadata[b"toolkit.table"] == TABLE.encode()
    assert table.column("id").to_pylist() == [str(p.id) for p in want]

    import pandas as pd

    frame = pd.read_parquet(path)
    assert len(frame) == N and set(frame["embedding_dim"]) == {DIM}
    assert list(frame.iloc[0]["embedding"]) == pytest.approx(list(np.asarray(want[0].embedding)))
    assert json.loads(frame.iloc[0]["metadata"]) == want[0].metadata

    import duckdb

    [(count, dims, first)] = duckdb.sql(f"SELECT count(*), max(embedding_dim), min(embedding[1]) FROM '{path}'").fetchall()
    assert (count, dims) == (N, DIM)
    assert first == pytest.approx(float(min(np.asarray(p.embedding)[0] for p in want)))
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"  # the user's data: never readable by others


def test_a_pandas_written_file_is_read(here: Path) -> None:
    """Embeddings as a variable list of float64, timestamps naive in ns, no embedding_dim, no toolkit marker."""
    import pandas as pd

    want = passages(30, 12, 8)
    path = here / "mine.parquet"
    pd.DataFrame({"id": [str(p.id) for p in want], "user_id": [str(p.user_id) for p in want],
                  "text": [p.text for p in want], "embedding": [list(map(float, p.embedding)) for p in want],
                  "created_at": pd.to_datetime(["2024-01-02 03:04:05.123456"] * 30),
                  "metadata": [json.dumps(p.metadata) for p in want]}).to_parquet(path)
    destination = Spec("local", str(here / "restored"))

    result = migrate(Spec("parquet", str(path)), destination)

    assert result.verified and result.rows == 30
    with closing(open_store(destination.store())) as store:
        got = store.get([want[7].id])[0]
    assert got.text == want[7].text and got.metadata == want[7].metadata and got.agent_id is None
    assert got.created_at.isoformat() == "2024-01-02T03:04:05.123456+00:00"
    np.testing.assert_array_equal(np.asarray(got.embedding), np.asarray(want[7].embedding))
    with closing(open_store(Spec("parquet", str(path)).store())) as foreign:
        with pytest.raises(BackendError, match="was not written by the toolkit"):
            foreign.insert(passages(1, 12, 9))  # a file the toolkit did not write is only read
        with pytest.raises(BackendError, match="not removed"):
            foreign.drop()
    assert pd.read_parquet(path).shape == (30, 6)


# -- refusals: one line, nothing lost ---------------------------------------------------------------------------


def _cli_refusal(*args: str, code: int = 7) -> str:
    done = run_toolkit("migrate", *args)
    assert done.returncode == code, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_an_existing_archive_is_refused_unless_overwrite(here: Path) -> None:
    source = fill_local(here)
    file = archive(here)
    migrate(source, file)
    original = Path(file.location).read_bytes()
    other = fill_local(here, dim=8, seed=4)  # another dimension, too

    for src in (source, other):
        said = _cli_refusal("--from", src.render(), "--to", file.render())
        assert "exists already" in said and "nothing was written" in said and "--overwrite" in said
        assert Path(file.location).read_bytes() == original
    with pytest.raises(MigrationError, match="exists already"):
        migrate(other, file, dry_run=True)
    with closing(open_store(file.store())) as store:
        with pytest.raises(BackendError, match="24-dimensional embeddings, not 8"):
            store.insert(passages(2, 8, 1))
    assert Path(file.location).read_bytes() == original
    assert sorted(os.listdir(here)) == sorted(["archive.parquet", "local-3-24", "local-4-8"])  # no leftovers

    replaced = migrate(other, file, overwrite=True)  # written afresh: the old rows are gone
    assert replaced.verified and rows_of(file, TABLE) == rows_of(other, TABLE)


def test_overwrite_never_replaces_a_file_the_toolkit_did_not_write(here: Path) -> None:
    """Files the toolkit did not write are only read: --overwrite replaced any file (a typo'd name, pandas' file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = fill_local(here)
    notes = here / "notes.txt"
    notes.write_text("my notes")
    foreign = here / "pandas.parquet"
    pq.write_table(pa.table({"id": [str(uuid.uuid4())], "user_id": [str(uuid.uuid4())], "text": ["t"],
                             "embedding": [[0.1, 0.2]]}), foreign)
    before = foreign.read_bytes()

    for target in (notes, foreign):
        said = _cli_refusal("--from", source.render(), "--to", f"parquet://{target}", "--overwrite")
        assert "is not an archive the toolkit wrote; --overwrite does not replace it" in said and "nothing was written" in said
    assert notes.read_text() == "my notes" and foreign.read_bytes() == before
    assert sorted(os.listdir(here)) == ["local-3-24", "notes.txt", "pandas.parquet"]  # no staged file left


@pytest.mark.parametrize("case", ["other schema", "truncated", "damaged", "garbage", "wrong type", "ragged", "dim column",
                                  "bad uuid", "another table", "missing", "directory", "date out of range",
                                  "duplicate id"])
def test_bad_archives_are_refused_in_one_line_naming_the_problem(here: Path, case: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = here / "in.parquet"
    table = "other_table" if case == "another table" else TABLE
    good = fill_local(here, table=table)
    if case in ("truncated", "damaged", "another table", "dim column", "bad uuid"):
        migrate(good, Spec("parquet", str(path)), table=table)
    if case == "other schema":
        pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path)
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "damaged":  # the footer intact, the pages not
        data = bytearray(path.read_bytes())
        data[100:len(data) // 2] = os.urandom(len(data) // 2 - 100)
        path.write_bytes(bytes(data))
    elif case == "garbage":
        path.write_bytes(os.urandom(5000))
    elif case == "wrong type":
        pq.write_table(pa.table({"id": [str(uuid.uuid4())], "user_id": [str(uuid.uuid4())], "text": ["t"],
                                 "embedding": ["0.1,0.2"]}), path)
    elif case == "ragged":
        pq.write_table(pa.table({"id": [str(uuid.uuid4()), str(uuid.uuid4())], "user_id": [str(uuid.uuid4())] * 2,
                                 "text": ["a", "b"], "embedding": [[0.1, 0.2], [0.1, 0.2, 0.3]]}), path)
    elif case in ("dim column", "bad uuid"):
        table = pq.read_table(path)
        column = "embedding_dim" if case == "dim column" else "user_id"
        values = table.column(column).to_pylist()
        values[-1] = 7 if case == "dim column" else "not-a-uuid"
        table = table.set_column(table.schema.get_field_index(column), table.schema.field(column),
                                 pa.array(values, table.schema.field(column).type))
        pq.write_table(table, path)
    elif case == "directory":
        path.mkdir()
    elif case == "duplicate id":  # a copy of it could never be verified: a store keeps one row an id
        ids = [str(uuid.uuid4()) for _ in range(3)]
        pq.write_table(pa.table({"id": [*ids, ids[1]], "user_id": [str(uuid.uuid4())] * 4, "text": ["t"] * 4,
                                 "embedding": [[0.1, 0.2]] * 4}), path, row_group_size=2)
    elif case == "date out of range":  # year 33658: pyarrow holds it, Python's datetime does not
        pq.write_table(pa.table({"id": [str(uuid.uuid4())], "user_id": [str(uuid.uuid4())], "text": ["t"],
                                 "embedding": [[0.1, 0.2]], "created_at": pa.array([10**12], pa.timestamp("s"))}), path)
    expected = {"other schema": "lacks the columns id, user_id, text, embedding", "truncated": "not a readable Parquet",
                "damaged": "cannot be read (",
                "garbage": "not a readable Parquet", "wrong type": "column 'embedding' of type string",
                "ragged": "different lengths in column 'embedding'", "dim column": "in column 'embedding_dim'",
                "bad uuid": "in column 'user_id', not a uuid", "another table": "holds table other_table",
                "missing": "does not exist", "directory": "is a directory",
                "date out of range": "has a date outside the years 1-9999 in column 'created_at'",
                "duplicate id": "twice in column 'id'"}[case]
    before = path.read_bytes() if path.is_file() else None
    destination = here / "dst"

    said = _cli_refusal("--from", f"parquet://{path}", "--to", f"local://{destination}")

    assert expected in said
    assert not destination.exists()  # nothing written
    assert (path.read_bytes() if path.is_file() else None) == before  # the source untouched


def test_an_archive_that_cannot_be_written_is_refused_before_the_copy(here: Path) -> None:
    source = fill_local(here)
    (here / "a-file").write_text("not a directory")

    said = _cli_refusal("--from", source.render(), "--to", f"parquet://{here / 'a-file' / 'archive.parquet'}")

    assert "nothing was written" in said and "a-file is not a directory" in said
    assert (here / "a-file").read_text() == "not a directory"


def test_a_path_that_is_not_utf8_is_refused_in_one_line(here: Path) -> None:
    """A file name of other bytes (latin-1): pyarrow cannot encode it, the migration was an internal error."""
    source = fill_local(here)
    name = os.fsdecode(bytes(here) + b"/caf\xe9.parquet")

    said = _cli_refusal("--from", source.render(), "--to", f"parquet://{name}", code=2)

    assert "is not valid UTF-8" in said
    assert sorted(os.listdir(here)) == ["local-3-24"]


def test_a_fifo_is_refused_not_opened(here: Path) -> None:
    """Opening a FIFO to read it blocks until someone writes: as a source, or as an --overwrite target (checked to be
    an archive), the migration hung, and SIGTERM could not stop it."""
    source = fill_local(here)
    fifo = here / "pipe.parquet"
    os.mkfifo(fifo)

    read = _cli_refusal("--from", f"parquet://{fifo}", "--to", f"local://{here / 'dst'}")
    replaced = _cli_refusal("--from", source.render(), "--to", f"parquet://{fifo}", "--overwrite")

    assert "is not a regular file" in read and not (here / "dst").exists()
    assert "--overwrite does not replace it" in replaced
    assert sorted(os.listdir(here)) == ["local-3-24", "pipe.parquet"]


def test_an_archive_path_that_cannot_be_reached_is_refused_in_one_line(here: Path) -> None:
    """A directory on the way that cannot be searched (another user's: EACCES; as root, a name too long:
    ENAMETOOLONG) was an internal error from the first look at the path."""
    source = fill_local(here)
    unreachable = here / ("n" * 300) / "archive.parquet"

    into = _cli_refusal("--from", source.render(), "--to", f"parquet://{unreachable}")
    out_of = _cli_refusal("--from", f"parquet://{unreachable}", "--to", f"local://{here / 'dst'}")

    assert "cannot reach the archive" in into and "File name too long" in into and "nothing was written" in into
    assert "cannot reach the archive" in out_of and not (here / "dst").exists()


# -- an archive is not a store MemGPT uses --------------------------------------------------------------------


def test_memgpt_is_never_pointed_at_an_archive(here: Path) -> None:
    source = fill_local(here)
    file = archive(here)
    config = Path(os.environ["MEMGPT_CONFIG_PATH"])

    said = _cli_refusal("--from", source.render(), "--to", file.render(), "--switch")

    assert "--switch" in said and "nothing was written" in said
    assert not Path(file.location).exists() and not config.exists()
    with pytest.raises(UsageError, match="MemGPT cannot use a Parquet archive"):
        file.kind.to_memgpt(file)
    done = run_toolkit("configure", "--backend", "parquet", "--no-input")
    assert done.returncode == 2 and "parquet" in done.stderr and not config.exists()
    from toolkit.backends import memgpt_backends, memgpt_types

    assert "parquet" not in memgpt_backends() and None not in memgpt_types()
    said = _cli_refusal("--from", source.render(), "--to", f"local://{here / 'x'}", "--overwrite")
    assert "--overwrite applies to an archive" in said and not (here / "x").exists()


def test_smoke_checks_an_archive_and_leaves_no_file(here: Path) -> None:
    from toolkit import smoke

    result = smoke.check_location(StoreLocation("parquet", str(here / "smoke.parquet")), n=40, dim=16)
    assert result.ok, result.detail
    assert list(here.iterdir()) == []
    temp = here / "tmp"
    temp.mkdir()
    done = run_toolkit("smoke", "--backend", "parquet", "--json", "-n", "20", "--dim", "8", env={"TMPDIR": str(temp)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["results"][0]["result"] == "pass"
    assert list(temp.iterdir()) == []  # its temporary archive is gone


# -- writing: streamed, put in place only when verified ----------------------------------------------------------


def test_the_archive_is_written_one_batch_at_a_time(here: Path) -> None:
    """Bounded memory, by structure: each batch the migration copies is flushed to the file as one row group."""
    import pyarrow.parquet as pq

    source = fill_local(here, n=100)
    file = archive(here)
    migrate(source, file, batch=7)

    meta = pq.ParquetFile(file.location).metadata
    assert meta.num_row_groups == 15
    assert [meta.row_group(i).num_rows for i in range(15)] == [7] * 14 + [2]


def test_reading_an_archive_holds_one_row_group_not_the_file(here: Path) -> None:
    """pyarrow pre-buffers every column chunk of a file by default: a scan of a large archive held all of it."""
    import pyarrow as pa

    source = fill_local(here, n=16000, dim=512)  # 32 MiB of embeddings, in row groups of 250 rows (512 KiB)
    file = archive(here)
    migrate(source, file, batch=250)
    peak = 0
    with closing(open_store(file.store(TABLE))) as store:
        for _ in store.scan(250):
            peak = max(peak, pa.total_allocated_bytes())
    assert peak < 16 << 20, f"{peak >> 20} MiB held while scanning a 32 MiB archive"  # about 10 MiB: a few row groups


def test_two_writers_of_one_archive_never_clobber(here: Path) -> None:
    from toolkit.backends.parquet import ParquetStore

    location = archive(here).store()
    first, second = ParquetStore(location), ParquetStore(location)
    first.stage(overwrite=False)
    first.insert(passages(10, 8, 1))
    [staged] = [here / name for name in os.listdir(here) if name.startswith(".archive.parquet.")]
    os.utime(staged, (1, 1))  # old, but its writer is alive: the next one's sweep leaves it
    second.stage(overwrite=False)
    second.insert(passages(10, 8, 2))
    assert staged.exists()
    first.publish()
    published = Path(location.location).read_bytes()
    with pytest.raises(BackendError, match="appeared while it was being written"):
        second.publish()
    late = Path(archive(here, "late.parquet").location)
    with pytest.raises(MigrationError, match="appeared while it was being written; nothing was written"):
        # the same through a migration (a refusal, exit 7): another writer's file lands while this one verifies
        migrate(fill_local(here), archive(here, "late.parquet"), on_verify=lambda: late.write_text("theirs"))
    assert late.read_text() == "theirs"
    second.close()
    first.close()
    assert Path(location.location).read_bytes() == published
    assert sorted(os.listdir(here)) == ["archive.parquet", "late.parquet", "local-3-24"]  # no staged file is left


def test_the_sweep_removes_only_our_own_dead_files(here: Path) -> None:
    """In a shared directory anyone may put a file under a staged file's name: a FIFO there hung the migration
    (opened to be locked), and another user's file or a symlink is not ours to remove."""
    source = fill_local(here)
    dead, fifo, link, theirs = (here / f".archive.parquet.{name}.tmp" for name in ("dead", "fifo", "link", "theirs"))
    dead.write_bytes(b"left by a killed writer")
    os.mkfifo(fifo)
    (here / "target").write_text("kept")
    link.symlink_to(here / "target")
    theirs.write_text("another user's")
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    for name in (dead, fifo, link, theirs):
        os.utime(name, (1, 1), follow_symlinks=False)

    done = run_toolkit("migrate", "--from", source.render(), "--to", archive(here).render())

    assert done.returncode == 0, done.stderr
    assert not dead.exists()
    assert fifo.exists() and link.is_symlink() and (here / "target").read_text() == "kept"
    assert theirs.exists() or os.geteuid() != 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_migration_leaves_no_archive(here: Path, stop: signal.Signals) -> None:
    source = fill_local(here, n=20000, dim=64)
    file = archive(here)
    argv = [sys.executable, "-m", "toolkit", "migrate", "--from", source.render(), "--to", file.render(),
            "--batch", "5"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def staged() -> bool:
            assert child.poll() is None, "the migration ended before it could be interrupted; raise n"
            sizes = []
            for name in os.listdir(here):
                if name.startswith(".archive.parquet."):
                    with contextlib.suppress(FileNotFoundError):  # stage()'s probe of the directory comes and goes
                        sizes.append((here / name).stat().st_size)
            return any(sizes)

        wait_until(staged, 60, "the staged archive to be written", interval=0.01)
        os.kill(child.pid, stop)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    left = sorted(os.listdir(here))
    if stop == signal.SIGINT:
        assert child.returncode == 130, err
        assert left == ["local-3-64"]  # no archive, and no staged file either
    else:  # killed outright: its hidden staged file stays, never the archive; the next run sweeps it once stale
        assert child.returncode == -signal.SIGKILL
        assert left[-1] == "local-3-64" and all(name.startswith(".archive.parquet.") for name in left[:-1])
        for name in left[:-1]:
            os.utime(here / name, (1, 1))

    result = migrate(source, file, batch=500)  # a re-run writes it afresh
    assert result.verified and result.destination_before == 0 and rows_of(file, TABLE) == rows_of(source, TABLE)
    assert sorted(os.listdir(here)) == ["archive.parquet", "local-3-64"]
