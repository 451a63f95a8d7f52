"""The readiness probe and its libpq client, against the session's real embedded Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from toolkit import libpq
from toolkit.errors import EngineUnavailableError, NotReadyError
from toolkit.health import ExtensionMissing, PgProbe, RoleOrDatabaseMissing, Transient, wait_ready
from toolkit.urls import PgUrl


@pytest.fixture
def bare_database(pg_admin: PgUrl) -> Iterator[tuple[PgUrl, PgUrl]]:
    """A database without the vector extension, and (admin URL, app-role URL) on it; dropped afterwards."""
    name, role = f"bare_{uuid.uuid4().hex[:8]}", f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' NOSUPERUSER").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    try:
        yield (PgUrl(pg_admin.user, pg_admin.password, pg_admin.host, pg_admin.port, name),
               PgUrl(role, "pw", pg_admin.host, pg_admin.port, name))
    finally:
        with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _extensions(url: PgUrl) -> list[str]:
    with psycopg.connect(url.libpq) as conn:
        return [row[0] for row in conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")]


def test_probe_passes_on_a_ready_server_and_prints_nothing(pg_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    from toolkit.urls import parse

    PgProbe(parse(pg_url))()
    # the extension exists already: the server's NOTICE about it must not reach the user's terminal
    assert capfd.readouterr() == ("", "")


def test_probe_creates_and_commits_the_extension(bare_database: tuple[PgUrl, PgUrl]) -> None:
    admin, _ = bare_database
    PgProbe(admin)()
    assert _extensions(admin) == ["vector"]  # a new session sees it: committed, not left in an open transaction


def test_probe_names_a_missing_extension_the_role_may_not_create(bare_database: tuple[PgUrl, PgUrl]) -> None:
    _, app = bare_database
    with pytest.raises(ExtensionMissing) as caught:
        PgProbe(app)()
    assert "vector extension is missing" in caught.value.message and app.user in caught.value.message
    assert caught.value.exit_code == 5 and "CREATE EXTENSION vector" in (caught.value.hint or "")


def test_probe_without_extension_phase_skips_it(bare_database: tuple[PgUrl, PgUrl]) -> None:
    admin, app = bare_database
    with pytest.raises(ExtensionMissing):
        PgProbe(app)()  # the phase would fail for this role...
    PgProbe(app, extension=False)()  # ...skipped, the probe passes
    PgProbe(admin, extension=False)()
    assert _extensions(admin) == []  # and it creates nothing, even as a role that could


def test_missing_database_is_told_apart(pg_admin: PgUrl) -> None:
    missing = PgUrl(pg_admin.user, pg_admin.password, pg_admin.host, pg_admin.port, "no_such_db")
    with pytest.raises(RoleOrDatabaseMissing):
        PgProbe(missing)()


def test_wrong_password_is_final_not_transient(pg_admin: PgUrl) -> None:
    wrong = PgUrl(pg_admin.user, "not-the-password", pg_admin.host, pg_admin.port, pg_admin.database)
    probe, calls = PgProbe(wrong), []

    def counted() -> None:
        calls.append(1)
        probe()

    with pytest.raises(NotReadyError, match="password authentication failed"):
        wait_ready(counted, timeout=30)
    # final: tried once, not retried for the timeout's worth of attempts (which would end in the same message)
    assert len(calls) == 1


def test_refused_port_is_transient(pg_admin: PgUrl) -> None:
    from toolkit.ports import free_port

    with pytest.raises(Transient) as caught:
        PgProbe(PgUrl("u", "p", "127.0.0.1", free_port(), "d"))()
    assert caught.value.phase == "tcp"


def test_libpq_connection_reports_sqlstate_and_autocommits(pg_url: str) -> None:
    with libpq.Connection(pg_url) as conn:
        assert conn.scalar("SELECT 41 + 1") == "42"
        assert conn.scalar("SELECT NULL") is None
        assert conn.scalar("CREATE TEMP TABLE t (x int)") is None
        with pytest.raises(libpq.PqError) as caught:
            conn.scalar("SELECT 1/0")
        assert caught.value.sqlstate == "22012" and "division by zero" in caught.value.message
        assert conn.scalar("SELECT 1") == "1"  # no aborted transaction left behind: autocommit


def test_no_loadable_libpq_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libpq, "candidates", lambda: ["/nonexistent/libpq.so.5"])
    libpq.load.cache_clear()
    try:
        with pytest.raises(EngineUnavailableError, match="no loadable libpq") as caught:
            libpq.load()
        assert "make venv" in (caught.value.hint or "")
    finally:
        libpq.load.cache_clear()


def test_libpq_quotes_literals_and_identifiers(pg_url: str) -> None:
    with libpq.Connection(pg_url) as conn:
        assert conn.literal("it's") == "'it''s'"
        assert conn.identifier('we"ird') == '"we""ird"'
        assert conn.scalar(f"SELECT {conn.literal(chr(92) + 'x' + chr(39))}") == "\\x'"


def test_bootstrap_with_quotes_and_spaces_in_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Role, password and database go through libpq's quoting: odd characters neither break nor inject."""
    import sqlalchemy as sa

    import toolkit
    from toolkit.ports import free_port

    with toolkit.postgres(port=free_port(), state_dir=str(tmp_path / "state"), project_dir=str(tmp_path),
                          user="o'brien", password="pa's wo\"rd;--", database="my db") as db:
        engine = sa.create_engine(db.url)
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.text("SELECT current_user, current_database(), "
                                           "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")).one()
                assert tuple(row) == ("o'brien", "my db", False)
        finally:
            engine.dispose()


def test_library_context_stops_a_server_whose_up_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A wrong password on existing data fails `up` after the server started: it must not keep running."""
    import toolkit
    from toolkit.ports import free_port, port_is_free

    port, state = free_port(), str(tmp_path / "state")
    with toolkit.postgres(port=port, state_dir=state, project_dir=str(tmp_path)):
        pass
    with pytest.raises(NotReadyError, match="password authentication failed"):
        with toolkit.postgres(port=port, state_dir=state, project_dir=str(tmp_path), password="not-the-one"):
            pass
    assert port_is_free("127.0.0.1", port)


def test_probe_passes_libpq_parameters_from_the_url(pg_url: str) -> None:
    from toolkit.urls import parse

    with libpq.Connection(parse(pg_url + "?application_name=toolkit-probe-test").libpq) as conn:
        assert conn.scalar("SELECT current_setting('application_name')") == "toolkit-probe-test"
