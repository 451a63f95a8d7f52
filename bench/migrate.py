"""Benchmark `toolkit migrate` against the raw bulk-load path, measured in one run.

    (a) into Postgres: N passages (default 100k x 1536) from a local store, through toolkit's migrate
        (scan, upsert, checksum, verification) vs psycopg binary COPY of the same rows, already in
        memory, into a table of the same layout. Target: migrate at least 0.8x the raw rate.
    (b) rows/s into each destination (local, chroma, lancedb, postgres; chroma-http with
        --chroma HOST:PORT) for --other-rows passages.

Starts its own embedded Postgres on a free port in a temp dir unless --url is given.
Usage: .venv/bin/python bench/migrate.py [--rows 100000] [--other-rows 10000] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.backends import open_store  # noqa: E402
from toolkit.backends.base import MAX_EMBEDDING_DIM, Passage  # noqa: E402
from toolkit.migrate import migrate  # noqa: E402
from toolkit.specs import Spec  # noqa: E402


def make_passages(n: int, dim: int) -> list[Passage]:
    import numpy as np

    rng = np.random.default_rng(1536)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    user, agent = uuid.UUID(int=1), uuid.UUID(int=2)
    return [Passage(id=uuid.UUID(int=(7 << 64) + i), user_id=user, agent_id=agent, text=f"passage {i} " * 8,
                    embedding=vectors[i], data_source="bench", embedding_model="seeded-numpy",
                    metadata={"n": i}) for i in range(n)]


def raw_copy(url: str, table: str, rows: list[Passage]) -> float:
    """The floor: one binary COPY of the rows into MemGPT's layout, committed."""
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql
    from psycopg.types.json import Json

    from toolkit.backends.postgres import COLUMNS, DDL, TYPES

    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(sql.SQL(DDL).format(table=sql.Identifier(table)))
        conn.commit()
        start = time.perf_counter()
        dim = len(rows[0].embedding)
        padded = np.zeros(MAX_EMBEDDING_DIM, dtype=np.float32)
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as copy:
            copy.set_types(list(TYPES))
            for p in rows:
                padded[:dim] = p.embedding
                copy.write_row((p.id, p.user_id, p.text, p.doc_id, p.agent_id, p.data_source, padded, dim,
                                p.embedding_model, Json(p.metadata), p.created_at))
        conn.commit()
        seconds = time.perf_counter() - start
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        conn.commit()
    return seconds


def timed_migrate(source: Spec, destination: Spec, table: str, batch: int) -> dict[str, float]:
    """Migrate, timing the copy phase (last batch written) and the whole run (with verification)."""
    marks: list[float] = []
    start = time.perf_counter()
    result = migrate(source, destination, table=table, batch=batch, progress=lambda n: marks.append(time.perf_counter()))
    total = time.perf_counter() - start
    assert result.verified
    return {"rows": result.rows, "copy": marks[-1] - start, "total": total}


def drop(spec: Spec, table: str) -> None:
    with closing(open_store(spec.store(table))) as store:
        store.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--other-rows", type=int, default=10_000, help="rows for the per-destination table")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--url", help="an existing Postgres+pgvector (libpq or SQLAlchemy URL)")
    parser.add_argument("--chroma", metavar="HOST:PORT", help="also measure a running Chroma server")
    parser.add_argument("--destinations", default="local,chroma,lancedb,postgres")
    args = parser.parse_args()

    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="toolkit-bench-migrate-"))
        stack.callback(shutil.rmtree, work, True)
        url = args.url
        if url is None:
            from toolkit import api
            from toolkit.ports import free_port

            print("starting an embedded Postgres...", file=sys.stderr)
            db = stack.enter_context(api.postgres(port=free_port(), project_dir=str(work), state_dir=str(work / "pg")))
            url = db.libpq_url
        from toolkit.urls import parse

        url = parse(url).libpq
        pg = Spec("postgres", url)

        print(f"generating {args.rows} passages of dim {args.dim}...", file=sys.stderr)
        rows = make_passages(args.rows, args.dim)
        source = Spec("local", str(work / "source"))
        with closing(open_store(source.store("bench_source"))) as store:
            for i in range(0, len(rows), 10_000):
                store.insert(rows[i:i + 10_000])

        raw = raw_copy(url, "bench_raw", rows)
        toolkit = timed_migrate(source, pg, "bench_source", args.batch)
        drop(pg, "bench_source")
        n = args.rows
        print(f"\n(a) {n} x {args.dim} into Postgres")
        print(f"  raw COPY (psycopg, binary)      {raw:7.1f} s  {n / raw:8.0f} rows/s")
        print(f"  toolkit migrate, copy phase     {toolkit['copy']:7.1f} s  {n / toolkit['copy']:8.0f} rows/s"
              f"  ratio {raw / toolkit['copy']:.2f}x")
        print(f"  toolkit migrate, with verify    {toolkit['total']:7.1f} s  {n / toolkit['total']:8.0f} rows/s"
              f"  ratio {raw / toolkit['total']:.2f}x  (target >= 0.8x)")

        m = min(args.other_rows, n)
        small = Spec("local", str(work / "small"))
        with closing(open_store(small.store("bench_small"))) as store:
            for i in range(0, m, 10_000):
                store.insert(rows[i:min(i + 10_000, m)])
        del rows
        destinations: dict[str, Any] = {
            "local": Spec("local", str(work / "dest-local")), "chroma": Spec("chroma", str(work / "dest-chroma")),
            "lancedb": Spec("lancedb", str(work / "dest-lance")), "postgres": pg}
        if args.chroma:
            destinations["chroma-http"] = Spec("chroma-http", args.chroma)
        wanted = [d for d in args.destinations.split(",") if d] + (["chroma-http"] if args.chroma else [])
        print(f"\n(b) {m} x {args.dim} from local into each destination (copy phase / with verify)")
        for name in wanted:
            spec = destinations[name]
            t = timed_migrate(small, spec, "bench_small", args.batch)
            print(f"  {name:12s} {m / t['copy']:8.0f} rows/s  {m / t['total']:8.0f} rows/s")
            if name in ("postgres", "chroma-http"):
                drop(spec, "bench_small")


if __name__ == "__main__":
    main()
