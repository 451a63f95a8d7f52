"""Benchmark the pytest plugin's ``pgvector_db`` against pytest-postgresql's janitor, same server, same run.

    ours    pgvector_db: a database cloned per test from the run's template, prepared ahead and dropped
            behind on a thread (toolkit/testing/databases.py)
    theirs  pytest-postgresql 10: postgresql_noproc(host, port, postgres, password, load=[CREATE EXTENSION
            vector]) + the ``postgresql`` fixture (clones its template and drops in the test's own time)

Each side is a real pytest process in a scratch directory of its own, against one embedded server this
script starts (on a free port, in a temp project dir) and stops at the end. Two test bodies, the same on
both sides: "archival" (register pgvector, create a table with a vector(8) column, insert 50 rows, one
nearest-neighbour query) and "empty" (nothing: tests arrive as fast as pytest can run them, the worst case
for databases prepared ahead).

What "fixture cost" measures, exactly: the time spent in the database fixture alone, per test. A conftest
in each scratch dir wraps ``pytest_fixture_setup`` (hookwrapper, time.perf_counter) for the fixture
(``pgvector_db`` / ``postgresql``): that is its setup. Teardown is from a finalizer the wrapper adds right
after setup (finalizers run last in, first out, so it runs first) to ``pytest_fixture_post_finalizer``
(which pytest runs after all of the fixture's finalizers). Session fixtures (the server, the template) are
set up before the first test by an autouse session fixture, so they are not counted as a test's cost.
Theirs hands the test an open connection, ours a database the test connects to: the connect is in their
fixture and in our test body, so the per-test total (setup + call + teardown, from pytest's reports) is
printed too. Each worker writes its numbers to a JSON file; the script reads them back.

Then 200 tests (``--xdist-tests``) of the archival body under ``-n 4`` and ``-n 1`` (pytest-xdist), wall
time of the pytest process, for ours (and theirs).

Usage: .venv/bin/python bench/fixtures.py [--tests 100] [--runs 3] [--xdist-tests 200] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.ports import free_port  # noqa: E402

SIDES = {"ours": "pgvector_db", "theirs": "postgresql"}
BODIES = ("archival", "empty")

# the timing hooks, the same on both sides: the fixture's setup and teardown, and each phase's duration
TIMING = '''
import json, os, time
import pytest

FIXTURE = {fixture!r}
_records = {{}}


def _record(nodeid):
    return _records.setdefault(nodeid, {{}})


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname != FIXTURE:
        yield
        return
    start = time.perf_counter()
    yield
    record = _record(request.node.nodeid)
    record["setup"] = time.perf_counter() - start
    # finalizers run last in, first out: this one runs before the fixture's own teardown
    fixturedef.addfinalizer(lambda: record.__setitem__("teardown_start", time.perf_counter()))


def pytest_fixture_post_finalizer(fixturedef, request):
    if fixturedef.argname == FIXTURE:
        record = _record(request.node.nodeid)
        if "teardown_start" in record:
            record["teardown"] = time.perf_counter() - record.pop("teardown_start")


def pytest_runtest_logreport(report):
    _record(report.nodeid)["phase_" + report.when] = report.duration


def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    out = os.path.join(os.environ["BENCH_OUT"], worker + ".json")
    with open(out, "w") as f:
        json.dump(_records, f)
'''

OURS = '''
@pytest.fixture(scope="session", autouse=True)
def _session_first(request):
    request.getfixturevalue("_toolkit_databases")  # the server and the run's template, before any test
'''

THEIRS = '''
from pytest_postgresql import factories


def _extension(host, port, user, dbname, password, **_):
    import psycopg

    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


postgresql_noproc = factories.postgresql_noproc(host="127.0.0.1", port={port}, user="postgres", password={password!r},
                                                dbname="bench", load=[_extension])
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture(scope="session", autouse=True)
def _session_first(request):
    request.getfixturevalue("postgresql_noproc")  # the template, before any test
'''

BODY = {
    "archival": '''
    import numpy as np
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = np.random.default_rng(i)
    conn.execute("CREATE TABLE passages (id int PRIMARY KEY, text text, embedding vector(8))")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO passages VALUES (%s, %s, %s)",
                        [(n, f"passage {n}", rng.standard_normal(8).astype(np.float32)) for n in range(50)])
    rows = conn.execute("SELECT id FROM passages ORDER BY embedding <-> %s LIMIT 5",
                        (rng.standard_normal(8).astype(np.float32),)).fetchall()
    assert len(rows) == 5
    conn.commit()
''',
    "empty": '''
    pass
''',
}

TEST = {
    "ours": '''
import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_{body}(i, pgvector_db):
    with pgvector_db.connect(register_vector=False) as conn:
        _body(conn, i)


def _body(conn, i):
{code}
''',
    "theirs": '''
import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_{body}(i, postgresql):
    _body(postgresql, i)


def _body(conn, i):
{code}
''',
}
EMPTY_TEST = {
    "ours": '''
import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_empty(i, pgvector_db):
    pass
''',
    "theirs": '''
import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_empty(i, postgresql):
    pass
''',
}


class Server:
    """One embedded Postgres+pgvector for the whole benchmark, in a temp project dir, on a free port."""

    def __init__(self, root: Path) -> None:
        from toolkit.settings import resolve

        self.project = root / "server"
        self.project.mkdir()
        self.settings = resolve({"engine": "embedded", "db.port": free_port(), "timeout": 120.0},
                                environ={}, project_dir=self.project)

    def start(self) -> None:
        from toolkit import api

        api.up(self.settings, export=False)

    def stop(self) -> None:
        from toolkit import api

        api.down(self.settings, purge=True)

    @property
    def port(self) -> int:
        return self.settings.db.port

    @property
    def superuser_password(self) -> str:
        return (self.settings.state_dir / "embedded" / "superuser.pw").read_text().strip()


def scratch(root: Path, server: Server, side: str, body: str, tests: int) -> Path:
    """A directory with a conftest (timing hooks + the side's fixtures) and one test file of ``tests`` tests."""
    where = root / f"{side}-{body}-{tests}"
    if where.exists():
        return where
    where.mkdir()
    conftest = TIMING.format(fixture=SIDES[side])
    conftest += OURS if side == "ours" else THEIRS.format(port=server.port, password=server.superuser_password)
    (where / "conftest.py").write_text(conftest)
    if body == "empty":
        test = EMPTY_TEST[side].format(tests=tests)
    else:
        test = TEST[side].format(tests=tests, body=body, code=BODY[body].strip("\n"))
    (where / f"test_{body}.py").write_text(test)
    return where


def run_pytest(where: Path, server: Server, side: str, workers: int | None) -> tuple[float, list[dict[str, float]]]:
    """One pytest process in ``where``: its wall time and each test's record."""
    out = where / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLKIT_", "PYTEST_"))}
    env.update(BENCH_OUT=str(out), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # a basetemp of its own: pytest's default one (/tmp/pytest-of-USER) keeps 3 runs and deletes older ones,
    # the state dir of an embedded server that another pytest (a test suite running this script) still uses
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            "-W", "ignore::pytest.PytestAssertRewriteWarning", "--rootdir", str(where), "--basetemp", str(where / "basetemp")]
    if side == "ours":
        argv += ["--toolkit-project-dir", str(server.project)]
    if workers is not None:
        argv += ["-n", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest failed in {where} ({side}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    records: list[dict[str, float]] = []
    for path in sorted(out.glob("*.json")):
        if path.stem == "main" and workers is not None:
            continue  # the xdist controller ran no tests
        records += json.loads(path.read_text()).values()
    return wall, records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def spread(values: list[float], fmt: Any = ms) -> str:
    return f"{fmt(min(values))} to {fmt(max(values))}" if len(values) > 1 else fmt(values[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=100, help="tests per pytest run (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side and body; sides alternate first")
    parser.add_argument("--xdist-tests", type=int, default=200, help="tests of the -n N vs -n 1 comparison (0: skip)")
    parser.add_argument("--workers", type=int, default=4, help="pytest-xdist workers of that comparison (default 4)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="toolkit-bench-fixtures-"))
    server = Server(work)
    server.start()
    try:
        report(work, server, args)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(work: Path, server: Server, args: argparse.Namespace) -> None:
    # warm both sides once (imports, page cache), unmeasured
    for side in SIDES:
        run_pytest(scratch(work, server, side, "archival", 5), server, side, None)
    print(f"pytest fixture benchmark: {args.tests} tests per run, {args.runs} run(s) per side and body, one embedded "
          f"server (port {server.port})")
    print("fixture = the database fixture's setup + teardown per test; total = setup + call + teardown; ms")
    print(f"{'body':<9} {'side':<7} {'fixture med':>11} {'p90':>7} {'setup':>7} {'teardown':>8} {'total med':>9} "
          f"{'wall s':>7}   fixture median, run by run")
    for body in BODIES:
        medians: dict[str, list[float]] = {side: [] for side in SIDES}
        lines: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
        for run in range(args.runs):
            for side in (SIDES if run % 2 == 0 else reversed(list(SIDES))):
                wall, records = run_pytest(scratch(work, server, side, body, args.tests), server, side, None)
                fixture = [r["setup"] + r["teardown"] for r in records]
                medians[side].append(statistics.median(fixture))
                acc = lines[side]
                acc.setdefault("fixture", []).extend(fixture)
                acc.setdefault("setup", []).extend(r["setup"] for r in records)
                acc.setdefault("teardown", []).extend(r["teardown"] for r in records)
                acc.setdefault("total", []).extend(r["phase_setup"] + r["phase_call"] + r["phase_teardown"]
                                                   for r in records)
                acc.setdefault("wall", []).append(wall)
        for side in SIDES:
            acc = lines[side]
            print(f"{body:<9} {side:<7} {ms(statistics.median(acc['fixture'])):>11} {ms(percentile(acc['fixture'], 0.9)):>7} "
                  f"{ms(statistics.median(acc['setup'])):>7} {ms(statistics.median(acc['teardown'])):>8} "
                  f"{ms(statistics.median(acc['total'])):>9} {statistics.median(acc['wall']):>7.2f}   "
                  f"{', '.join(ms(m) for m in medians[side])}")
        ratios = [t / o for t, o in zip(medians["theirs"], medians["ours"], strict=True)]
        ours = statistics.median(lines["ours"]["fixture"])
        ratio = statistics.median(lines["theirs"]["fixture"]) / ours
        print(f"{body:<9} ratio theirs/ours (fixture median) {ratio:.1f}x, run by run {spread(ratios, lambda r: f'{r:.1f}x')}"
              f"  (target: ours <= 15 ms: {'ok' if ours <= 0.015 else 'over'}, >= 4x: {'ok' if ratio >= 4 else 'under'})")
        total = statistics.median(lines["theirs"]["total"]) / statistics.median(lines["ours"]["total"])
        print(f"{'':<9} ratio theirs/ours (per-test total) {total:.1f}x")
    if args.xdist_tests:
        print(f"\n{args.xdist_tests} archival tests, wall time of the pytest process, -n {args.workers} vs -n 1 "
              f"(median of {args.runs})")
        for side in SIDES:
            where = scratch(work, server, side, "archival", args.xdist_tests)
            walls: dict[int, list[float]] = {args.workers: [], 1: []}
            for run in range(args.runs):
                for workers in (args.workers, 1) if run % 2 == 0 else (1, args.workers):
                    walls[workers].append(run_pytest(where, server, side, workers)[0])
            many, one = statistics.median(walls[args.workers]), statistics.median(walls[1])
            print(f"{side:<7} -n {args.workers}: {many:.2f}s ({spread(walls[args.workers], lambda s: f'{s:.2f}')})  "
                  f"-n 1: {one:.2f}s ({spread(walls[1], lambda s: f'{s:.2f}')})  ratio -n 1 / -n {args.workers}: "
                  f"{one / many:.2f}x")


if __name__ == "__main__":
    main()
