"""When things go badly: what a load that fails, an xdist worker that crashes, a run killed while its template is
made leave on the server (none of it may stay for ever: the run itself or the next one drops it), and the one line
a user gets for a bad option or a load that holds the template.

Real pytest runs in the test's project dir against its embedded server (helpers: tests/test_plugin.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.plugin_support import USER_CONFTEST, USER_TESTS, output, pytest_argv, run_pytest, tk_databases, write_suite
from tests.support import run_toolkit, wait_until


def test_a_load_that_fails_leaves_no_template_and_an_undecodable_file_fails_in_one_line(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, "def test_one(pgvector_db):\n    pass\n", "")
    (project / "latin1.sql").write_bytes("INSERT INTO t VALUES ('caf\xe9');\n".encode("latin-1"))
    failed = run_pytest(project, "--toolkit-load", "latin1.sql")
    assert failed.returncode == 1, output(failed)
    assert "toolkit: loading the test template failed in sql_file(" in failed.stdout, output(failed)
    assert "codec can't decode" in failed.stdout and "Traceback" not in failed.stdout
    assert tk_databases(project) == [], "a template whose load failed is dropped (nothing sweeps it later)"

    (project / "broken.sql").write_text("CREATE TABLE docs (id int);\nINSERT INTO nowhere VALUES (1);\n")
    failed = run_pytest(project, "--toolkit-load", "broken.sql")
    assert failed.returncode == 1 and 'relation "nowhere" does not exist' in failed.stdout, output(failed)
    assert tk_databases(project) == []


CRASHING_TESTS = '''
import os
import re
import signal
import time

import pytest


def test_crashes(pgvector_db):
    # once this worker's threads have cloned the two they prepare ahead (and sit idle), the worker dies; two
    # threads clone, so which names those are is theirs to decide: count them
    prefix = pgvector_db.name.rsplit("_", 1)[0] + "_"
    deadline = time.monotonic() + 120
    with pgvector_db.connect() as conn:
        while conn.execute("SELECT count(*) FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
                           (prefix, pgvector_db.name)).fetchone()[0] < 2:
            assert time.monotonic() < deadline, "the worker's threads never prepared two databases ahead"
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("i", range(4))
def test_others(pgvector_db, i):
    pass
'''


def test_what_a_crashed_xdist_worker_left_is_dropped_by_the_runs_last_process(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, CRASHING_TESTS, "")
    done = run_pytest(project, "-n", "2")
    assert done.returncode == 1 and "crashed" in done.stdout and "4 passed" in done.stdout, output(done)
    left = tk_databases(project)
    if left:  # the crashed worker's session can outlive the run's last process by a moment: the next run sweeps
        write_suite(project)
        assert run_pytest(project).returncode == 0
        assert not set(left) & set(tk_databases(project)), "the crashed worker's databases outlived the next run too"


LOAD_WAITS = '''
import os
import re
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def toolkit_load():
    def load(conn):
        conn.execute("CREATE TABLE seed (e vector(3))")
        Path(os.environ["READY_FILE"]).write_text("")
        time.sleep(600)  # killed here
    return [load]
'''


def test_a_run_killed_while_its_template_is_made_is_swept_by_the_next(embedded_down_after: Path, tmp_path: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, "def test_one(pgvector_db):\n    pass\n", LOAD_WAITS)
    env = {**os.environ, "TOOLKIT_ENGINE": "embedded", "READY_FILE": str(tmp_path / "ready")}
    killed = subprocess.Popen(pytest_argv(project), cwd=project, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), 120, "the load to begin")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    [template] = tk_databases(project)
    assert template.endswith("_tpl")
    # a run killed between creating its template and naming it: a template with no comment, and a crashed
    # worker's database whose template is gone; nobody holds their run's key
    with _superuser(project) as conn:
        for name in ("tk_0123456789ab_tpl", "tk_00000000000c_gw1_7"):
            conn.execute(f'CREATE DATABASE "{name}"')
    write_suite(project, USER_TESTS, USER_CONFTEST)
    done = run_pytest(project)
    assert done.returncode == 0, output(done)
    assert tk_databases(project) == [], "the next run sweeps what killed runs left"


def _superuser(project: Path):  # type: ignore[no-untyped-def]
    import psycopg

    from toolkit import engines
    from toolkit.settings import resolve

    settings = resolve({"engine": "embedded"}, environ=dict(os.environ), project_dir=project)
    engine, _ = engines.select(settings)
    return psycopg.connect(engine.admin().url.libpq, autocommit=True)


LOAD_LEAVES_A_CONNECTION = '''
import psycopg
import pytest

LEFT_OPEN = []


@pytest.fixture(scope="session")
def toolkit_load():
    def load(conn):  # a connection of its own to the template, never closed: no clone can be made
        LEFT_OPEN.append(psycopg.connect(conn.info.dsn, password=conn.info.password))
    return [load]
'''


def test_a_load_that_leaves_a_connection_to_the_template_fails_each_test_in_one_line(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, "def test_one(pgvector_db):\n    pass\n\n\ndef test_two(pgvector_db):\n    pass\n",
                LOAD_LEAVES_A_CONNECTION)
    for ahead in ("2", "0"):  # cloned on the thread, or in the test's own time
        done = run_pytest(project, "--toolkit-ahead", ahead)
        assert done.returncode == 1 and "2 errors" in done.stdout, output(done)
        # the error sections' lines (pytest's summary repeats them, cut to the terminal's width unless CI=true)
        said = [line for line in done.stdout.splitlines() if line.startswith("toolkit: cannot clone the test template: ")]
        assert len(said) == 2 and all("source database" in line for line in said), output(done)
        assert "must close it" in done.stdout and "Traceback" not in done.stdout and "psycopg.errors" not in done.stdout


def test_bad_options_end_the_run_before_any_test(isolated: Path) -> None:
    project = isolated
    write_suite(project, "def test_one(pgvector_db):\n    pass\n", "")
    (project / "schema").mkdir()
    os.mkfifo(project / "fifo.sql")
    for args, said in ((("--toolkit-ahead", "-1"), "toolkit_ahead must be a whole number, 0 or more, not -1"),
                       (("--toolkit-load", "schema"), "schema is not a file"),
                       (("--toolkit-load", "fifo.sql"), "fifo.sql is not a file"),  # read, it would hang the run
                       (("--toolkit-url", "postgresql://u:s3cret@h:99999/d"), "--toolkit-url: invalid database URL"),
                       (("--toolkit-project-dir", "typo/x"), "--toolkit-project-dir typo/x is not a directory")):
        done = run_pytest(project, *args)
        assert done.returncode == 4 and said in output(done), output(done)
        assert "s3cret" not in output(done)
    assert not (project / "typo").exists(), "a mistyped project dir was made, and a server set up in it"


def test_runs_given_the_same_testrunuid_share_no_database_name(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, "import pytest\n\n\n@pytest.mark.parametrize('i', range(4))\ndef test_one(pgvector_db, i):\n"
                         "    pass\n", "")
    kept: list[str] = []
    for _ in range(2):  # xdist's --testrunuid is the user's, the same for every run (a CI job's id, say)
        done = run_pytest(project, "-n", "2", "--testrunuid", "ci-job-42", "--toolkit-keep")
        assert done.returncode == 0, output(done)
        names = sorted(set(tk_databases(project)) - set(kept))
        assert len(names) == 4 and len({name.split("_")[1] for name in names}) == 1, names
        assert re.fullmatch(r"tk_[0-9a-f]{12}_gw[01]_[0-9]+", names[0]), "a run id the sweep can read"
        kept += names
