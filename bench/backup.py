"""Benchmark `toolkit backup` and `toolkit restore` against the raw tools, measured in one run.

    backup   wall time of `toolkit backup` (a subprocess, as a user runs it: pg_dump plus the census of
             every table's rows and checksum in the same snapshot; gzip level 1) vs `pg_dump -Fc` (level 6) of the
             same database; and the two dumps' sizes
    restore  wall time of `toolkit restore --yes` (one transaction, then the verification) vs
             `pg_restore --single-transaction --clean --if-exists` of the same dump

N passages (default 20k x 1536) in MemGPT's archival table, in an embedded Postgres on a free port in a
temp dir, stopped at the end. Usage: .venv/bin/python bench/backup.py [--rows 20000] [--dim 1536] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.migrate import make_passages  # noqa: E402
from toolkit.backends import open_store  # noqa: E402
from toolkit.specs import Spec  # noqa: E402


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from toolkit import api
    from toolkit.engines.wheel import bin_path
    from toolkit.ports import free_port

    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="toolkit-bench-backup-"))
        stack.callback(shutil.rmtree, work, True)
        port = free_port()
        print("starting an embedded Postgres...", file=sys.stderr)
        db = stack.enter_context(api.postgres(port=port, project_dir=str(work), state_dir=str(work / ".toolkit")))
        print(f"loading {args.rows} passages of dim {args.dim}...", file=sys.stderr)
        with closing(open_store(Spec("postgres", db.libpq_url).store("memgpt_archival_memory_agent"))) as store:
            store.insert(make_passages(args.rows, args.dim))
        env = {**os.environ, "TOOLKIT_ENGINE": "embedded", "TOOLKIT_PG_PORT": str(port), "PGPASSWORD": "memgpt",
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        env.pop("PGVECTOR_TEST_DB_URL", None)
        conninfo = f"postgresql://memgpt@127.0.0.1:{port}/memgpt"
        toolkit = [sys.executable, "-m", "toolkit"]
        raw_dump, ours_dump, raw_restore, ours_restore = [], [], [], []
        for rep in range(args.reps):
            raw_file, our_file = work / f"raw-{rep}.dump", work / f"ours-{rep}.dump"
            raw_dump.append(timed([str(bin_path("pg_dump")), "-Fc", "-f", str(raw_file), conninfo], env, work))
            ours_dump.append(timed([*toolkit, "backup", str(our_file)], env, work))
            # as toolkit restores: without the extension entries (the application role may not drop `vector`)
            listing = subprocess.run([str(bin_path("pg_restore")), "-l", str(raw_file)], capture_output=True, text=True,
                                     check=True).stdout
            chosen = work / f"raw-{rep}.list"
            chosen.write_text("".join(line + "\n" for line in listing.splitlines() if " EXTENSION " not in line))
            raw_restore.append(timed([str(bin_path("pg_restore")), "--single-transaction", "--clean", "--if-exists",
                                      "--no-owner", "--no-privileges", "-L", str(chosen), "-d", conninfo,
                                      str(raw_file)], env, work))
            ours_restore.append(timed([*toolkit, "restore", "--yes", str(our_file)], env, work))
        for what, ours, raw in (("backup", ours_dump, raw_dump), ("restore", ours_restore, raw_restore)):
            o, r = statistics.median(ours), statistics.median(raw)
            print(f"{what}: toolkit {o:.2f} s, raw {r:.2f} s (median of {args.reps}); ratio {o / r:.2f}x")
        ours_size, raw_size = (work / "ours-0.dump").stat().st_size, (work / "raw-0.dump").stat().st_size
        mib = 2**20
        print(f"dump size: toolkit {ours_size / mib:.1f} MiB, raw {raw_size / mib:.1f} MiB; ratio {ours_size / raw_size:.2f}x")


if __name__ == "__main__":
    main()
