"""Hostile inputs: a .env binding a key twice or holding binary, URLs whose password is not percent-encoded,
text with lone surrogates, two migrations creating one Postgres table at once, smoke against a stopped server."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from tests.backend_support import passages
from tests.support import run_toolkit
from toolkit import envfile
from toolkit.backends import StoreLocation, open_store
from toolkit.errors import BackendError, ConfigError, UsageError
from toolkit.ports import free_port
from toolkit.settings import read_dotenv
from toolkit.testing.databases import TestDatabase
from toolkit.urls import PgUrl, parse, redact

NEW = "postgresql+pg8000://memgpt:n%23w%2Fpw@127.0.0.1:5433/memgpt"


def _stopped_server_env() -> dict[str, str]:
    """`toolkit up` that can only fail fast: an external server on a port nobody listens on."""
    return {"TOOLKIT_ENGINE": "external", "TOOLKIT_TIMEOUT": "1",
            "TOOLKIT_PG_URL": f"postgresql://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt"}


def _one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toolkit: error: "), done.stderr
    return lines[0]


# -- 1. a .env binding the URL twice --------------------------------------------------------------

def test_env_key_bound_twice_is_rewritten_everywhere(isolated: Path) -> None:
    env = isolated / ".env"
    head = "# mine\nA=1\nPGVECTOR_TEST_DB_URL=first\n"
    middle = "OPENAI_API_KEY='sk-x'  # keep\n"
    tail = "B=2\n"
    env.write_text(head + middle + "\n\nexport PGVECTOR_TEST_DB_URL='second'\n" + tail)
    assert envfile.write(env, {envfile.URL_VAR: NEW})

    from dotenv import dotenv_values

    assert dotenv_values(env)[envfile.URL_VAR] == NEW
    sourced = subprocess.run(["bash", "-c", "set -a; . ./.env; printf %s \"$PGVECTOR_TEST_DB_URL\""],
                             cwd=isolated, capture_output=True, text=True, check=True).stdout
    assert sourced == NEW
    quoted = envfile._quote(NEW)
    assert env.read_text() == (f"# mine\nA=1\nPGVECTOR_TEST_DB_URL={quoted}\n" + middle
                               + f"\n\nexport PGVECTOR_TEST_DB_URL={quoted}\n" + tail)
    assert not envfile.write(env, {envfile.URL_VAR: NEW})  # every binding holds it: nothing to do


# -- 2. a .env that is binary, undecodable or a directory -----------------------------------------

BINARY = [b"\xff\xfe\x00garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", b"A=1\nB=2\x00\x00\n"]


@pytest.mark.parametrize("content", BINARY, ids=["utf16-bom", "png", "nul-bytes"])
def test_binary_env_is_a_config_error(isolated: Path, content: bytes) -> None:
    env = isolated / ".env"
    env.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_dotenv(env)
    assert str(env) in info.value.message and info.value.hint
    for args in (("status",), ("env",), ("up",)):
        line = _one_line_error(run_toolkit(*args, env=_stopped_server_env()), 2)
        assert str(env) in line and "UTF-8" in line and "--env-file" in line
    assert env.read_bytes() == content  # left as it was


def test_env_that_is_a_directory_is_a_config_error(isolated: Path) -> None:
    (isolated / ".env").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        read_dotenv(isolated / ".env")
    for args in (("status",), ("env",), ("up",)):
        line = _one_line_error(run_toolkit(*args, env=_stopped_server_env()), 2)
        assert str(isolated / ".env") in line and "directory" in line
    assert (isolated / ".env").is_dir() and not list((isolated / ".env").iterdir())


# -- 3. passwords that are not percent-encoded ----------------------------------------------------

MALFORMED = ["postgresql://memgpt:Sup3r/Secret@localhost:5432/memgpt",
             "postgresql://memgpt:Sup3r#Secret@127.0.0.1:5432/memgpt",
             "postgresql+pg8000://memgpt:Sup3r?Secret@127.0.0.1:5432/memgpt",
             "postgresql://memgpt:Sup3r@Secret@127.0.0.1:5432/memgpt",
             "postgresql://memgpt:Sup3r/x#y?z@Secret@127.0.0.1:5432/memgpt"]


def _no_password(text: str) -> None:
    assert "Sup3r" not in text and "Secret" not in text, text


@pytest.mark.parametrize("url", MALFORMED)
def test_unencoded_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(url)
    _no_password(info.value.one_line())
    assert "percent-encode" in info.value.one_line() and "%2F" in info.value.one_line()


def test_redact_hides_a_password_holding_at_signs() -> None:
    assert redact("postgresql://u:pa@ss@host/db") == "postgresql://u:***@host/db"
    assert redact("url postgresql://u:a/b#c?d@e@h:1/db and postgresql://v:w@h2/db2 done") == \
        "url postgresql://u:***@h:1/db and postgresql://v:***@h2/db2 done"
    assert redact("postgresql://u@h/db user@example.com") == "postgresql://u@h/db user@example.com"


@pytest.mark.parametrize("url", MALFORMED)
def test_cli_never_shows_an_unencoded_password(url: str) -> None:
    runs = [run_toolkit("migrate", "--from", "local:///tmp/x", "--to", url),
            run_toolkit("migrate", "--from", url, "--to", "local:///tmp/x"),
            run_toolkit("up", "--engine", "external", "--url", url, "--timeout", "1"),
            run_toolkit("up", env={"TOOLKIT_ENGINE": "external", "TOOLKIT_PG_URL": url, "TOOLKIT_TIMEOUT": "1"}),
            run_toolkit("smoke", "--backend", "postgres", env={"PGVECTOR_TEST_DB_URL": url})]
    for done in runs:
        _no_password(done.stdout + done.stderr)
        assert "percent-encode" in _one_line_error(done, 2)


# -- 4. lone surrogates ---------------------------------------------------------------------------

BAD_TEXT = "bad \ud800 text"


def _surrogate_batch() -> list:  # type: ignore[type-arg]
    good = passages(3, dim=8)
    return [*good, replace(passages(1, dim=8, seed=5)[0], text=BAD_TEXT)]


@pytest.mark.parametrize("backend", ["postgres", "lancedb", "chroma"])
def test_lone_surrogate_is_refused_before_writing(backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    where = request.getfixturevalue("pg_url") if backend == "postgres" else str(tmp_path / backend)
    location = StoreLocation(backend, where, f"t_{uuid.uuid4().hex[:10]}")
    batch = _surrogate_batch()
    with open_store(location) as store:
        try:
            with pytest.raises(BackendError) as info:
                store.insert(batch)
            assert str(batch[-1].id) in info.value.one_line()
            assert not store.exists()  # refused before the table (collection) is created, in every backend
            bad_meta = replace(batch[0], metadata={"k": {"nested": [BAD_TEXT]}})
            with pytest.raises(BackendError, match=str(bad_meta.id)):
                store.insert([bad_meta])
        finally:
            store.drop()


def test_migrate_of_a_lone_surrogate_names_the_passage(tmp_path: Path, pg_url: str) -> None:
    table = f"t_{uuid.uuid4().hex[:10]}"
    batch = _surrogate_batch()
    with open_store(StoreLocation("local", str(tmp_path / "src"), table)) as store:
        store.insert(batch)  # the local backend keeps it (JSON escapes it) and reads it back
        assert {p.text for rows in store.scan(10) for p in rows} >= {BAD_TEXT}
    done = run_toolkit("migrate", "--from", f"local://{tmp_path / 'src'}", "--to", pg_url, "--table", table)
    try:
        line = _one_line_error(done, 6)
        assert str(batch[-1].id) in line
        with open_store(StoreLocation("postgres", pg_url, table)) as dst:
            # migrate creates no table of its own: the one batch's insert refused it before creating it
            assert not dst.exists()
    finally:
        with open_store(StoreLocation("postgres", pg_url, table)) as dst:
            dst.drop()


# -- 5. two migrations creating one Postgres table at once -----------------------------------------

def _race(n: int, action: Callable[[int], None]) -> list[BaseException]:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            action(i)
        except BaseException as exc:  # noqa: BLE001 - collected, asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


@pytest.mark.parametrize("creators", [2, 4])
def test_concurrent_creators_of_one_table_all_succeed(pgvector_db: TestDatabase, creators: int) -> None:
    pg_url = pgvector_db.libpq_url
    for _ in range(10):
        table = f"t_race_{uuid.uuid4().hex[:10]}"
        stores = [open_store(StoreLocation("postgres", pg_url, table)) for _ in range(creators)]
        try:
            for store in stores:
                store.exists()  # connect first: the race is on CREATE TABLE, not on connecting
            errors = _race(creators, lambda i, stores=stores: stores[i].insert(passages(5, dim=8, seed=i + 1)))
            assert errors == [], [getattr(e, "message", e) for e in errors]
            assert stores[0].count() == 5 * creators
        finally:
            stores[0].drop()
            for store in stores:
                store.close()


def test_concurrent_migrations_into_a_new_table(tmp_path: Path, pgvector_db: TestDatabase) -> None:
    from toolkit.migrate import migrate
    from toolkit.specs import Spec

    sources = [Spec("local", str(tmp_path / f"src{i}")) for i in range(3)]
    destination = Spec("postgres", pgvector_db.libpq_url)
    for _ in range(5):
        table = f"t_mig_{uuid.uuid4().hex[:10]}"
        for spec in sources:
            with closing(open_store(spec.store(table))) as store:
                store.insert(passages(20, dim=8))
        try:
            errors = _race(3, lambda i, table=table: migrate(sources[i], destination, table=table))
            assert errors == [], [getattr(e, "message", e) for e in errors]
        finally:
            with closing(open_store(destination.store(table))) as dst:
                dst.drop()


def test_concurrent_creators_of_the_extension_all_succeed(pg_admin: PgUrl) -> None:
    import psycopg

    for _ in range(5):
        name = f"ext_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        try:
            url = replace(pg_admin, database=name).libpq
            stores = [open_store(StoreLocation("postgres", url, "t_ext")) for _ in range(4)]
            try:
                errors = _race(4, lambda i, stores=stores: stores[i].exists())
                assert errors == [], [getattr(e, "message", e) for e in errors]
            finally:
                for store in stores:
                    store.close()
        finally:
            with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {name}")


# -- 6. smoke against a stopped server ------------------------------------------------------------

def test_smoke_of_a_stopped_postgres_is_a_backend_error() -> None:
    url = f"postgresql+pg8000://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt"
    done = run_toolkit("smoke", "--backend", "postgres", "-n", "4", "--dim", "4", env={"PGVECTOR_TEST_DB_URL": url})
    assert done.returncode == 6, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("toolkit: error: ") and "not running" in line and "`toolkit up`" in line
    assert "Traceback" not in done.stderr


def test_smoke_of_a_stopped_chroma_server_is_a_backend_error() -> None:
    done = run_toolkit("smoke", "--backend", "chroma-http", "-n", "4", "--dim", "4", "--json")
    assert done.returncode == 6, done.stdout + done.stderr
    import json

    assert json.loads(done.stdout)["results"][0]["result"] == "not running"  # --json still reports
    line = done.stderr.strip().splitlines()[-1]
    assert "not running" in line and "`toolkit chroma up`" in line
