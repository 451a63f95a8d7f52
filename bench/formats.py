"""What the MemGPT-era Chroma format costs: chromadb 0.5 in a worker process against chromadb 1.x in-process,
measured in one run on the same data.

    (a) environment: building the chromadb 0.5 environment into an empty clients directory (uv's cache
        warm, as on any machine after its first use; the first use ever also downloads ~90 packages).
    (b) smoke: one `toolkit smoke` check of a Chroma directory, format 0.5 vs format 1 (median of 5).
    (c) migrate: N passages x 1536 (default 10,000) from a local store into a new Chroma directory,
        verified, format 0.5 vs format 1 (median of 3).
    (d) reading a MemGPT directory untouched: `migrate --from` a 0.5 directory (private copy + worker)
        against the same rows from a 1.x directory (private copy, in-process).

Usage: .venv/bin/python bench/formats.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import smoke  # noqa: E402
from toolkit.backends import StoreLocation, open_store  # noqa: E402
from toolkit.backends.compat import envs  # noqa: E402
from toolkit.migrate import migrate  # noqa: E402
from toolkit.specs import Spec  # noqa: E402


def median(reps: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(reps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    clients = root / "clients"
    try:
        start = time.perf_counter()
        envs.python(envs.CHROMA["0.5"], clients)
        print(f"(a) chromadb 0.5 environment built (uv cache warm): {time.perf_counter() - start:.2f} s")

        def check(fmt: str) -> float:
            where = root / f"smoke-{fmt}-{time.monotonic_ns()}"
            location = StoreLocation("chroma", str(where), format=fmt, clients_dir=str(clients))
            began = time.perf_counter()
            result = smoke.check_location(location)
            assert result.ok, result.detail
            return time.perf_counter() - began

        old, new = median(5, lambda: check("0.5")), median(5, lambda: check("1"))
        print(f"(b) smoke, 100 x 1536: format 0.5 {old:.2f} s, format 1 {new:.2f} s: {old / new:.2f}x")

        source = root / "local"
        with open_store(StoreLocation("local", str(source))) as store:
            store.insert(smoke.seeded_passages(args.rows, 1536, seed=3))

        def copy(fmt: str) -> float:
            where = root / f"chroma-{fmt}-{time.monotonic_ns()}"
            result = migrate(Spec("local", str(source)), Spec("chroma", str(where), format=fmt, clients_dir=str(clients)))
            assert result.verified
            return result.seconds

        old, new = median(3, lambda: copy("0.5")), median(3, lambda: copy("1"))
        print(f"(c) migrate {args.rows} x 1536 into chroma, verified: format 0.5 {args.rows / old:,.0f} rows/s, "
              f"format 1 {args.rows / new:,.0f} rows/s: {old / new:.2f}x the time")

        for fmt in ("0.5", "1"):
            migrate(Spec("local", str(source)), Spec("chroma", str(root / f"src-{fmt}"), format=fmt,
                                                     clients_dir=str(clients)))

        def read(fmt: str) -> float:
            result = migrate(Spec("chroma", str(root / f"src-{fmt}"), clients_dir=str(clients)),
                             Spec("local", str(root / f"out-{fmt}-{time.monotonic_ns()}")))
            return result.seconds

        old, new = median(3, lambda: read("0.5")), median(3, lambda: read("1"))
        print(f"(d) migrate --from a chroma dir ({args.rows} rows, private copy): format 0.5 {old:.2f} s, "
              f"format 1 {new:.2f} s: {old / new:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
