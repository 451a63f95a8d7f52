"""MemGPT-era formats, tested with the real old readers.

MemGPT 0.3.25 pins chromadb>=0.5,<0.6 and lancedb 0.3 (pylance 0.8). The suite builds those clients in
isolated environments (uv; cached in .toolkit/test-clients, so once per checkout) and checks both ways:
what the toolkit writes, they read; what they wrote, the toolkit reads, leaving it byte for byte as it was.
chromadb 0.5.0 is the reader (the oldest release MemGPT accepts); the toolkit itself writes through 0.5.23.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.backend_support import passages
from tests.support import CLIENTS, run_toolkit
from toolkit.backends import StoreLocation, open_store
from toolkit.backends.compat import envs
from toolkit.ports import free_port

pytestmark = pytest.mark.slow

CHROMA_05_READER = envs.ClientEnv("chromadb 0.5.0 reader", ("chromadb==0.5.0", "numpy<2"), "import chromadb",
                                  "2024-05-15T00:00:00Z")
PYLANCE_08 = envs.ClientEnv("pylance 0.8 reader", ("pylance==0.8.21", "numpy<2", "pyarrow<15"), "import lance",
                            "2024-01-31T00:00:00Z")
TABLE = "memgpt_archival_memory_agent"

# What MemGPT 0.3.25's ChromaStorageConnector does, in the old client's own process: insert_many (padded
# to 4096, integer created_at, UUIDs as strings), then read back as results_to_records would.
MEMGPT_CHROMA = textwrap.dedent('''
    import json, sys, uuid, datetime
    import numpy as np
    import chromadb
    args = json.loads(sys.argv[1])
    if args.get("path"):
        client = chromadb.PersistentClient(args["path"])
    else:
        client = chromadb.HttpClient(host="127.0.0.1", port=args["port"])
    collection = client.get_or_create_collection(args["table"])
    if args["write"]:
        rng = np.random.default_rng(7)
        user = str(uuid.UUID(int=7))
        rows = []
        for i in range(args["write"]):
            vec = rng.standard_normal(args["dim"]).astype(np.float32)
            rows.append((str(uuid.UUID(int=1000 + i)), f"memgpt passage {i}", np.pad(vec, (0, 4096 - vec.size)).tolist(),
                         {"user_id": user, "agent_id": str(uuid.UUID(int=8)), "embedding_dim": args["dim"],
                          "embedding_model": "text-embedding-ada-002", "data_source": "memgpt",
                          "created_at": int(datetime.datetime.now().timestamp())}))
        ids, docs, vecs, metas = map(list, zip(*rows))
        collection.upsert(ids=ids, documents=docs, embeddings=vecs, metadatas=metas)
    got = collection.get(include=["documents", "embeddings", "metadatas"])
    allowed = {"user_id", "agent_id", "embedding_dim", "embedding_model", "data_source", "doc_id", "metadata_",
               "created_at"}  # Passage(**metadatas): any other key is a TypeError in MemGPT
    records = []
    for rid, doc, emb, meta in zip(got["ids"], got["documents"], got["embeddings"], got["metadatas"]):
        assert set(meta) <= allowed, sorted(set(meta) - allowed)
        datetime.datetime.fromtimestamp(meta["created_at"])
        for key in ("user_id", "agent_id", "doc_id"):
            if key in meta:
                uuid.UUID(meta[key])
        assert len(emb) == 4096, len(emb)
        records.append({"id": rid, "text": doc, "dim": meta["embedding_dim"], "created_at": meta["created_at"],
                        "head": [float(x) for x in emb[:meta["embedding_dim"]][:3]],
                        "tail_zero": not any(emb[meta["embedding_dim"]:])})
    hits = []
    if records:  # MemGPT always filters by its user (and agent): {"user_id": {"$eq": ...}}
        first = np.asarray(got["embeddings"][0], dtype=np.float32)
        mine = {"user_id": {"$eq": got["metadatas"][0]["user_id"]}}
        found = collection.query(query_embeddings=[first.tolist()], n_results=1, where=mine)
        hits = found["ids"][0]
    print(json.dumps({"count": collection.count(), "records": records, "nearest_to_first": hits,
                      "first": got["ids"][0] if records else None}))
''')

PYLANCE_READ = textwrap.dedent('''
    import json, sys
    import lance
    table = lance.dataset(sys.argv[1]).to_table()
    print(json.dumps({"rows": table.num_rows, "ids": sorted(table.column("id").to_pylist())}))
''')


@pytest.fixture(scope="module")
def chroma05() -> Path:
    return envs.python(CHROMA_05_READER, CLIENTS)


@pytest.fixture(scope="module")
def chroma0523() -> Path:
    """chromadb 0.5.23: what `pip install pymemgpt==0.3.25` resolves today (the toolkit's own 0.5 client)."""
    return envs.python(envs.CHROMA["0.5"], CLIENTS)


@pytest.fixture(scope="module")
def pylance08() -> Path:
    return envs.python(PYLANCE_08, CLIENTS)


def memgpt_chroma(python: Path, *, path: Path | None = None, port: int | None = None, write: int = 0,
                  dim: int = 1536) -> dict:
    args = {"path": str(path) if path else None, "port": port, "table": TABLE, "write": write, "dim": dim}
    done = subprocess.run([str(python), "-I", "-c", MEMGPT_CHROMA, json.dumps(args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def digest(root: Path) -> dict[str, str]:
    """Every file under root and its sha256: equal digests mean a byte-identical tree."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def memgpt_dir(tmp_path: Path, chroma05: Path) -> Path:
    """A Chroma directory MemGPT 0.3.x wrote: 20 passages of 1536 dims through chromadb 0.5.0."""
    where = tmp_path / "memgpt-chroma"
    memgpt_chroma(chroma05, path=where, write=20)
    return where


# -- knowing the format --------------------------------------------------------------------------------

def test_detects_each_chroma_generation(tmp_path: Path, memgpt_dir: Path) -> None:
    from toolkit.backends.chroma import detect_format
    from toolkit.errors import BackendError

    assert detect_format(memgpt_dir) == "0.5"
    with open_store(StoreLocation("chroma", str(tmp_path / "new"), "t_new", format="1")) as store:
        store.insert(passages(3))
    assert detect_format(tmp_path / "new") == "1"
    with open_store(StoreLocation("chroma", str(tmp_path / "old"), "t_old", format="0.5")) as store:
        store.insert(passages(3))
    assert detect_format(tmp_path / "old") == "0.5"
    assert detect_format(tmp_path / "none") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "chroma.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackendError, match="not a Chroma database"):
        detect_format(tmp_path / "bad")


# -- never change what you read ----------------------------------------------------------------------

def test_migrate_from_a_memgpt_chroma_dir_leaves_it_byte_identical(tmp_path: Path, memgpt_dir: Path) -> None:
    before = digest(memgpt_dir)
    done = run_toolkit("migrate", "--from", f"chroma://{memgpt_dir}", "--to", f"local://{tmp_path / 'local'}")
    assert done.returncode == 0, done.stderr
    assert "migrated 20 rows" in done.stdout
    assert digest(memgpt_dir) == before
    with open_store(StoreLocation("local", str(tmp_path / "local"), TABLE)) as store:
        rows = [p for batch in store.scan(100) for p in batch]
    assert len(rows) == 20 and {len(p.embedding) for p in rows} == {1536}  # cut back to embedding_dim
    assert {p.text for p in rows} == {f"memgpt passage {i}" for i in range(20)}


def test_smoke_with_memgpt_default_config_leaves_its_chroma_dir_byte_identical(
        tmp_path: Path, memgpt_dir: Path, pg_url_pg8000: str) -> None:
    config = Path.home() / ".memgpt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(f"[version]\nmemgpt_version = 0.3.25\n\n[archival_storage]\ntype = chroma\npath = {memgpt_dir}\n")
    before = digest(memgpt_dir)
    done = run_toolkit("smoke", "--json", "-n", "20", env={"PGVECTOR_TEST_DB_URL": pg_url_pg8000})
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    chroma = next(r for r in report["results"] if r["backend"] == "chroma")
    assert chroma["format"] == "0.5" and "private copy" in chroma["detail"] and "0.5.23" in chroma["detail"]
    assert digest(memgpt_dir) == before


@pytest.mark.parametrize("backend", ["local", "lancedb"])
def test_migrate_source_directories_stay_byte_identical(tmp_path: Path, backend: str) -> None:
    source = tmp_path / "source"
    with open_store(StoreLocation(backend, str(source), TABLE)) as store:
        store.insert(passages(30))
        store.delete([passages(30)[0].id])
    before = digest(source)
    done = run_toolkit("migrate", "--from", f"{backend}://{source}", "--to", f"local://{tmp_path / 'dest'}")
    assert done.returncode == 0, done.stderr
    assert digest(source) == before


# -- write what the reader reads ---------------------------------------------------------------------

def test_toolkit_writes_a_chroma_dir_memgpt_reads(tmp_path: Path, chroma05: Path) -> None:
    source, dest = tmp_path / "local", tmp_path / "chroma"
    rows = passages(25, dim=1536)
    with open_store(StoreLocation("local", str(source), TABLE)) as store:
        store.insert(rows)
    done = run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{dest}", "--format", "memgpt")
    assert done.returncode == 0, done.stderr
    seen = memgpt_chroma(chroma05, path=dest)
    assert seen["count"] == 25
    assert all(r["dim"] == 1536 and r["tail_zero"] and isinstance(r["created_at"], int) for r in seen["records"])
    assert seen["nearest_to_first"] == [seen["first"]]
    by_id = {str(p.id): p for p in rows}
    assert all(abs(r["head"][0] - float(by_id[r["id"]].embedding[0])) < 1e-6 for r in seen["records"])
    # and the toolkit reads its own MemGPT-layout data back, vectors cut to 1536, after upserts and deletes
    with open_store(StoreLocation("chroma", str(dest), TABLE)) as store:
        assert store.format == "0.5"
        store.insert(rows[:5])
        assert store.delete([rows[0].id]) == 1
        assert store.count() == 24
        assert store.query(rows[3].embedding, 1)[0].id == rows[3].id
        assert len(store.get([rows[4].id])[0].embedding) == 1536
    assert memgpt_chroma(chroma05, path=dest)["count"] == 24


def test_format_defaults_to_memgpt_when_memgpt_is_configured(tmp_path: Path) -> None:
    from toolkit.backends.chroma import detect_format

    source = tmp_path / "local"
    for table in (TABLE, "t_more"):
        with open_store(StoreLocation("local", str(source), table)) as store:
            store.insert(passages(3))
    assert run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{tmp_path / 'a'}").returncode == 0
    assert detect_format(tmp_path / "a") == "1"  # no MemGPT here: current
    config = Path.home() / ".memgpt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("[version]\nmemgpt_version = 0.3.25\n")
    assert run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{tmp_path / 'b'}").returncode == 0
    assert detect_format(tmp_path / "b") == "0.5"
    # what is on disk wins over the default: more rows into the 1.x directory stay 1.x
    done = run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{tmp_path / 'a'}", "--table", "t_more")
    assert done.returncode == 0, done.stderr
    assert detect_format(tmp_path / "a") == "1"


def test_writing_another_format_into_a_chroma_dir_is_refused(tmp_path: Path, memgpt_dir: Path) -> None:
    source = tmp_path / "local"
    with open_store(StoreLocation("local", str(source), "t_other")) as store:
        store.insert(passages(3))
    before = digest(memgpt_dir)
    done = run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{memgpt_dir}?format=current",
                       "--table", "t_other")
    assert done.returncode == 7, done.stderr
    assert "unreadable to chromadb 0.5" in done.stderr and "Traceback" not in done.stderr
    assert digest(memgpt_dir) == before
    bad = run_toolkit("migrate", "--from", f"local://{source}", "--to", f"chroma://{tmp_path / 'x'}", "--format", "9.9",
                      "--table", "t_other")
    assert bad.returncode == 2 and "unknown chroma format" in bad.stderr


def test_chroma_up_format_05_serves_memgpts_http_client(tmp_path: Path, chroma0523: Path) -> None:
    """Over HTTP the client must match the server's release: a 0.5.0 client's queries (where_document {})
    are refused by a 0.5.23 server, so the reader here is the 0.5.23 a MemGPT install resolves today."""
    port = free_port()
    up = run_toolkit("chroma", "up", "--format", "memgpt", "--port", str(port))
    try:
        assert up.returncode == 0, up.stderr
        assert "format 0.5" in up.stdout
        status = run_toolkit("chroma", "status", "--port", str(port), "--json")
        assert json.loads(status.stdout)["format"] == "0.5"
        # the toolkit writes over HTTP (it speaks to the server through chromadb 0.5), MemGPT's client reads
        with open_store(StoreLocation("chroma-http", f"127.0.0.1:{port}", TABLE)) as store:
            assert store.format == "0.5"
            store.insert(passages(12, dim=1536))
        seen = memgpt_chroma(chroma0523, port=port)
        assert seen["count"] == 12 and seen["nearest_to_first"] == [seen["first"]]
        # and the other way: what MemGPT's client writes there, the toolkit reads
        memgpt_chroma(chroma0523, port=port, write=5)
        with open_store(StoreLocation("chroma-http", f"127.0.0.1:{port}", TABLE)) as store:
            assert store.count() == 17
        clash = run_toolkit("chroma", "up", "--format", "current", "--port", str(port))
        assert clash.returncode == 2 and "already answers" in clash.stderr
    finally:
        run_toolkit("chroma", "down")


# -- LanceDB: legacy files for pylance 0.8 ----------------------------------------------------------

def test_pylance_08_reads_every_row_of_a_legacy_table(tmp_path: Path, pylance08: Path) -> None:
    from toolkit.backends.lancedb import detect_format

    rows = passages(50, dim=64)
    where = tmp_path / "lance"
    with open_store(StoreLocation("lancedb", str(where), TABLE, format="legacy")) as store:
        store.insert(rows[:30])  # new ids into an empty table: an append
        store.insert(rows[20:40])  # upsert: 10 updated, 10 new
        store.insert(rows[40:])  # an append again
        store.delete([p.id for p in rows[:5]])
    assert detect_format(where / f"{TABLE}.lance") == ("legacy", "0.1")
    done = subprocess.run([str(pylance08), "-I", "-c", PYLANCE_READ, str(where / f"{TABLE}.lance")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["ids"] == sorted(str(p.id) for p in rows[5:])


def test_pylance_08_reads_a_table_migrate_wrote_as_columns(tmp_path: Path, pylance08: Path) -> None:
    """local -> LanceDB moves Arrow columns (no passages): MemGPT's reader sees every row, texts included, also
    after a second run resumed into the table (its upserts) and a row changed at the source."""
    rows = passages(300, dim=64)
    source, where = tmp_path / "local", tmp_path / "lance"
    with open_store(StoreLocation("local", str(source), TABLE)) as store:
        store.insert(rows[:200])
    to = f"lancedb://{where}?format=memgpt"
    assert run_toolkit("migrate", "--from", f"local://{source}", "--to", to, "--batch", "64").returncode == 0
    rows[0].text = "changed at the source"
    with open_store(StoreLocation("local", str(source), TABLE)) as store:
        store.insert([rows[0], *rows[200:]])
    done = run_toolkit("migrate", "--from", f"local://{source}", "--to", to, "--batch", "64")
    assert done.returncode == 0, done.stderr
    read = PYLANCE_READ.replace('"ids": sorted(table.column("id").to_pylist())',
                                '"ids": sorted(table.column("id").to_pylist()), '
                                '"texts": dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))')
    done = subprocess.run([str(pylance08), "-I", "-c", read, str(where / f"{TABLE}.lance")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["ids"] == sorted(str(p.id) for p in rows) and got["rows"] == 300
    assert got["texts"][str(rows[0].id)] == "changed at the source"


def test_pylance_08_does_not_see_a_current_table(tmp_path: Path, pylance08: Path) -> None:
    """Why the legacy format matters: the old reader finds no rows (or fails) in today's default."""
    where = tmp_path / "lance"
    with open_store(StoreLocation("lancedb", str(where), TABLE, format="stable")) as store:
        store.insert(passages(10, dim=8))
    done = subprocess.run([str(pylance08), "-I", "-c", PYLANCE_READ, str(where / f"{TABLE}.lance")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 or json.loads(done.stdout)["rows"] != 10


def test_lancedb_new_tables_follow_the_directory_and_smoke_reports_the_format(tmp_path: Path) -> None:
    where = tmp_path / "lance"
    with open_store(StoreLocation("lancedb", str(where), "t_first", format="legacy")) as store:
        store.insert(passages(3, dim=8))
    with open_store(StoreLocation("lancedb", str(where), "t_second")) as store:
        assert store.format == "legacy"  # the directory's tables are legacy: so is a new one
    done = run_toolkit("smoke", "--backend", "lancedb", "--json", "-n", "10", "--dim", "8",
                       env={"TOOLKIT_LANCEDB_URI": str(where)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["results"][0]["format"] == "legacy"
    refused = run_toolkit("migrate", "--from", f"lancedb://{where}", "--to", f"lancedb://{tmp_path / 'x'}?format=stable",
                          "--table", "t_first")
    assert refused.returncode == 0, refused.stderr  # a new destination may be written in any format
    again = run_toolkit("migrate", "--from", f"lancedb://{tmp_path / 'x'}", "--to", f"lancedb://{where}?format=stable",
                        "--table", "t_first")
    assert again.returncode == 7 and "cannot be written as stable" in again.stderr


# -- hostile and clumsy input ------------------------------------------------------------------------

def test_text_chroma_cannot_store_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from toolkit.errors import BackendError

    rows = passages(4, dim=8)
    rows[2].text = "bad \ud83d half emoji"
    for fmt in ("0.5", "1"):
        with open_store(StoreLocation("chroma", str(tmp_path / fmt), TABLE, format=fmt)) as store:
            with pytest.raises(BackendError, match=f"passage {rows[2].id} holds text that is not valid UTF-8"):
                store.insert(rows)
            assert store.count() == 0


def test_spec_format_parameters_are_checked(tmp_path: Path) -> None:
    source = tmp_path / "local"
    with open_store(StoreLocation("local", str(source), TABLE)) as store:
        store.insert(passages(2, dim=8))
    for bad, words in (("postgresql://a:b@127.0.0.1:1/db?format=0.5", "does not apply to Postgres"),
                       (f"chroma://{tmp_path / 'c'}?format=0.5&format=1", "more than one ?format="),
                       (f"chroma://{tmp_path / 'c'}?format=0.5&x=1", "unknown SPEC parameter")):
        done = run_toolkit("migrate", "--from", f"local://{source}", "--to", bad)
        assert done.returncode == 2 and words in done.stderr, done.stderr


def test_an_explicit_format_that_differs_from_the_data_is_refused_on_reads_too(memgpt_dir: Path) -> None:
    before = digest(memgpt_dir)
    done = run_toolkit("smoke", "--backend", "chroma", "--format", "1", "-n", "4", "--dim", "8",
                       env={"TOOLKIT_CHROMA_PATH": str(memgpt_dir)})
    assert done.returncode == 6 and "not format 1" in done.stdout, done.stdout
    assert digest(memgpt_dir) == before


def test_private_copies_of_killed_runs_are_removed(tmp_path: Path, memgpt_dir: Path) -> None:
    import tempfile

    stale = Path(tempfile.gettempdir()) / "toolkit-chroma-999999999-left"  # no such pid
    (stale / "chroma").mkdir(parents=True)
    with open_store(StoreLocation("chroma", str(memgpt_dir), TABLE, snapshot=True)) as store:
        assert store.count() == 20
    assert not stale.exists()


def test_a_failed_open_leaves_no_private_copy(tmp_path: Path, memgpt_dir: Path) -> None:
    import os
    import tempfile

    from toolkit.errors import BackendError

    not_a_dir = tmp_path / "clients-file"
    not_a_dir.write_text("")
    mine = f"toolkit-chroma-{os.getpid()}-*"
    before = set(Path(tempfile.gettempdir()).glob(mine))
    with pytest.raises(BackendError, match="cannot create"):
        open_store(StoreLocation("chroma", str(memgpt_dir), TABLE, snapshot=True, clients_dir=str(not_a_dir / "x")))
    assert set(Path(tempfile.gettempdir()).glob(mine)) == before


@pytest.mark.parametrize(("version", "expected"), [("0.6.3", "0.5"), ("0.5.23", "0.5"), ("1.0.0", "1"),
                                                   ("0.3.29", "0.3.29")])
def test_server_generations_are_named_and_unknown_ones_refused(version: str, expected: str) -> None:
    """A server states its version; 0.6 shares 0.5's API, and a generation the toolkit has no client for is
    one clear error, not an internal one."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from toolkit.backends.chroma import server_format
    from toolkit.errors import BackendError

    class Version(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = json.dumps(version).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert server_format("127.0.0.1", port) == expected
        if expected == version:
            with pytest.raises(BackendError, match="does not speak to"):
                open_store(StoreLocation("chroma-http", f"127.0.0.1:{port}", TABLE))
    finally:
        server.shutdown()
        server.server_close()


def test_format_04_round_trip(tmp_path: Path) -> None:
    """MemGPT 0.2.x's generation: written and read back through chromadb 0.4.24."""
    from toolkit.backends.chroma import detect_format

    rows = passages(6, dim=8)
    with open_store(StoreLocation("chroma", str(tmp_path / "c04"), TABLE, format="0.4")) as store:
        store.insert(rows)
    assert detect_format(tmp_path / "c04") == "0.4"
    with open_store(StoreLocation("chroma", str(tmp_path / "c04"), TABLE)) as store:
        assert store.format == "0.4" and store.count() == 6
        assert store.query(rows[2].embedding, 1)[0].id == rows[2].id
