"""Benchmark the local backend at scale (room: bench/): every step in a fresh subprocess under /usr/bin/time -v.

    raw      one segment written directly (JSONL + .npy streamed chunk by chunk + manifest, each fsynced):
             the floor a local insert is compared with
    insert   LocalStore.insert in batches of --batches rows (what a migration passes), a fresh table each
    scan     a full scan(1000) of the table the first insert run wrote

Prints rows/s and peak RSS ("Maximum resident set size") per step, and insert rows/s as a fraction of raw.
Rows: seeded float32 embeddings, built chunk by chunk so the measuring process stays small.
Usage: .venv/bin/python bench/local_scale.py --rows 100000 [--dim 1536] [--batches 1000,2000,5000] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER = uuid.UUID(int=1)


def chunks(rows: int, dim: int, size: int) -> Iterator[list]:
    import numpy as np

    from toolkit.backends.base import Passage

    rng = np.random.default_rng(1)
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for start in range(0, rows, size):
        n = min(size, rows - start)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        yield [Passage(text=f"passage {start + i} " + "lorem ipsum " * 16, embedding=vectors[i], user_id=USER,
                       id=uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | start + i), metadata={"n": start + i},
                       created_at=when) for i in range(n)]


def raw(rows: int, dim: int, where: Path) -> float:
    import numpy as np

    from toolkit.backends._util import matrix
    from toolkit.backends.local import _JSON, _to_row

    where.mkdir(parents=True)
    seconds = 0.0
    with open(where / "000001.jsonl", "wb") as jsonl, open(where / "000001.npy", "wb") as npy:
        np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for batch in chunks(rows, dim, 5000):
            began = time.perf_counter()
            jsonl.write("".join(_JSON.encode(_to_row(p)) + "\n" for p in batch).encode())
            npy.write(matrix(batch).tobytes())
            seconds += time.perf_counter() - began
        began = time.perf_counter()
        for handle in (jsonl, npy):
            handle.flush()
            os.fsync(handle.fileno())
        manifest = {"uid": "raw", "version": 1, "dim": dim, "segments": ["000001"], "next": 2}
        (where / "manifest.json").write_text(json.dumps(manifest))
        seconds += time.perf_counter() - began
    return seconds


def insert(rows: int, dim: int, where: Path, batch: int) -> float:
    from toolkit.backends import StoreLocation, open_store

    seconds = 0.0
    with open_store(StoreLocation("local", str(where.parent), where.name)) as store:
        for passages in chunks(rows, dim, batch):
            began = time.perf_counter()
            store.insert(passages)
            seconds += time.perf_counter() - began
    return seconds


def scan(where: Path, batch: int) -> tuple[float, int]:
    from toolkit.backends import StoreLocation, open_store

    began = time.perf_counter()
    seen = 0
    with open_store(StoreLocation("local", str(where.parent), where.name)) as store:
        for passages in store.scan(batch):
            seen += len(passages)
    return time.perf_counter() - began, seen


def measured(args: list[str]) -> tuple[dict, int]:
    """Run this file's step ``args`` in a subprocess under /usr/bin/time -v: its JSON answer and peak RSS (KiB)."""
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--step", *args], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return json.loads(done.stdout.strip().splitlines()[-1]), rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--batches", default="1000,2000,5000")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/local-scale-bench"))
    parser.add_argument("--step", nargs="*")
    args = parser.parse_args()
    if args.step:
        kind, *rest = args.step
        where = Path(rest[0])
        if kind == "raw":
            print(json.dumps({"seconds": raw(int(rest[1]), int(rest[2]), where)}))
        elif kind == "insert":
            print(json.dumps({"seconds": insert(int(rest[1]), int(rest[2]), where, int(rest[3]))}))
        else:
            seconds, seen = scan(where, int(rest[1]))
            print(json.dumps({"seconds": seconds, "rows": seen}))
        return
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    try:
        answer, rss = measured(["raw", str(args.dir / "raw"), str(args.rows), str(args.dim)])
        floor = args.rows / answer["seconds"]
        print(f"raw     {args.rows} x {args.dim}: {floor:9.0f} rows/s  peak RSS {rss / 1024:6.0f} MiB", flush=True)
        shutil.rmtree(args.dir / "raw")
        batches = [int(b) for b in args.batches.split(",")]
        for batch in batches:
            table = args.dir / f"t{batch}"
            answer, rss = measured(["insert", str(table), str(args.rows), str(args.dim), str(batch)])
            rate = args.rows / answer["seconds"]
            segments = len(json.loads((table / "manifest.json").read_text())["segments"])
            print(f"insert  batch {batch:5d}: {rate:9.0f} rows/s ({rate / floor:.2f}x raw)  peak RSS {rss / 1024:6.0f} MiB"
                  f"  {segments} segments", flush=True)
            if batch == batches[0]:
                answer, rss = measured(["scan", str(table), "1000"])
                assert answer["rows"] == args.rows, answer
                print(f"scan    batch  1000: {args.rows / answer['seconds']:9.0f} rows/s  peak RSS {rss / 1024:6.0f} MiB",
                      flush=True)
            shutil.rmtree(table)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
