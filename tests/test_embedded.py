"""The embedded engine against real Postgres servers: lifecycle, readiness, errors, export."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, alive, env_url, postmaster_pid, run_toolkit, wait_until
from toolkit.errors import NotReadyError
from toolkit.health import PgProbe, wait_ready
from toolkit.ports import free_port
from toolkit.settings import resolve
from toolkit.urls import PgUrl


def _sql(url: str, query: str):
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(query))
            return result.fetchall() if result.returns_rows else None
    finally:
        engine.dispose()


@pytest.fixture
def up(embedded_down_after: Path) -> subprocess.CompletedProcess[str]:
    """`toolkit up --engine embedded` in the isolated project; stopped and purged afterwards."""
    done = run_toolkit("up", "--engine", "embedded")
    assert done.returncode == 0, done.stderr
    return done


def test_up_gives_a_url_that_pg8000_psycopg_and_psql_use(up, isolated: Path) -> None:
    port = os.environ["TOOLKIT_PG_PORT"]
    assert up.stdout.strip() == (f"postgres ready (embedded) at postgresql+pg8000://memgpt:***@localhost:{port}/memgpt; "
                                 "PGVECTOR_TEST_DB_URL written to .env")
    url = env_url(isolated)
    assert url == f"postgresql+pg8000://memgpt:memgpt@localhost:{port}/memgpt"
    assert stat.S_IMODE((isolated / ".env").stat().st_mode) == 0o600
    # SQLAlchemy + pg8000, as MemGPT's tests do: the extension is already there and committed
    assert _sql(url, "SELECT '[1,2,3]'::vector <-> '[1,2,4]'") == [(1.0,)]
    rows = _sql(url, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
    assert rows == [(False, False, False)]  # the application role is not privileged
    import psycopg

    with psycopg.connect(url.replace("+pg8000", "")) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone() is not None
    psql = run_toolkit("psql", "-c", "SELECT current_database()")
    assert psql.returncode == 0 and "memgpt" in psql.stdout


def test_listens_on_loopback_only(up, isolated: Path) -> None:
    rows = _sql(env_url(isolated), "SELECT current_setting('listen_addresses')")
    assert rows == [("127.0.0.1",)]


def test_up_again_is_a_no_op(up, isolated: Path) -> None:
    pid, mtime = postmaster_pid(isolated / ".toolkit"), (isolated / ".env").stat().st_mtime_ns
    assert pid is not None
    again = run_toolkit("up")  # auto remembers the embedded engine
    assert again.returncode == 0, again.stderr
    assert "is current" in again.stdout
    assert postmaster_pid(isolated / ".toolkit") == pid and (isolated / ".env").stat().st_mtime_ns == mtime


def test_data_survives_down_and_up(up, isolated: Path) -> None:
    _sql(env_url(isolated), "CREATE TABLE keep (x int); INSERT INTO keep VALUES (42)")
    assert run_toolkit("down").returncode == 0
    assert run_toolkit("status", "--json").stdout.count('"running": false') == 1
    assert run_toolkit("up").returncode == 0
    assert _sql(env_url(isolated), "SELECT x FROM keep") == [(42,)]


def test_kill_9_then_up_recovers_without_losing_data(up, isolated: Path) -> None:
    _sql(env_url(isolated), "CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)")
    pid = postmaster_pid(isolated / ".toolkit")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 30, f"the killed postmaster (pid {pid}) to be gone")
    status = run_toolkit("status")
    assert status.stdout.count("not running") == 1, status.stdout  # said once, not "not running (...): not running"
    assert "died" in status.stdout and "toolkit up" in status.stdout, status.stdout
    again = run_toolkit("up")
    assert again.returncode == 0, again.stderr
    assert _sql(env_url(isolated), "SELECT x FROM keep") == [(7,)]


def test_port_taken_by_someone_else(isolated: Path) -> None:
    port = int(os.environ["TOOLKIT_PG_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = run_toolkit("up", "--engine", "embedded")
    assert done.returncode == 3
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_wrong_password_on_existing_data(up, isolated: Path) -> None:
    run_toolkit("down")
    done = run_toolkit("up", env={"TOOLKIT_PG_PASSWORD": "not-the-one"})
    assert done.returncode == 5
    assert "password authentication failed for role 'memgpt'" in done.stderr
    assert "not-the-one" not in done.stderr and "Traceback" not in done.stderr


def test_server_that_dies_fails_fast_with_its_log(up, isolated: Path) -> None:
    run_toolkit("down")
    conf = isolated / ".toolkit/embedded/pgdata/postgresql.conf"
    conf.write_text(conf.read_text() + "\nshared_buffers = 'lots'\n")
    done = run_toolkit("up", "--timeout", "60")
    assert done.returncode == 5
    # told that it died, not "not ready after 60s": the wait ended on the death, not on the timeout
    assert "stopped while starting" in done.stderr
    assert "shared_buffers" in done.stderr  # the log's tail is shown


def test_readiness_timeout_names_the_phase() -> None:
    url = PgUrl("memgpt", "memgpt", "127.0.0.1", free_port(), "memgpt")
    with pytest.raises(NotReadyError) as err:
        wait_ready(PgProbe(url), timeout=0.3, log_tail=lambda n: "last words")
    assert "phase tcp failed" in err.value.message and "last words" in (err.value.detail or "")


def test_purge_asks_first_and_keeps_data_without_consent(up, isolated: Path) -> None:
    refused = run_toolkit("down", "--purge")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert (isolated / ".toolkit/embedded/pgdata/PG_VERSION").exists()
    assert run_toolkit("down", "--purge", "--yes").returncode == 0
    assert not (isolated / ".toolkit/embedded").exists()


def test_status_and_logs_are_redacted(up, isolated: Path) -> None:
    env = {"TOOLKIT_PG_PASSWORD": "memgpt"}
    status = run_toolkit("status", env=env)
    assert status.returncode == 0 and "postgres running (embedded)" in status.stdout and ":memgpt@" not in status.stdout
    logs = run_toolkit("logs", "--tail", "5")
    assert logs.returncode == 0 and "ready to accept connections" in logs.stdout


def test_library_context_manager(tmp_path: Path) -> None:
    import toolkit

    port = free_port()
    with toolkit.postgres(port=port, state_dir=str(tmp_path / "state"), project_dir=str(tmp_path)) as db:
        assert db.url.endswith(f"@localhost:{port}/memgpt")
        assert _sql(db.url, "SELECT 1") == [(1,)]
    # stopped on exit because it was not running before
    assert not resolve({"db.port": port, "state_dir": tmp_path / "state"}, environ={}).state_dir.joinpath(
        "embedded/pgdata/postmaster.pid").exists()


def test_run_postgres_sh_exports_the_server_it_started(isolated: Path) -> None:
    """`eval "$(bash db/run_postgres.sh --port N)"` must export port N, not the default."""
    port = free_port()
    done = subprocess.run(["bash", str(REPO / "db" / "run_postgres.sh"), "--engine", "embedded", "--port", str(port)],
                          env={**os.environ, "TOOLKIT_PROJECT_DIR": str(isolated)}, capture_output=True, text=True,
                          timeout=300)
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"export PGVECTOR_TEST_DB_URL=postgresql+pg8000://memgpt:memgpt@localhost:{port}/memgpt"
        assert "postgres ready" in done.stderr
    finally:
        run_toolkit("down", "--purge", "--yes", "--engine", "embedded", "--port", str(port))
