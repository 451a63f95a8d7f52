"""Benchmark `toolkit migrate` at scale: rows/s, peak RSS, and the ratio to the destination's raw bulk path.

For each --rows size (default 100k and 1M; 100k and 300k when Postgres is on either side: MemGPT's layout
writes 16 KB a row), in one run:
  1. a SRC store is filled with N seeded passages (1536-dim, NumPy embeddings);
  2. `toolkit migrate --from SRC --to DST --json` runs in a subprocess, as a user runs it; its peak RSS is
     what `/usr/bin/time` reports for it (getrusage: memory-mapped file pages and its own children included);
  3. the destination's raw bulk path writes the same rows, generated in memory first, in a subprocess:
       postgres  one binary COPY into MemGPT's layout (psycopg), committed
       lancedb   one `table.add` of a RecordBatchReader of Arrow batches into a new table (same format)
       local     the segment files written directly: np.save of the matrix, one JSONL, the manifest (fsynced)
       chroma    `collection.add` in batches of the client's max batch size (chromadb in process)
       parquet   one pyarrow ParquetWriter over Arrow batches
The ratio is raw seconds / migrate's seconds (copy and verification; not the process start): >= 0.8 is the
target. "holds" compares rows/s of the largest size with the smallest (target: within 15%). "hash bound" is
raw / (raw + 2 x the seconds migrate's checksum takes to digest the rows once, measured in the raw process):
a verified copy digests every row twice (as read from the source, as read back from the destination).
"read bound" is raw / (raw + the seconds the source's and the destination's own fastest readers take to read
every row once: binary COPY out of Postgres, LanceDB's batches, np.load and the JSON lines of local segments,
pyarrow's Parquet batches; not measured for Chroma): a verified copy reads the source and reads the
destination back. "both" counts the reads and the digests.

Starts its own embedded Postgres on a free port in a temp dir when a side is postgres (unless --url).
Usage: .venv/bin/python bench/migrate.py --pair local:postgres [--rows 100000 --rows 300000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.backends import open_store  # noqa: E402
from toolkit.backends.base import MAX_EMBEDDING_DIM, Passage  # noqa: E402
from toolkit.specs import Spec  # noqa: E402

KINDS = ("local", "postgres", "lancedb", "chroma", "parquet")
TABLE = "bench_migrate"
RAW_TABLE = "bench_raw"
CHUNK = 10_000  # rows generated (and written) at a time: the filling process stays small


def make_passages(n: int, dim: int, start: int = 0) -> list[Passage]:
    """Passages ``start`` .. ``start + n``: the same rows for the same numbers, in every process."""
    import numpy as np

    rng = np.random.default_rng(1536 + start)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    user, agent = uuid.UUID(int=1), uuid.UUID(int=2)
    return [Passage(id=uuid.UUID(int=(7 << 64) + start + i), user_id=user, agent_id=agent,
                    text=f"passage {start + i} " * 8, embedding=vectors[i], data_source="bench",
                    embedding_model="seeded-numpy", metadata={"n": start + i}) for i in range(n)]


def chunks(n: int, dim: int) -> Iterator[list[Passage]]:
    for start in range(0, n, CHUNK):
        yield make_passages(min(CHUNK, n - start), dim, start)


# -- stores ------------------------------------------------------------------------------------------

def spec_of(kind: str, work: Path, side: str, url: str, fmt: str) -> Spec:
    if kind == "postgres":
        return Spec("postgres", url)
    if kind == "parquet":
        return Spec("parquet", str(work / f"{side}.parquet"))
    spec = Spec(kind, str(work / side))
    return spec.with_format(fmt) if kind in ("chroma", "lancedb") else spec


def fill(spec: Spec, n: int, dim: int, work: Path) -> None:
    """SRC with N rows: written in chunks through the store (a Parquet archive: migrated from a local one)."""
    if spec.backend == "parquet":
        from toolkit.migrate import migrate

        staging = Spec("local", str(work / "parquet-staging"))
        fill(staging, n, dim, work)
        migrate(staging, spec, table=TABLE)
        shutil.rmtree(staging.location)
        return
    with closing(open_store(spec.store(TABLE))) as store:
        for rows in chunks(n, dim):
            store.insert(rows)


def empty(spec: Spec, table: str = TABLE) -> None:
    if spec.backend in ("postgres",):
        with closing(open_store(spec.store(table))) as store:
            store.drop()
    elif spec.backend == "parquet":
        Path(spec.location).unlink(missing_ok=True)
    else:
        shutil.rmtree(spec.location, ignore_errors=True)


# -- raw bulk paths (run in a subprocess: `bench/migrate.py _raw KIND LOCATION N DIM FORMAT`) ---------------

def raw(kind: str, location: str, n: int, dim: int, fmt: str) -> tuple[float, float, float]:
    """Seconds the destination's own bulk path takes to write the N rows (generated beforehand), seconds
    migrate's checksum takes over them once (a verified copy takes it twice: the source's rows, the
    destination's), and seconds the destination's own reader takes to read them back."""
    rows = [p for part in chunks(n, dim) for p in part]
    hashing = hash_seconds(rows)  # first: the LanceDB path lets go of the rows
    writing = RAW[kind](location, rows, dim, fmt)
    reading = read_seconds(kind, location, RAW_TABLE)
    if kind == "postgres":
        _drop_postgres(location, RAW_TABLE)
    return writing, hashing, reading


def hash_seconds(rows: list[Passage]) -> float:
    """Seconds of ``Checksum.update_columns`` over the rows as columns (the digest alone: BLAKE2b of each row)."""
    import numpy as np

    from toolkit.migrate import Checksum

    total, seconds = Checksum(), 0.0
    for i in range(0, len(rows), CHUNK):
        part = rows[i:i + CHUNK]
        ids, texts, vectors = [p.id.bytes for p in part], [p.text for p in part], np.stack([p.embedding for p in part])
        start = time.perf_counter()
        total.update_columns(ids, texts, vectors)
        seconds += time.perf_counter() - start
    return seconds


def raw_postgres(url: str, rows: list[Passage], dim: int, fmt: str) -> float:
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql
    from psycopg.types.json import Json

    from toolkit.backends.postgres import COLUMNS, DDL, TYPES

    table = RAW_TABLE
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(sql.SQL(DDL).format(table=sql.Identifier(table)))
        conn.commit()
        padded = np.zeros(MAX_EMBEDDING_DIM, dtype=np.float32)
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as copy:
            copy.set_types(list(TYPES))
            for p in rows:
                padded[:dim] = p.embedding
                copy.write_row((p.id, p.user_id, p.text, p.doc_id, p.agent_id, p.data_source, padded, dim,
                                p.embedding_model, Json(p.metadata), p.created_at))
        conn.commit()
        return time.perf_counter() - start


def _drop_postgres(url: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


def _lance_batches(rows: list[Passage], dim: int) -> tuple[Any, list[Any]]:
    import numpy as np
    import pyarrow as pa

    from toolkit.backends._util import dumps
    from toolkit.backends.lancedb import schema

    arrow = schema(dim)
    batches = []
    for i in range(0, len(rows), CHUNK):
        part = rows[i:i + CHUNK]
        vectors = np.stack([p.embedding for p in part]).astype(np.float32)
        batches.append(pa.record_batch({
            "id": [str(p.id) for p in part], "user_id": [str(p.user_id) for p in part],
            "agent_id": [p.agent_id and str(p.agent_id) for p in part],
            "doc_id": [p.doc_id and str(p.doc_id) for p in part], "text": [p.text for p in part],
            "data_source": [p.data_source for p in part],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
            "embedding_dim": [dim] * len(part), "embedding_model": [p.embedding_model for p in part],
            "metadata_": [dumps(p.metadata) for p in part],
            "created_at": pa.array([p.created_at for p in part], pa.timestamp("us", tz="UTC"))}, schema=arrow))
    return arrow, batches


def raw_lancedb(location: str, rows: list[Passage], dim: int, fmt: str) -> float:
    import lancedb
    import pyarrow as pa

    from toolkit.backends import lancedb as backend

    arrow, batches = _lance_batches(rows, dim)
    del rows[:]
    db = lancedb.connect(location)
    table = db.create_table(RAW_TABLE, schema=arrow, storage_options=backend.CREATE[backend.ALIASES[fmt]])
    start = time.perf_counter()
    table.add(pa.RecordBatchReader.from_batches(arrow, iter(batches)))
    return time.perf_counter() - start


def raw_local(location: str, rows: list[Passage], dim: int, fmt: str) -> float:
    import numpy as np

    from toolkit.backends.local import _to_row

    def written(path: Path, data: bytes | None = None, array: Any = None) -> None:
        with open(path, "wb") as handle:
            if array is not None:
                np.save(handle, array)
            else:
                handle.write(data or b"")
            handle.flush()
            os.fsync(handle.fileno())

    vectors = np.stack([p.embedding for p in rows]).astype(np.float32)
    table = Path(location) / RAW_TABLE
    start = time.perf_counter()
    table.mkdir(parents=True)
    written(table / "000001.npy", array=vectors)
    written(table / "000001.jsonl", "".join(json.dumps(_to_row(p), default=str) + "\n" for p in rows).encode())
    written(table / "manifest.json", json.dumps({"uid": uuid.uuid4().hex, "version": 1, "dim": dim,
                                                 "segments": ["000001"], "next": 2}).encode())
    return time.perf_counter() - start


def raw_chroma(location: str, rows: list[Passage], dim: int, fmt: str) -> float:
    import chromadb
    import numpy as np

    from toolkit.backends.chroma import _metadata

    client = chromadb.PersistentClient(path=location)
    collection = client.get_or_create_collection(RAW_TABLE, embedding_function=None)
    size = client.get_max_batch_size()
    parts = [(np.stack([p.embedding for p in rows[i:i + size]]), [str(p.id) for p in rows[i:i + size]],
              [p.text for p in rows[i:i + size]], [_metadata(p) for p in rows[i:i + size]])
             for i in range(0, len(rows), size)]
    start = time.perf_counter()
    for vectors, ids, texts, metadatas in parts:
        collection.add(ids=ids, embeddings=vectors, documents=texts, metadatas=metadatas)
    return time.perf_counter() - start


def raw_parquet(location: str, rows: list[Passage], dim: int, fmt: str) -> float:
    import pyarrow.parquet as pq

    from toolkit.backends.parquet import arrow_table, schema

    tables = [arrow_table(rows[i:i + CHUNK], TABLE) for i in range(0, len(rows), CHUNK)]
    start = time.perf_counter()
    with pq.ParquetWriter(location, schema(dim, TABLE)) as writer:
        for table in tables:
            writer.write_table(table)
    return time.perf_counter() - start


# -- raw reads (`bench/migrate.py _read KIND LOCATION TABLE`): every row of a table through the store's own
#    fastest reader, decoded and dropped. A verified copy reads the source and reads the destination back:
#    these are the least those reads can cost.

def read_seconds(kind: str, location: str, table: str) -> float:
    import importlib

    for module in READ_IMPORTS.get(kind, ()):  # imported before the clock starts: migrate's are, too
        importlib.import_module(module)
    start = time.perf_counter()
    rows = READ[kind](location, table)
    seconds = time.perf_counter() - start
    if rows is not None and rows <= 0:
        raise SystemExit(f"the raw read of {kind} {location} {table} found no rows")
    return seconds


def read_postgres(url: str, table: str) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn, conn.cursor() as cur, \
            cur.copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(sql.Identifier(table))) as copy:
        size = sum(len(data) for data in copy)
    return size


def read_lancedb(location: str, table: str) -> int:
    import lancedb

    reader = lancedb.connect(location).open_table(table).search().limit(None).to_batches(CHUNK)
    return sum(batch.num_rows for batch in reader)


def read_local(location: str, table: str) -> int:
    import numpy as np

    folder = Path(location) / table
    rows = 0
    for segment in json.loads((folder / "manifest.json").read_text())["segments"]:
        vectors = np.load(folder / f"{segment}.npy")  # read, not mapped: the bytes come off the page cache
        with open(folder / f"{segment}.jsonl", "rb") as lines:
            parsed = sum(1 for line in lines if json.loads(line) is not None)
        rows += min(len(vectors), parsed)
    return rows


def read_parquet(location: str, table: str) -> int:
    import pyarrow.parquet as pq

    return sum(batch.num_rows for batch in pq.ParquetFile(location).iter_batches(CHUNK))


def read_chroma(location: str, table: str) -> int | None:
    return None  # not measured: chromadb's get pages through SQLite and its index, at a few thousand rows/s


READ_IMPORTS = {"postgres": ("psycopg",), "lancedb": ("lancedb", "pyarrow"), "local": ("numpy",),
                "parquet": ("pyarrow.parquet",)}
READ = {"postgres": read_postgres, "lancedb": read_lancedb, "local": read_local, "chroma": read_chroma,
        "parquet": read_parquet}

RAW = {"postgres": raw_postgres, "lancedb": raw_lancedb, "local": raw_local, "chroma": raw_chroma,
       "parquet": raw_parquet}


# -- measuring -----------------------------------------------------------------------------------------

def measured(argv: list[str], cwd: Path) -> tuple[str, int]:
    """(stdout, peak RSS in bytes) of a subprocess, as ``/usr/bin/time`` reports it (getrusage of its child:
    mapped pages and the child's own children included). Not wait4 from here: Linux carries a process's peak
    across fork and exec, so a child of this (by then large) process would report at least this one's size;
    time's own child starts from time's few MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        time_tool = shutil.which("time", path="/usr/bin:/bin")
        wrapped = [time_tool, "-f", "%M", "-o", rss.name, *argv] if time_tool else argv
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[2:5]} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        kib = int(rss.read().split()[-1]) if time_tool else usage.ru_maxrss
        return out.read().decode(), kib * 1024


def run_size(kind_src: str, kind_dst: str, n: int, dim: int, url: str, fmt: str, base: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=base))
    try:
        src, dst = spec_of(kind_src, work, "src", url, fmt), spec_of(kind_dst, work, "dst", url, fmt)
        print(f"  filling {kind_src} with {n} rows...", file=sys.stderr, flush=True)
        fill(src, n, dim, work)
        print(f"  raw read of {kind_src}...", file=sys.stderr, flush=True)
        out, _ = measured([sys.executable, str(Path(__file__).resolve()), "_read", kind_src, src.location, TABLE],
                          work)
        source_read = float(out.strip().splitlines()[-1])
        print(f"  toolkit migrate {kind_src} -> {kind_dst}...", file=sys.stderr, flush=True)
        out, rss = measured([sys.executable, "-m", "toolkit", "migrate", "--from", src.render(), "--to", dst.render(),
                             "--table", TABLE, "--json"], work)
        result = json.loads(out)
        empty(dst)
        empty(src)  # the raw path's rows need the disk
        print(f"  raw {kind_dst} bulk path...", file=sys.stderr, flush=True)
        where = url if kind_dst == "postgres" else str(work / ("raw.parquet" if kind_dst == "parquet" else "raw"))
        out, raw_rss = measured([sys.executable, str(Path(__file__).resolve()), "_raw", kind_dst, where, str(n),
                                 str(dim), fmt], work)
        raw_seconds, hashing, read_back = map(float, out.strip().splitlines()[-1].split())
        moved = result["copy_seconds"] + result["verify_seconds"]
        reads = source_read + read_back
        return {"rows": n, "seconds": result["seconds"], "copy_seconds": result["copy_seconds"],
                "verify_seconds": result["verify_seconds"], "rows_per_second": n / moved,
                "copy_rows_per_second": n / result["copy_seconds"], "peak_rss_mib": rss / 2**20,
                "reported_peak_rss_mib": result["peak_rss_bytes"] / 2**20, "batch": result["batch"],
                "raw_seconds": raw_seconds, "raw_rows_per_second": n / raw_seconds, "ratio": raw_seconds / moved,
                "copy_ratio": raw_seconds / result["copy_seconds"], "raw_peak_rss_mib": raw_rss / 2**20,
                "hash_seconds": hashing, "hash_bound": raw_seconds / (raw_seconds + 2 * hashing),
                "source_read_seconds": source_read, "read_back_seconds": read_back,
                "read_bound": raw_seconds / (raw_seconds + reads),
                "verified_bound": raw_seconds / (raw_seconds + reads + 2 * hashing)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        kind, location, n, dim, fmt = sys.argv[2:7]
        print(*raw(kind, location, int(n), int(dim), fmt))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_read":
        print(read_seconds(*sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", required=True, metavar="SRC:DST", help=f"two of {', '.join(KINDS)}")
    parser.add_argument("--rows", type=int, action="append", help="a size (repeat for several) "
                        "[default: 100000 and 1000000; 300000 for the larger when postgres is a side]")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--format", default="current", choices=["current", "memgpt"],
                        help="format of chroma and lancedb stores (memgpt: chromadb 0.5 in its worker, Lance legacy)")
    parser.add_argument("--url", help="an existing Postgres+pgvector (libpq URL) instead of an embedded one")
    parser.add_argument("--dir", help="where the stores go (default: a temp dir; 1M rows need ~20 GB)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    kinds = args.pair.split(":")
    if len(kinds) != 2 or not set(kinds) <= set(KINDS) or kinds[0] == kinds[1]:
        parser.error(f"--pair SRC:DST takes two different kinds of {', '.join(KINDS)}")
    if args.format == "memgpt" and kinds[1] == "chroma":
        parser.error("the raw path for chroma is chromadb in process (current format); use --format current")
    sizes = args.rows or [100_000, 300_000 if "postgres" in kinds else 1_000_000]

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="toolkit-bench-migrate-", dir=args.dir))
        stack.callback(shutil.rmtree, base, True)
        url = args.url or ""
        if "postgres" in kinds and not url:
            from toolkit import api
            from toolkit.ports import free_port

            print("starting an embedded Postgres...", file=sys.stderr)
            db = stack.enter_context(api.postgres(port=free_port(), project_dir=str(base), state_dir=str(base / "pg")))
            url = db.libpq_url
        if url:
            from toolkit.urls import parse

            url = parse(url).libpq
        figures = []
        for n in sizes:
            print(f"{args.pair} at {n} rows:", file=sys.stderr, flush=True)
            figures.append(run_size(kinds[0], kinds[1], n, args.dim, url, args.format, base))
    first, last = figures[0], figures[-1]
    holds = last["rows_per_second"] / first["rows_per_second"]
    if args.json:
        print(json.dumps({"pair": args.pair, "dim": args.dim, "format": args.format, "sizes": figures,
                          "holds": holds}, indent=2))
        return
    print(f"\n{args.pair} ({args.dim}-dim, format {args.format}; raw = {kinds[1]}'s bulk path)")
    print(f"  {'rows':>9} {'rows/s':>8} {'copy rows/s':>11} {'peak RSS':>9} {'raw rows/s':>10} {'ratio':>6}"
          f" {'hash bound':>10} {'read bound':>10} {'both':>6} {'batch':>6}")
    for f in figures:
        print(f"  {f['rows']:>9} {f['rows_per_second']:>8.0f} {f['copy_rows_per_second']:>11.0f} "
              f"{f['peak_rss_mib']:>6.0f} MB {f['raw_rows_per_second']:>10.0f} {f['ratio']:>5.2f}x "
              f"{f['hash_bound']:>9.2f}x {f['read_bound']:>9.2f}x {f['verified_bound']:>5.2f}x {f['batch']:>6}")
    print("  hash bound: raw / (raw + the checksum's digest of every row twice); read bound: raw / (raw + the"
          " source and the destination each read once by their own fastest reader); both: raw / (raw + all"
          " of these). The ratios if a verified copy cost only those, one after the other (threads overlap"
          " some; conversions between stores cost more)")
    if len(figures) > 1:
        print(f"  rows/s at {last['rows']} / at {first['rows']}: {holds:.2f} (target: within 15%)")


if __name__ == "__main__":
    main()
