"""Benchmark the archival backends (room: bench/), every figure measured in this one run.

    insert   rows/s upserting ROWS x DIM seeded passages in batches of 1000 (a fresh table)
    query    queries/s of top-10 nearest-neighbour queries on that table
    smoke    wall time of `toolkit smoke --backend all` (a subprocess, as a user runs it) against the
             slowest single backend's check in the same run; target <= 1.2x (the checks run in parallel)

Starts its own servers on free ports in a temp dir (embedded Postgres, `chroma run`, moto S3) and stops
them. Usage: .venv/bin/python bench/backends.py [--rows 10000] [--dim 1536] [--queries 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import smoke  # noqa: E402
from toolkit.backends import StoreLocation, open_store  # noqa: E402
from toolkit.ports import free_port  # noqa: E402
from toolkit.settings import resolve  # noqa: E402


def start_servers(stack: ExitStack, root: Path) -> dict[str, str]:
    """Postgres, Chroma and S3 on free ports; returns the environment that points the toolkit at them."""
    from toolkit.api import postgres
    from toolkit.services.chroma_server import chroma_server
    from toolkit.services.s3_server import create_bucket, env_values, s3_server

    db = stack.enter_context(postgres(port=free_port(), state_dir=str(root / "pg"), project_dir=str(root)))
    settings = resolve({"state_dir": str(root / "state")}, environ={}, project_dir=root)
    chroma = chroma_server(settings, port=free_port())
    chroma.up(timeout=120)
    stack.callback(chroma.down)
    s3 = s3_server(settings, port=free_port())
    s3.up(timeout=120)
    stack.callback(s3.down)
    create_bucket(s3)
    return {"PGVECTOR_TEST_DB_URL": db.url, "TOOLKIT_CHROMA_PORT": str(chroma.port), **env_values(s3)}


def locations(env: dict[str, str], root: Path) -> list[StoreLocation]:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    s3 = {"aws_endpoint": env["TOOLKIT_S3_ENDPOINT"], "aws_region": env["TOOLKIT_S3_REGION"], "allow_http": "true",
          "aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    return [
        StoreLocation("local", str(root / "local"), table),
        StoreLocation("postgres", env["PGVECTOR_TEST_DB_URL"], table),
        StoreLocation("chroma", str(root / "chroma"), table),
        StoreLocation("chroma-http", f"127.0.0.1:{env['TOOLKIT_CHROMA_PORT']}", table),
        StoreLocation("lancedb", str(root / "lance"), table),
        StoreLocation("lancedb-s3", "s3://toolkit/bench", table, s3),
    ]


def throughput(location: StoreLocation, rows: int, dim: int, queries: int) -> tuple[float, float]:
    data = smoke.seeded_passages(rows, dim, seed=1)
    with open_store(location) as store:
        try:
            start = time.perf_counter()
            for i in range(0, rows, 1000):
                store.insert(data[i:i + 1000])
            inserted = time.perf_counter() - start
            assert store.count() == rows
            probes = data[:: max(1, rows // queries)][:queries]
            start = time.perf_counter()
            for p in probes:
                store.query(p.embedding, 10)
            queried = time.perf_counter() - start
        finally:
            store.drop()
    return rows / inserted, len(probes) / queried


def smoke_all(env: dict[str, str], root: Path) -> tuple[float, float, str]:
    """One `toolkit smoke --backend all` process: (its wall time, the slowest check, that backend)."""
    project = root / f"smoke-{uuid.uuid4().hex[:6]}"
    project.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_")}
    done = subprocess.run([sys.executable, "-m", "toolkit", "smoke", "--backend", "all", "--json"],
                          capture_output=True, text=True, cwd=project, check=False,
                          env={**clean, **env, "HOME": str(project), "MEMGPT_CONFIG_PATH": str(project / "cfg")})
    report = json.loads(done.stdout)
    if not report["ok"]:
        raise SystemExit(f"smoke failed: {done.stdout}")
    slowest = max(report["results"], key=lambda r: r["seconds"])
    return report["seconds"], slowest["seconds"], slowest["backend"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3, help="smoke runs; the median ratio is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        env = start_servers(stack, root)
        print(f"{'backend':<12} {'insert rows/s':>14} {'query q/s':>10}   ({args.rows} x {args.dim}, top-10)")
        for location in locations(env, root):
            inserts, queries = throughput(location, args.rows, args.dim, args.queries)
            print(f"{location.backend:<12} {inserts:>14,.0f} {queries:>10,.1f}", flush=True)
        runs = [smoke_all(env, root) for _ in range(args.reps)]
        ratios = [wall / slowest for wall, slowest, _ in runs]
        for wall, slowest, backend in runs:
            print(f"smoke --backend all: wall {wall:.2f}s, slowest check {slowest:.2f}s ({backend}), "
                  f"ratio {wall / slowest:.2f}x")
        verdict = "ok" if statistics.median(ratios) <= 1.2 else "over target"
        print(f"smoke parallelism: median ratio {statistics.median(ratios):.2f}x (target <= 1.2x: {verdict})")


if __name__ == "__main__":
    main()
