"""`toolkit smoke` end to end, and the helper servers' commands (`toolkit chroma ...`, `toolkit s3 ...`)."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path

import pytest

from tests.backend_support import s3_env, s3_options
from tests.support import run_toolkit
from toolkit import smoke
from toolkit.backends import StoreLocation, open_store
from toolkit.ports import free_port
from toolkit.settings import resolve
from toolkit.testing.databases import TestDatabase


def _pg_smoke_tables(pg_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'toolkit_smoke_%'")]


def _chroma_smoke_collections(client) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in client.list_collections() if c.name.startswith("toolkit_smoke_")]


def test_smoke_all_backends_pass_and_leave_nothing(pgvector_db, chroma_http, s3, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    pg_url = pgvector_db.libpq_url
    env = {"PGVECTOR_TEST_DB_URL": pgvector_db.url, "TOOLKIT_CHROMA_PORT": str(chroma_http.port), **s3_env(s3)}
    done = run_toolkit("smoke", "--backend", "all", "--json", "-n", "30", "--dim", "64", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and [r["backend"] for r in report["results"]] == list(smoke.BACKENDS)
    assert all(r["result"] == "pass" for r in report["results"])
    assert "testing" not in done.stdout  # the S3 secret is never shown

    import chromadb
    import lancedb

    assert _pg_smoke_tables(pg_url) == []
    assert _chroma_smoke_collections(chromadb.HttpClient(host="127.0.0.1", port=chroma_http.port)) == []
    assert _chroma_smoke_collections(chromadb.PersistentClient(str(isolated / ".toolkit" / "chroma"))) == []
    assert [p for p in (isolated / ".toolkit" / "chroma").iterdir() if p.is_dir()] == []  # no segment dirs
    assert list((Path.home() / ".memgpt" / "archival").iterdir()) == []
    assert list((isolated / ".lancedb").iterdir()) == []
    remote = lancedb.connect("s3://toolkit/lancedb", storage_options=s3_options(s3))
    assert list(remote.list_tables().tables) == []


def test_smoke_table_names_stopped_servers_and_how_to_start_them() -> None:
    env = {"PGVECTOR_TEST_DB_URL": f"postgresql+pg8000://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt"}
    done = run_toolkit("smoke", "--backend", "all", "-n", "10", "--dim", "16", env=env)
    assert done.returncode == 6  # a backend failed (README: exit codes)
    assert done.stderr.strip().splitlines()[-1] == (
        "toolkit: error: 3 of 7 checks did not pass (postgres, chroma-http: not running; lancedb-s3: fail); "
        "the table above says why")
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:-1]}
    assert "not running" in lines["postgres"] and "`toolkit up`" in lines["postgres"]
    assert "not running" in lines["chroma-http"] and "`toolkit chroma up`" in lines["chroma-http"]
    assert all(line.count("not running") == 1 for line in lines.values() if "not running" in line), lines  # said once
    assert "`toolkit s3 up`" in lines["lancedb-s3"]
    for backend in ("local", "chroma", "lancedb", "parquet"):
        assert " pass " in lines[backend]
    assert done.stdout.splitlines()[-1].startswith("4/7 passed")


def test_default_selection_is_memgpt_config_plus_postgres(isolated: Path) -> None:
    settings = resolve(project_dir=isolated)
    assert [t.backend for t in smoke.targets(settings, None)] == ["local", "postgres"]
    config = settings.memgpt_config_path
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[defaults]\npreset = x\n\n[archival_storage]\ntype = chroma\npath = {isolated / 'ch'}\n")
    chosen = smoke.targets(settings, None)
    assert [t.backend for t in chosen] == ["chroma", "postgres"]
    assert chosen[0].location is not None and chosen[0].location.location == str(isolated / "ch")
    config.write_text("[archival_storage]\ntype = postgres\nuri = postgresql://memgpt:memgpt@127.0.0.1:1/memgpt\n")
    assert [t.backend for t in smoke.targets(settings, None)] == ["postgres"]


@pytest.mark.parametrize("backend", ["local", "postgres"])
def test_a_check_failing_midway_drops_its_table(backend: str, pgvector_db: TestDatabase, tmp_path: Path) -> None:
    where = pgvector_db.libpq_url if backend == "postgres" else str(tmp_path)
    location = StoreLocation(backend, where, f"toolkit_smoke_{uuid.uuid4().hex[:8]}")
    asked = []

    def cancelled() -> bool:  # let the insert happen, then fail the check at the next step
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(Exception, match="stopped: past its time bound"):
        smoke.exercise(location, n=20, dim=8, cancelled=cancelled)
    with open_store(location) as store:
        assert not store.exists()


def test_a_check_past_its_time_bound_is_reported_and_cleaned_up(pgvector_db: TestDatabase) -> None:
    pg_url = pgvector_db.libpq_url
    location = StoreLocation("postgres", pg_url)
    (result,) = smoke.run([smoke.Target("postgres", location)], n=4000, dim=1536, timeout=0.2)
    assert result.status == "timeout" and "its table was dropped" in result.detail, result
    assert _pg_smoke_tables(pg_url) == []


def test_check_location_for_configure(tmp_path: Path) -> None:
    result = smoke.check_location(StoreLocation("lancedb", str(tmp_path / "lance")), n=10, dim=8)
    assert result.ok, result
    assert list((tmp_path / "lance").iterdir()) == []


# -- the helper servers' commands ---------------------------------------------------------------------

def test_chroma_commands_are_idempotent(isolated: Path) -> None:
    try:
        first = run_toolkit("chroma", "up")
        assert first.returncode == 0, first.stderr
        assert "chroma: running at http://127.0.0.1:" in first.stdout
        started = re.search(r"\(pid (\d+)\)", first.stdout)
        assert started, first.stdout
        again = run_toolkit("chroma", "up", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["running"]
        assert json.loads(again.stdout)["pid"] == int(started[1])  # the server the first `up` started, not restarted
        status = run_toolkit("chroma", "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["started_by_toolkit"]
        assert (isolated / ".toolkit" / "chroma.pid").is_file()
        port = os.environ["TOOLKIT_CHROMA_PORT"]
        log = run_toolkit("chroma", "logs", "--tail", "200").stdout
        command, _, output = log.partition(" starting: ")[2].partition("\n")
        assert f"--port {port}" in command, log  # the toolkit's line naming the server it started...
        assert re.search(rf"(localhost|127\.0\.0\.1):{port}\b", output), log  # ...then what the server wrote
        assert len(run_toolkit("chroma", "logs", "--tail", "3").stdout.splitlines()) == 3
        smoked = run_toolkit("smoke", "--backend", "chroma-http", "-n", "10", "--dim", "8")
        assert smoked.returncode == 0, smoked.stdout + smoked.stderr
    finally:
        down = run_toolkit("chroma", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    stopped = run_toolkit("chroma", "status")  # exit 0: it could tell
    assert stopped.returncode == 0 and stopped.stdout.startswith("chroma: stopped"), stopped.stdout
    assert "was not running" in run_toolkit("chroma", "down").stdout
    assert not (isolated / ".toolkit" / "chroma.pid").exists()


def test_chroma_status_finds_a_current_server_where_memgpt_is_configured() -> None:
    """MemGPT configured makes 0.5 the default format; status must still see a format-1 server (chromadb
    1.x refuses the /api/v1 heartbeat) and down must stop it."""
    config = Path(os.environ["MEMGPT_CONFIG_PATH"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[archival_storage]\ntype = local\npath = /tmp/nowhere\n")
    try:
        assert run_toolkit("chroma", "up", "--format", "1").returncode == 0
        status = run_toolkit("chroma", "status")
        assert status.returncode == 0 and "format 1" in status.stdout, status.stdout
    finally:
        assert "chroma: stopped" in run_toolkit("chroma", "down").stdout


def test_chroma_up_refuses_a_port_held_by_something_else() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_toolkit("chroma", "up", "--port", str(port))
    assert done.returncode == 3
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_s3_up_exports_settings_that_smoke_uses(isolated: Path) -> None:
    port = free_port()
    try:
        up = run_toolkit("s3", "up", "--port", str(port))
        assert up.returncode == 0, up.stderr
        env_text = (isolated / ".env").read_text()
        assert f"TOOLKIT_S3_ENDPOINT='http://127.0.0.1:{port}'" in env_text
        assert run_toolkit("s3", "up", "--port", str(port)).returncode == 0  # idempotent
        assert run_toolkit("s3", "status").returncode == 0  # port found from TOOLKIT_S3_ENDPOINT in .env
        smoked = run_toolkit("smoke", "--backend", "lancedb-s3", "-n", "10", "--dim", "8")
        assert smoked.returncode == 0, smoked.stdout + smoked.stderr
    finally:
        down = run_toolkit("s3", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    stopped = run_toolkit("s3", "status")  # exit 0: it could tell
    assert stopped.returncode == 0 and stopped.stdout.startswith("s3: stopped"), stopped.stdout
