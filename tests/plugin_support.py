"""A user's test suite for the pytest plugin's tests: its files, and a real pytest run in its project dir
(with a basetemp of its own: pytest's default one deletes older runs' dirs, the suite's session server's too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import run_toolkit

USER_TESTS = '''
import os

import pytest


@pytest.mark.parametrize("i", range(4))
def test_each_test_sees_only_its_own_tables(pgvector_db, i):
    with pgvector_db.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert tables == ["seed"]
        conn.execute("CREATE TABLE mine (id int, e vector(3))")
        conn.execute("INSERT INTO mine VALUES (%s, '[1,2,3]')", (i,))
        role = conn.execute("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
        assert role == (False, False)
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        assert owner.fetchone()[0] == "memgpt"
        assert conn.execute("SELECT e FROM seed").fetchone()[0].to_list() == [0, 0, 1]  # pgvector's types


def test_memgpt_reads_the_variable(pgvector_env):
    import sqlalchemy

    url = os.environ["PGVECTOR_TEST_DB_URL"]
    assert url == pgvector_env.url and url.startswith("postgresql+pg8000://")
    with sqlalchemy.create_engine(url).connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar() == pgvector_env.name
'''

USER_CONFTEST = '''
import pytest


@pytest.fixture(scope="session")
def toolkit_load():
    return [lambda conn: conn.execute("CREATE TABLE seed (e vector(3)); INSERT INTO seed VALUES ('[0,0,1]')")]
'''


def write_suite(project: Path, tests: str = USER_TESTS, conftest: str = USER_CONFTEST) -> None:
    (project / "test_user.py").write_text(textwrap.dedent(tests))
    (project / "conftest.py").write_text(textwrap.dedent(conftest))


def pytest_argv(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(project / ".bt"), *args]


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pytest_argv(project, *args), cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOOLKIT_ENGINE": "embedded", **(env or {})})


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def running(project: Path, engine: str = "embedded") -> bool:
    done = run_toolkit("status", "--json", "--engine", engine, cwd=project)
    assert done.returncode == 0, done.stderr
    return bool(json.loads(done.stdout)["running"])


def tk_databases(project: Path) -> list[str]:
    done = run_toolkit("psql", "--engine", "embedded", "-c",
                       "SELECT datname FROM pg_database WHERE datname LIKE 'tk%' ORDER BY 1", "--", "-tA", cwd=project)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


SLOW_TESTS = '''
import os
import time
from pathlib import Path


def test_waits(pgvector_db):
    Path(os.environ["READY_FILE"]).write_text(pgvector_db.name)
    deadline = time.monotonic() + 120
    while not Path(os.environ["GO_FILE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pgvector_db.connect() as conn:  # the server is still up: the other run did not stop it
        conn.execute("SELECT 1")
'''
