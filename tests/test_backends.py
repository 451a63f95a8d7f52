"""The ArchivalStore conformance suite, run against every backend with real servers, and each
backend's error paths (dimension mismatch, unreachable server, unwritable path, refused credentials)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.backend_support import AGENTS, USER, passages, s3_options, service_settings
from tests.support import REPO, wait_until
from toolkit.backends import BACKENDS, ArchivalStore, StoreLocation, open_store
from toolkit.backends.base import Filters, Passage
from toolkit.errors import BackendError, UsageError
from toolkit.ports import free_port
from toolkit.testing.databases import TestDatabase

ALL = ("local", "postgres", "chroma", "chroma-http", "lancedb", "lancedb-s3", "parquet")


@pytest.fixture(params=ALL)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """A fresh table in one backend; the table is dropped after the test."""
    backend = request.param
    table = f"t_{uuid.uuid4().hex[:10]}"
    if backend == "postgres":
        where, options = request.getfixturevalue("pg_url"), {}
    elif backend == "chroma-http":
        server = request.getfixturevalue("chroma_http")
        where, options = f"{server.host}:{server.port}", {}
    elif backend == "lancedb-s3":
        server = request.getfixturevalue("s3")
        where, options = f"s3://toolkit/{uuid.uuid4().hex[:8]}", s3_options(server)
    else:
        where, options = str(tmp_path / backend), {}
    loc = StoreLocation(backend, where, table, options)
    yield loc
    with open_store(loc) as store:
        store.drop()


def test_registry_covers_every_backend() -> None:
    assert set(BACKENDS) == set(ALL)


def test_conformance(location: StoreLocation) -> None:
    with open_store(location) as store:
        assert isinstance(store, ArchivalStore)
        assert store.name == location.backend
        data = passages(40, dim=32)
        data[3].metadata = {"nested": {"a": [1, 2]}, "k": "v"}
        data[4].doc_id = uuid.UUID(int=7)
        assert store.insert(data) == 40
        assert store.exists()
        assert store.count() == 40
        assert store.count(Filters(agent_id=AGENTS[0])) == 20
        assert store.count(Filters(user_id=USER, agent_id=AGENTS[1])) == 20
        assert store.count(Filters(doc_id=uuid.UUID(int=7))) == 1

        for p in data[::5] + [data[3], data[4]]:
            nearest = store.query(p.embedding, 3)
            assert [n.id for n in nearest][:1] == [p.id]
            got = nearest[0]
            assert (got.text, got.user_id, got.agent_id, got.doc_id, got.data_source, got.embedding_model) == \
                (p.text, p.user_id, p.agent_id, p.doc_id, p.data_source, p.embedding_model)
            assert got.metadata == p.metadata
            assert got.embedding_dim == 32
            np.testing.assert_allclose(np.asarray(got.embedding), np.asarray(p.embedding), rtol=1e-6)
            assert abs((got.created_at - p.created_at).total_seconds()) < 1e-3

        filtered = store.query(data[1].embedding, 6, Filters(agent_id=AGENTS[0]))
        assert len(filtered) == 6 and all(p.agent_id == AGENTS[0] for p in filtered)

        wanted = [data[9].id, uuid.uuid4(), data[2].id, data[9].id]  # order kept, unknown and repeated ids dropped
        fetched = store.get(wanted)
        assert [p.id for p in fetched] == [data[9].id, data[2].id]
        assert fetched[1].text == data[2].text and fetched[1].metadata == data[2].metadata
        np.testing.assert_allclose(np.asarray(fetched[0].embedding), np.asarray(data[9].embedding), rtol=1e-6)
        assert store.get([]) == []

        batches = list(store.scan(7))
        assert [len(b) for b in batches] == [7, 7, 7, 7, 7, 5]
        ids = [p.id for b in batches for p in b]
        assert sorted(ids) == sorted(p.id for p in data)
        if not location.backend.startswith("lancedb"):  # LanceDB scans in the table's own order
            assert ids == sorted(p.id for p in data)

        assert store.delete([data[0].id, data[1].id, data[1].id, uuid.uuid4()]) == 2
        assert store.count() == 38
        assert store.query(data[0].embedding, 1)[0].id != data[0].id

        store.drop()
        assert not store.exists() and store.count() == 0
        store.drop()  # idempotent


def test_upsert_is_idempotent(location: StoreLocation) -> None:
    data = passages(20, dim=8)
    with open_store(location) as store:
        store.insert(data)
        store.insert(data)  # the duplicate-id load that failed in the original project
        changed = replace(data[2], text="changed")
        store.insert([changed, changed])  # duplicates within one batch too
        assert store.count() == 20
        assert store.query(data[2].embedding, 1)[0].text == "changed"
    with open_store(location) as again:  # a new client sees the same table
        assert again.count() == 20


def test_missing_table_reads_as_empty_and_is_not_created(location: StoreLocation) -> None:
    with open_store(location) as store:
        assert not store.exists()
        assert store.count() == 0
        assert store.query(np.zeros(8, dtype=np.float32), 3) == []
        assert list(store.scan(10)) == []
        assert store.delete([uuid.uuid4()]) == 0
        assert not store.exists()


def test_dimension_mismatch_is_one_line_with_a_fix(location: StoreLocation) -> None:
    with open_store(location) as store:
        store.insert(passages(3, dim=16))
        with pytest.raises(BackendError) as info:
            store.insert(passages(2, dim=8, seed=9))
        message = info.value.one_line()
        assert "16-dimensional" in message and "not 8" in message and "\n" not in message
        assert store.count() == 3


def test_bad_names_and_backends_are_refused() -> None:
    with pytest.raises(UsageError):
        open_store(StoreLocation("nope", "/tmp/x"))
    with pytest.raises(UsageError):
        open_store(StoreLocation("local", "/tmp/x", "bad name; drop table"))


# -- Postgres: MemGPT's layout, readable by plain SQL ------------------------------------------------

def test_postgres_rows_are_memgpt_rows(pgvector_db: TestDatabase) -> None:
    import psycopg

    pg_url = pgvector_db.libpq_url
    table = f"t_{uuid.uuid4().hex[:10]}"
    data = passages(5, dim=12)
    with open_store(StoreLocation("postgres", pg_url, table)) as store:
        store.insert(data)
        with psycopg.connect(pg_url) as conn:
            columns = dict(conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
                "JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attname = c.column_name "
                "WHERE c.table_name = %s", [table, table]).fetchall())
            assert columns == {"id": "uuid", "user_id": "uuid", "text": "character varying", "doc_id": "uuid",
                               "agent_id": "uuid", "data_source": "character varying",
                               "embedding": "vector(4096)", "embedding_dim": "bigint",
                               "embedding_model": "character varying", "metadata_": "json",
                               "created_at": "timestamp with time zone"}
            row = conn.execute(f"SELECT id, user_id, text, embedding::text, embedding_dim, metadata_->>'tag' "
                               f"FROM {table} WHERE text = 'passage 2'").fetchone()
            assert row is not None
            assert row[0] == data[2].id and row[1] == USER and row[4] == 12 and row[5] == "x"
            values = [float(v) for v in row[3].strip("[]").split(",")]
            assert len(values) == 4096 and not any(values[12:])
            np.testing.assert_allclose(values[:12], data[2].embedding, rtol=1e-6)
            # a row written by SQL as MemGPT writes it (zero-padded) reads back cut to its dimension
            padded = "[" + ",".join(["0.5"] * 3 + ["0"] * 4093) + "]"
            conn.execute(f"INSERT INTO {table} (id, user_id, text, embedding, embedding_dim, metadata_, created_at) "
                         "VALUES (%s, %s, 'by sql', %s::vector, 12, '{}', now())", [uuid.uuid4(), USER, padded])
        assert store.count() == 6
        found = [p for batch in store.scan(10) for p in batch if p.text == "by sql"]
        assert len(found) == 1 and found[0].embedding_dim == 12
        store.drop()


def test_postgres_without_vector_extension(pg_settings, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from toolkit.engines.embedded import EmbeddedEngine

    admin = EmbeddedEngine(pg_settings)._superuser_url()
    admin = replace(admin, host="127.0.0.1")
    name = f"novector_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin.libpq, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {pg_settings.db.user}")
    try:
        url = pg_url.rsplit("/", 1)[0] + "/" + name
        with pytest.raises(BackendError) as info:
            open_store(StoreLocation("postgres", url, "t_missing")).count()
        assert "vector extension is missing" in info.value.one_line()
        assert "CREATE EXTENSION vector" in info.value.one_line()
    finally:
        with psycopg.connect(admin.libpq, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")


def test_postgres_unreachable_names_the_fix() -> None:
    url = f"postgresql://memgpt:secret@127.0.0.1:{free_port()}/memgpt"
    with pytest.raises(BackendError) as info:
        open_store(StoreLocation("postgres", url, "t_x")).count()
    line = info.value.one_line()
    assert "toolkit up" in line and "secret" not in line


# -- unreachable servers, unwritable paths, refused credentials --------------------------------------

def test_chroma_server_stopped_mid_run(tmp_path: Path) -> None:
    from toolkit.services.chroma_server import chroma_server
    from toolkit.settings import resolve

    server = chroma_server(resolve({"state_dir": str(tmp_path / "state")}, environ={}, project_dir=tmp_path),
                           port=free_port())
    server.up(timeout=120)
    try:
        store = open_store(StoreLocation("chroma-http", f"127.0.0.1:{server.port}", "t_stop"))
        store.insert(passages(5, dim=8))
    finally:
        server.down()
    with pytest.raises(BackendError) as info:
        store.count()
    assert "unreachable" in info.value.one_line() and "toolkit chroma up" in info.value.one_line()
    with pytest.raises(BackendError, match="unreachable"):
        open_store(StoreLocation("chroma-http", f"127.0.0.1:{server.port}", "t_stop"))


@pytest.mark.parametrize("backend", ["local", "chroma", "lancedb"])
def test_unwritable_path_fails_cleanly(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "unwritable"
    root.mkdir()
    blocker = root / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(BackendError) as info:
        with open_store(StoreLocation(backend, str(blocker / "store"), "t_x")) as store:
            store.insert(passages(3, dim=8))
    assert "writable" in info.value.one_line() or "not usable" in info.value.one_line()
    assert blocker.read_text() == "not a directory"
    assert sorted(p.name for p in root.iterdir()) == ["a-file"]


def test_s3_credentials_refused(tmp_path: Path) -> None:
    """moto with IAM checks on: unknown keys get 403, which must read as a credentials problem."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from toolkit.services.s3_server import s3_server

        server = s3_server(service_settings(tmp_path), port=port)

        def answers() -> bool:
            assert process.poll() is None, f"moto exited with {process.returncode} before answering"
            return server.healthy()

        wait_until(answers, 60, f"moto (IAM checks on) to answer on port {port}")
        location = StoreLocation("lancedb-s3", "s3://toolkit/x", "t_x", s3_options(server))
        with pytest.raises(BackendError) as info:
            with open_store(location) as store:
                store.insert(passages(2, dim=8))
        line = info.value.one_line()
        assert "refused the credentials" in line and "AWS_ACCESS_KEY_ID" in line and "testing" not in line
    finally:
        process.terminate()
        process.wait(timeout=30)


def _closed_port_with_403() -> int:
    """A closed port whose number holds "403": lance's error carries the URL, which once read as HTTP 403."""
    for port in range(40300, 40400):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail("every port in 40300-40399 answers on this machine")


def test_s3_unreachable_names_the_fix() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port_with_403()}"
    options = {"aws_endpoint": endpoint, "aws_region": "us-east-1", "allow_http": "true",
               "aws_access_key_id": "k", "aws_secret_access_key": "s"}
    with pytest.raises(BackendError) as info:
        with open_store(StoreLocation("lancedb-s3", "s3://toolkit/x", "t_x", options)) as store:
            store.insert(passages(2, dim=8))
    line = info.value.one_line()
    assert f"{endpoint} is unreachable" in line and "toolkit s3 up" in line and "credentials" not in line


def test_passages_have_numpy_embeddings(tmp_path: Path) -> None:
    with open_store(StoreLocation("local", str(tmp_path), "t_np")) as store:
        store.insert([Passage(text="a", embedding=[0.0, 1.0], user_id=USER)])
        (got,) = store.query([0.0, 1.0], 1)
        assert isinstance(got.embedding, np.ndarray) and got.embedding.dtype == np.float32


def test_local_segments_replacements_and_deletes_read_back_exactly(tmp_path: Path) -> None:
    """Many segments, ids in random order, rows replaced and deleted: scan and query see the live rows."""
    rng = np.random.default_rng(7)
    expected: dict[uuid.UUID, np.ndarray] = {}
    with open_store(StoreLocation("local", str(tmp_path), "archival")) as store:
        for _ in range(4):  # four segments, each with random (unsorted) ids
            batch = [Passage(text=f"t{i}", embedding=rng.standard_normal(8).astype(np.float32), user_id=USER)
                     for i in range(25)]
            store.insert(batch)
            expected.update({p.id: np.asarray(p.embedding) for p in batch})
        replaced = [replace(p, embedding=rng.standard_normal(8).astype(np.float32))
                    for p in (Passage(text="r", embedding=expected[i], user_id=USER, id=i) for i in list(expected)[10:20])]
        store.insert(replaced)
        expected.update({p.id: np.asarray(p.embedding) for p in replaced})
        gone = list(expected)[:5]
        store.delete(gone)
        for i in gone:
            del expected[i]
        scanned = {p.id: np.asarray(p.embedding) for rows in store.scan(7) for p in rows}
        assert scanned.keys() == expected.keys()
        assert all(np.array_equal(scanned[i], expected[i]) for i in expected)
        order = [p.id for rows in store.scan(7) for p in rows]
        assert len(order) == len(expected) and order == [p.id for rows in store.scan(3) for p in rows]  # stable
        for i in list(expected)[::9]:
            assert store.query(expected[i], 1)[0].id == i


def test_postgres_takes_what_other_backends_take_and_refuses_bad_text_in_one_line(pgvector_db: TestDatabase) -> None:
    """Metadata with non-JSON values and naive timestamps (the local backend keeps both) load into Postgres;
    a NUL byte in a text, which Postgres cannot store, is a BackendError, not a traceback."""
    pg_url = pgvector_db.libpq_url
    from datetime import datetime, timezone

    table = f"t_{uuid.uuid4().hex[:10]}"
    odd = replace(passages(1, dim=4)[0], metadata={"ref": uuid.UUID(int=5)}, created_at=datetime(2024, 1, 1, 12, 0))
    with open_store(StoreLocation("postgres", pg_url, table)) as store:
        try:
            store.insert([odd])
            back = next(iter(store.scan(10)))[0]
            assert back.metadata == {"ref": str(uuid.UUID(int=5))}
            assert back.created_at == datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)  # naive means UTC
            with pytest.raises(BackendError, match="rejected the data"):
                store.insert([replace(passages(1, dim=4, seed=9)[0], text="nul \x00 byte")])
            assert store.count() == 1
        finally:
            store.drop()


@pytest.fixture
def new_york() -> Iterator[None]:
    """Local time is New York's during the test. TZ is put back first and ``time.tzset()`` runs after,
    so the C library's zone follows the restored TZ (not the one this test set, nor none at all)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            yield
        finally:
            patch.undo()
            time.tzset()


def test_chroma_reads_naive_timestamps_as_utc(tmp_path: Path, new_york: None) -> None:
    from datetime import datetime, timezone

    assert time.localtime(0).tm_hour == 19  # 1970-01-01 00:00 UTC: the zone is really in effect
    with open_store(StoreLocation("chroma", str(tmp_path), "archival")) as store:
        store.insert([replace(passages(1, dim=4)[0], created_at=datetime(2024, 1, 1, 12, 0))])
        assert next(iter(store.scan(10)))[0].created_at == datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_local_table_dropped_and_refilled_by_another_instance_is_seen(tmp_path: Path) -> None:
    where = StoreLocation("local", str(tmp_path), "archival")
    first, second = passages(2, dim=4, seed=1), passages(2, dim=4, seed=2)
    with open_store(where) as a, open_store(where) as b:
        a.insert(first[:1])
        a.insert(first[1:])
        assert a.count() == 2
        b.drop()
        b.insert(second[:1])
        b.insert(second[1:])  # the same version number as a's cached table
        assert {p.id for rows in a.scan(10) for p in rows} == {p.id for p in second}
        assert a.delete([second[0].id]) == 1


def test_local_damaged_files_are_a_backend_error(tmp_path: Path) -> None:
    where = StoreLocation("local", str(tmp_path), "archival")
    with open_store(where) as store:
        store.insert(passages(3, dim=4))
    segment = next((tmp_path / "archival").glob("*.jsonl"))
    segment.write_text(segment.read_text()[:-20])  # cut off mid-row
    with open_store(where) as store, pytest.raises(BackendError, match="cannot read the local table"):
        store.count()
    (tmp_path / "archival" / "manifest.json").write_text("[1, 2]")
    with open_store(where) as store, pytest.raises(BackendError, match="cannot read the local table"):
        store.count()


def test_local_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Writers in several processes at once (an agent and a migration, say): every row survives."""
    script = (
        "import sys\n"
        "from tests.backend_support import passages\n"
        "from toolkit.backends import open_store, StoreLocation\n"
        "seed = int(sys.argv[1])\n"
        "with open_store(StoreLocation('local', sys.argv[2], 'archival')) as store:\n"
        "    for start in range(0, 60, 3):\n"
        "        store.insert(passages(3, dim=4, seed=seed, start=start))\n"
    )
    where = tmp_path / "store"
    writers = [subprocess.Popen([sys.executable, "-c", script, str(seed), str(where)], cwd=REPO) for seed in (1, 2, 3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    with open_store(StoreLocation("local", str(where), "archival")) as store:
        assert store.count() == 180
    assert [p.name for p in where.iterdir()] == ["archival"]  # no lock or temp files left beside it


def test_chroma_collection_written_by_another_program_is_one_clear_error(tmp_path: Path) -> None:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    foreign = client.create_collection("archival", embedding_function=None)
    foreign.add(ids=["doc-1"], documents=["hello"], embeddings=[[0.1, 0.2, 0.3]], metadatas=[{"source": "elsewhere"}])
    with open_store(StoreLocation("chroma", str(tmp_path), "archival")) as store:
        with pytest.raises(BackendError, match="is not a MemGPT passage"):
            list(store.scan(10))


def test_a_chroma_record_whose_data_source_is_a_number_is_one_clear_error_on_every_read(tmp_path: Path) -> None:
    """Chroma metadata takes numbers and booleans: a record edited by another program to hold
    ``data_source: 5`` is refused by scan, get and query, and migrate writes nothing of it (it had
    written the number into a local table, and failed LanceDB and Parquet with an internal error)."""
    import chromadb
    from chromadb.config import Settings

    rows = passages(5, dim=4)
    where = StoreLocation("chroma", str(tmp_path / "chroma"), "archival")
    with open_store(where) as store:
        store.insert(rows)
    client = chromadb.PersistentClient(path=where.location, settings=Settings(anonymized_telemetry=False))
    collection = client.get_collection("archival")
    meta = collection.get(ids=[str(rows[2].id)], include=["metadatas"])["metadatas"][0]
    collection.update(ids=[str(rows[2].id)], metadatas=[{**meta, "data_source": 5}])
    reads = [lambda s: list(s.scan(10)), lambda s: s.get([rows[2].id]), lambda s: s.query(rows[2].embedding, 5)]
    for read in reads:
        with open_store(where) as store, pytest.raises(BackendError, match="is not a MemGPT passage.*data_source is int"):
            read(store)

    destination = tmp_path / "local"
    run = subprocess.run([sys.executable, "-m", "toolkit", "migrate", "--from", f"chroma://{where.location}",
                          "--to", f"local://{destination}", "--table", "archival"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 6, run.stderr
    assert run.stderr.count("\n") == 1 and "data_source is int" in run.stderr and "Traceback" not in run.stderr
    with open_store(StoreLocation("local", str(destination), "archival")) as store:
        assert store.count() == 0
