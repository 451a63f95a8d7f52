"""The pytest plugin as a user meets it: a test suite of their own, in a project dir of its own, run by a real
pytest (alone, with pytest-xdist, two at once, killed), against real embedded servers.

Each test writes the user's files into its isolated project dir and runs ``python -m pytest`` there with the
test's environment (TOOLKIT_PG_PORT a free port, TOOLKIT_ENGINE embedded: no Docker engine is asked).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_support import (
    SLOW_TESTS,
    USER_CONFTEST,
    USER_TESTS,
    output,
    pytest_argv,
    run_pytest,
    running,
    tk_databases,
    write_suite,
)
from tests.support import clean_env, run_toolkit, source_copy, uv_binary, wait_until
from toolkit.settings import Settings
from toolkit.testing.server import Server
from toolkit.urls import PgUrl


def test_a_users_suite_passes_alone_and_with_xdist_and_the_server_it_started_stops(embedded_down_after: Path) -> None:
    project = embedded_down_after
    write_suite(project)
    for args in ((), ("-n", "2")):
        done = run_pytest(project, *args)
        assert done.returncode == 0, output(done)
        assert "5 passed" in done.stdout
        assert not running(project), "the run started the server: the last process to finish stops it"
    assert not (project / ".toolkit" / "started-by-tests").exists()


def test_a_server_started_by_hand_stays_up_and_no_test_database_is_left(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project)
    done = run_pytest(project, "-n", "2")
    assert done.returncode == 0, output(done)
    assert running(project)
    assert tk_databases(project) == []


def test_keep_keeps_and_names_the_databases_and_no_later_run_drops_them(embedded_down_after: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project)
    done = run_pytest(project, "--toolkit-keep")
    assert done.returncode == 0, output(done)
    kept = tk_databases(project)
    assert len(kept) == 5 and all(name in done.stdout for name in kept)
    assert "databases kept" in done.stdout and ":memgpt@" not in done.stdout  # no password printed
    assert run_pytest(project).returncode == 0
    assert tk_databases(project) == kept


def test_a_run_killed_outright_is_swept_by_the_next(embedded_down_after: Path, tmp_path: Path) -> None:
    project = embedded_down_after
    assert run_toolkit("up", "--engine", "embedded", "--no-export", cwd=project).returncode == 0
    write_suite(project, SLOW_TESTS, "")
    env = {**os.environ, "TOOLKIT_ENGINE": "embedded", "READY_FILE": str(tmp_path / "ready"), "GO_FILE": str(tmp_path / "go")}
    killed = subprocess.Popen(pytest_argv(project, "-n", "2"), cwd=project, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        name = wait_until(lambda: (tmp_path / "ready").exists() and (tmp_path / "ready").read_text(), 120, "the slow test")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # as CI cancels a job: the whole process group, no cleanup
        killed.wait()
    run = name.split("_")[1]
    wait_until(lambda: any(n.startswith(f"tk_{run}_") for n in tk_databases(project)), 10, "the killed run's databases")
    # its workers' connections close as the kernel reaps them; the next run's template sweeps what is left
    write_suite(project)
    wait_until(lambda: run_pytest(project).returncode == 0 and not any(n.startswith(f"tk_{run}_") for n in tk_databases(project)),
               60, "the next run to drop the killed run's databases", interval=1)
    assert running(project)


def test_two_runs_at_once_share_the_server_and_the_last_one_stops_it(embedded_down_after: Path, tmp_path: Path) -> None:
    project = embedded_down_after
    first = project / "first"
    second = project / "second"
    for directory, suite in ((first, SLOW_TESTS), (second, USER_TESTS)):
        directory.mkdir()
        write_suite(directory, suite, USER_CONFTEST)
    # both runs use the project's server: its settings, not those of their subdirectories
    env = {**os.environ, "TOOLKIT_ENGINE": "embedded", "READY_FILE": str(tmp_path / "ready"), "GO_FILE": str(tmp_path / "go")}
    argv = ["--toolkit-project-dir", str(project)]
    slow = subprocess.Popen(pytest_argv(first, *argv), cwd=first, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), 120, "the first run's test")
        done = run_pytest(second, *argv, "-n", "2")
        assert done.returncode == 0, output(done)
        assert running(project), "the second run stopped the server the first one still uses"
        (tmp_path / "go").write_text("")
        out, _ = slow.communicate(timeout=120)
        assert slow.returncode == 0, out
    finally:
        slow.kill()
    assert not running(project), "the last run to leave stops the server a test run started"


def test_load_files_and_their_errors(embedded_down_after: Path) -> None:
    project = embedded_down_after
    write_suite(project, '''
        def test_loaded(pgvector_db):
            with pgvector_db.connect() as conn:
                assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 2
    ''', "")
    (project / "schema.sql").write_text("CREATE TABLE docs (id int, e vector(2));\n"
                                        "INSERT INTO docs VALUES (1, '[1,0]'), (2, '[0,1]');\n")
    done = run_pytest(project, "--toolkit-load", "schema.sql")
    assert done.returncode == 0, output(done)
    (project / "pytest.ini").write_text("[pytest]\ntoolkit_load = schema.sql\n")
    done = run_pytest(project)
    assert done.returncode == 0, output(done)

    missing = run_pytest(project, "--toolkit-load", "nowhere.sql")
    assert missing.returncode == 4 and "nowhere.sql does not exist" in output(missing), output(missing)

    (project / "schema.sql").write_text("CREATE TABLE docs (id int, e vector(2));\nINSERT INTO nowhere VALUES (1);\n")
    failed = run_pytest(project)
    assert failed.returncode == 1
    assert "toolkit: loading the test template failed in sql_file(" in failed.stdout, output(failed)
    assert 'relation "nowhere" does not exist' in failed.stdout
    assert "Traceback" not in failed.stdout and "databases.py" not in failed.stdout


def test_a_server_that_cannot_start_fails_each_test_in_one_line(isolated: Path) -> None:
    write_suite(isolated)
    with socket.socket() as held:
        held.bind(("127.0.0.1", int(os.environ["TOOLKIT_PG_PORT"])))
        held.listen()
        done = run_pytest(isolated)
    assert done.returncode == 1
    assert "5 errors" in done.stdout, done.stdout
    assert f"toolkit: port {os.environ['TOOLKIT_PG_PORT']}" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout and "site-packages" not in done.stdout


def test_an_external_role_that_may_not_create_databases_is_told_so(pg_settings: Settings, pg_admin: PgUrl,
                                                                   isolated: Path) -> None:
    write_suite(isolated, '''
        def test_one(pgvector_db):
            with pgvector_db.connect() as conn:
                assert conn.execute("SELECT extname FROM pg_extension").fetchall() == [("plpgsql",), ("vector",)]
    ''', "")
    app = pg_settings.db.url(host="127.0.0.1").render("pg8000")
    refused = run_pytest(isolated, "--toolkit-url", app)
    assert refused.returncode == 1
    assert "toolkit: role 'memgpt' may not create databases" in refused.stdout, refused.stdout
    assert "memgpt:memgpt@" not in output(refused)
    # a role that may (a CI service's superuser): the databases are its own
    done = run_pytest(isolated, "--toolkit-url", pg_admin.libpq)
    assert done.returncode == 0, output(done)


def test_the_plugin_is_off_with_no_toolkit_and_light_to_import(isolated: Path) -> None:
    write_suite(isolated)
    off = run_pytest(isolated, "-p", "no:toolkit")
    assert off.returncode == 1 and "fixture 'pgvector_db' not found" in off.stdout
    code = ("import sys, toolkit.testing.plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'numpy', 'docker', 'pgvector') "
            "or m in ('toolkit.settings', 'toolkit.api')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_plugin_offers_the_engines_settings_knows() -> None:
    from toolkit import settings
    from toolkit.testing import plugin

    assert plugin.ENGINES == settings.ENGINES


def test_the_plugins_help_names_the_backends_there_are() -> None:
    from toolkit.backends import BACKENDS
    from toolkit.testing import archival

    assert list(archival.BACKENDS) == list(BACKENDS)


@pytest.mark.slow
def test_a_fresh_install_brings_the_plugin(embedded_down_after: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`pip install toolkit` and the pytest a user already has: no conftest, no `-p`, the fixtures are there."""
    root = tmp_path_factory.mktemp("plugin-install")
    source = source_copy(root / "src")
    venv = root / "venv"
    uv = uv_binary()
    for argv in ([uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                 [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(source),
                  "pytest", "pytest-xdist", "sqlalchemy", "pg8000"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=clean_env())
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    project = embedded_down_after
    write_suite(project)
    for args in ((), ("-n", "2")):
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--basetemp", str(project / ".bt"), *args], cwd=project, capture_output=True, text=True,
                              env={**clean_env(), "TOOLKIT_ENGINE": "embedded"}, timeout=300)
        assert done.returncode == 0, output(done)
        assert "5 passed" in done.stdout
    assert not running(project)


@pytest.mark.docker
def test_a_users_suite_on_the_docker_engine(dsettings: Settings) -> None:
    """The Docker engine keeps no superuser password: its test role (CREATEDB, not a superuser) makes the
    databases, cloned from its vector template, owned by the application role all the same."""
    project = dsettings.project_dir
    write_suite(project)
    env = {"TOOLKIT_ENGINE": "docker", "TOOLKIT_PG_IMAGE": dsettings.image, "TOOLKIT_PG_CONTAINER": dsettings.container,
           "TOOLKIT_PG_VOLUME": dsettings.volume, "TOOLKIT_PG_PORT": str(dsettings.db.port)}
    for args in ((), ("-n", "2")):
        done = run_pytest(project, *args, env=env)
        assert done.returncode == 0, output(done)
        assert "5 passed" in done.stdout
        done = run_toolkit("status", "--json", cwd=project, env=env)
        assert json.loads(done.stdout)["running"] is False, "the run started the container: it stops it"


def test_a_template_that_fails_to_load_leaves_neither_the_template_nor_a_lock(pgvector_server: Server,
                                                                                pg_admin: PgUrl) -> None:
    """A failed open is followed by no close (the fixture never yielded): open cleans up after itself."""
    import psycopg

    from toolkit.testing.databases import RUN_LOCK, Databases, LoadError, new_run

    def broken(conn: object) -> None:
        raise RuntimeError("a broken seed")

    databases = Databases(pgvector_server.admin, pgvector_server.url, new_run(), "main", loads=[broken], ahead=0)
    with pytest.raises(LoadError, match="a broken seed"):
        databases.open()
    with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = %s", (databases.template,)).fetchall()
        locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                             "AND objid = hashtext(%s)::oid", (RUN_LOCK, databases.run)).fetchone()
    assert left == [], "the half-made template outlives the run: no sweep ever drops it"
    assert locks == (0,), "the run's lock is still held: its connection was never closed"


def test_a_server_gone_is_one_toolkit_error_without_the_prefetch_thread_too(pgvector_server: Server,
                                                                            pg_admin: PgUrl) -> None:
    """--toolkit-ahead 0 creates and drops in the test's own time: a lost server is a toolkit error there too
    (the plugin shows it in one line), not psycopg's exception with a traceback."""
    import psycopg
    from psycopg import sql

    from toolkit.errors import NotReadyError
    from toolkit.testing.databases import RUN_LOCK, Databases, new_run

    databases = Databases(pgvector_server.admin, pgvector_server.url, new_run(), "main", ahead=0)
    databases.open()
    try:
        db = databases.take()
        with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                         "AND objid = hashtext(%s)::oid", (RUN_LOCK, databases.run))
        with pytest.raises(NotReadyError, match="cannot drop a test database"):
            databases.give_back(db)
        with pytest.raises(NotReadyError, match="cannot prepare a test database"):
            databases.take()
    finally:
        databases.close()
        with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
            for name in (databases.template, db.name):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["alone", "xdist"])
def test_sigterm_unwinds_like_ctrl_c(embedded_down_after: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    """CI cancels a job with SIGTERM to its process group: the run tears down as on Ctrl-C, stopping the server
    it started, instead of dying with it running."""
    project = embedded_down_after
    write_suite(project, SLOW_TESTS, "")
    env = {**os.environ, "TOOLKIT_ENGINE": "embedded", "READY_FILE": str(tmp_path / "ready"), "GO_FILE": str(tmp_path / "go")}
    run = subprocess.Popen(pytest_argv(project, *args), cwd=project, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), 120, "the slow test")
        os.killpg(run.pid, signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0, out
    wait_until(lambda: not running(project), 30, "the server the run started to stop", interval=0.5)
