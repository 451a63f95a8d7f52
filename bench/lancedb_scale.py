"""Benchmark the LanceDB backend at scale: each measurement in a fresh subprocess under `/usr/bin/time -v`.

    raw     one `table.add` of a RecordBatchReader (Arrow batches of 5000 rows) into a new table: the bulk
            path LanceDB offers, what `LanceStore.insert` is compared with
    insert  `LanceStore.insert` called with batches of N passages built in memory (what `toolkit migrate`
            passes); only the time inside insert counts
    scan    a full `LanceStore.scan(1000)` of the table the insert run left

Prints rows/s and peak RSS ("Maximum resident set size") per run. Tables go in a temp dir (--dir), removed
at the end; 1M x 1536 is ~6 GB per table. Usage:
    .venv/bin/python bench/lancedb_scale.py [--rows 100000] [--dim 1536] [--batches 1000,2000,5000]
        [--formats stable,legacy] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 5000  # rows generated at a time, so the measuring process stays small


def rows(start: int, n: int, dim: int) -> tuple[list[str], object]:
    """Rows start..start+n: random ids and vectors, seeded by ``start`` (the same rows in every run)."""
    import uuid

    import numpy as np

    rng = np.random.default_rng(start)
    raw = rng.bytes(16 * n)
    ids = [str(uuid.UUID(bytes=raw[i * 16:(i + 1) * 16])) for i in range(n)]
    return ids, rng.standard_normal((n, dim), dtype=np.float32)


def arrow_chunks(total: int, dim: int, size: int):
    import pyarrow as pa

    from toolkit.backends.lancedb import schema

    user = "00000000-0000-0000-0000-000000000001"
    for start in range(0, total, size):
        n = min(size, total - start)
        ids, vectors = rows(start, n, dim)
        yield pa.RecordBatch.from_pydict({
            "id": ids, "user_id": [user] * n, "agent_id": [user] * n, "doc_id": [None] * n,
            "text": [f"passage {start + i}" for i in range(n)], "data_source": ["bench"] * n,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "embedding_dim": [dim] * n, "embedding_model": ["bench"] * n, "metadata_": ["{}"] * n,
            "created_at": pa.array([0] * n, pa.timestamp("us", tz="UTC"))}, schema=schema(dim))


def passage_batches(total: int, dim: int, size: int):
    import uuid

    from toolkit.backends.base import Passage

    user = uuid.UUID(int=1)
    for start in range(0, total, size):
        n = min(size, total - start)
        ids, vectors = rows(start, n, dim)
        yield [Passage(id=uuid.UUID(ids[i]), user_id=user, agent_id=user, text=f"passage {start + i}",
                       embedding=vectors[i], data_source="bench", embedding_model="bench")
               for i in range(n)]


def child(kind: str, where: str, table: str, fmt: str, total: int, dim: int, batch: int) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import lancedb  # noqa: F401 - imported before the clock starts (seconds, the first time)

    from toolkit.backends import StoreLocation, open_store

    spent = 0.0
    if kind == "raw":
        import lancedb
        import pyarrow as pa

        from toolkit.backends.lancedb import CREATE, schema

        db = lancedb.connect(where)
        source = pa.ipc.open_stream(pa.OSFile(str(Path(where).parent / "rows.arrows")))  # read from page cache
        start = time.perf_counter()
        new = db.create_table(table, schema=schema(dim), storage_options=CREATE[fmt])
        new.add(source)
        spent, count = time.perf_counter() - start, new.count_rows()
    elif kind == "insert":
        with open_store(StoreLocation("lancedb", where, table, format=fmt)) as store:
            for passages in passage_batches(total, dim, batch):
                start = time.perf_counter()
                store.insert(passages)
                spent += time.perf_counter() - start
            count = store.count()
    else:
        with open_store(StoreLocation("lancedb", where, table)) as store:
            start = time.perf_counter()
            count = sum(len(b) for b in store.scan(batch))
            spent = time.perf_counter() - start
    print(json.dumps({"seconds": spent, "rows": count}))


def pa_stream(path: Path, schema: object):
    import pyarrow as pa

    return pa.ipc.new_stream(str(path), schema)


def measure(kind: str, where: Path, table: str, fmt: str, total: int, dim: int, batch: int) -> dict:
    argv = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", kind, str(where), table, fmt,
            str(total), str(dim), str(batch)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    result.update(kind=kind, format=fmt, batch=batch, total=total, rss_mb=rss_kb / 1024,
                  rows_per_s=total / result["seconds"])
    print(f"{kind:6} {fmt:6} rows={total:>8} batch={batch:>5} {result['rows_per_s']:>9.0f} rows/s "
          f"peak RSS {result['rss_mb']:6.0f} MB (read back {result['rows']})", flush=True)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, where, table, fmt, total, dim, batch = sys.argv[2:9]
        child(kind, where, table, fmt, int(total), int(dim), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--batches", default="1000,2000,5000")
    parser.add_argument("--formats", default="stable,legacy")
    parser.add_argument("--kinds", default="raw,insert,scan")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="toolkit-bench-lancedb-", dir=args.dir))
    try:
        if "raw" in kinds:  # the raw runs read the same rows as Arrow batches from a file, written untimed
            from toolkit.backends.lancedb import schema

            with pa_stream(work / "rows.arrows", schema(args.dim)) as out:
                for chunk in arrow_chunks(args.rows, args.dim, CHUNK):
                    out.write_batch(chunk)
        for fmt in args.formats.split(","):
            if "raw" in kinds:
                measure("raw", work / f"raw-{fmt}", "bench_archival", fmt, args.rows, args.dim, CHUNK)
                shutil.rmtree(work / f"raw-{fmt}")
            for n, batch in enumerate(map(int, args.batches.split(","))):
                where = work / f"insert-{fmt}-{batch}"
                if "insert" in kinds:
                    measure("insert", where, "bench_archival", fmt, args.rows, args.dim, batch)
                    if "scan" in kinds and n == 0:  # one scan per format: of the table the first batch size left
                        measure("scan", where, "bench_archival", fmt, args.rows, args.dim, 1000)
                    shutil.rmtree(where)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
