"""Bootstrap (role, database, extension) through both of its executors, libpq and psql, against the
session's real embedded Postgres: the same statements, the same result, idempotent, hostile names safe."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from toolkit import bootstrap
from toolkit.engines.wheel import bin_path
from toolkit.health import AuthFailed, PgProbe
from toolkit.settings import DbParams
from toolkit.urls import PgUrl

HOSTILE_PASSWORD = "pa's \"wo\\rd;-- :x $HOME `id`"


@pytest.fixture
def target(pg_admin: PgUrl) -> Iterator[DbParams]:
    """A role and database that do not exist yet, with names that need quoting; dropped afterwards."""
    tag = uuid.uuid4().hex[:6]
    db = DbParams(user=f"o'bri\"en {tag}", password=HOSTILE_PASSWORD, database=f"my db; {tag}")
    yield db
    with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(db.user)))


def _app_url(admin: PgUrl, db: DbParams) -> PgUrl:
    return PgUrl(db.user, db.password, admin.host, admin.port, db.database)


def _state(admin: PgUrl, db: DbParams) -> tuple[object, ...]:
    """What bootstrap leaves: the role's powers, the database's owner, the extension, the schema grant."""
    with psycopg.connect(_app_url(admin, db).libpq) as conn:
        return tuple(conn.execute(
            "SELECT current_user, current_database(), r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolcanlogin, "
            "pg_get_userbyid(d.datdba), (SELECT extname FROM pg_extension WHERE extname = 'vector'), "
            "has_schema_privilege('public', 'CREATE') "
            "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()",
        ).fetchone() or ())


def _psql(admin: PgUrl, db: DbParams) -> subprocess.CompletedProcess[str]:
    """What the Docker engine does in its container, here with the wheel's psql over TCP."""
    argv = [str(bin_path("psql")), "-v", "ON_ERROR_STOP=1", "-q", "-X",
            PgUrl(admin.user, "", admin.host, admin.port, bootstrap.MAINTENANCE_DB).libpq]
    for name, value in bootstrap.psql_variables(db).items():
        argv += ["--set", f"{name}={value}"]
    return subprocess.run(argv, input=bootstrap.psql_script(), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": admin.password})


def test_libpq_bootstrap_creates_everything_once(pg_admin: PgUrl, target: DbParams) -> None:
    assert bootstrap.run(pg_admin, target) == ["role", "database", "extension"]
    assert bootstrap.run(pg_admin, target) == []  # idempotent: a second run creates nothing
    assert _state(pg_admin, target) == (target.user, target.database, False, False, False, True, target.user,
                                     "vector", True)
    PgProbe(_app_url(pg_admin, target))()


def test_psql_bootstrap_runs_the_same_statements_with_the_same_result(pg_admin: PgUrl, target: DbParams) -> None:
    first = _psql(pg_admin, target)
    assert first.returncode == 0, first.stderr
    assert bootstrap.created_in(first.stdout) == ["role", "database", "extension"]
    again = _psql(pg_admin, target)
    assert again.returncode == 0 and bootstrap.created_in(again.stdout) == [], again.stderr
    assert _state(pg_admin, target) == (target.user, target.database, False, False, False, True, target.user,
                                     "vector", True)
    assert HOSTILE_PASSWORD not in first.stdout + first.stderr


def test_each_executor_completes_what_the_other_started(pg_admin: PgUrl, target: DbParams) -> None:
    """A bootstrap cut short (role only) is finished by either executor, which creates only the rest."""
    with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(target.user),
                                                                          sql.Literal(target.password)))
    done = _psql(pg_admin, target)
    assert bootstrap.created_in(done.stdout) == ["database", "extension"], done.stderr
    with psycopg.connect(PgUrl(pg_admin.user, pg_admin.password, pg_admin.host, pg_admin.port, target.database).libpq,
                         autocommit=True) as conn:
        conn.execute("DROP EXTENSION vector")
    assert bootstrap.run(pg_admin, target) == ["extension"]


def test_an_unquoted_placeholder_is_refused() -> None:
    """No value is ever spliced into SQL as it is: a step must say identifier or literal."""
    refs = {"user": bootstrap._PsqlVar("user")}
    for template in ("SELECT {user}", "SELECT {user!s:L}", "SELECT {user.name:L}", "SELECT {user:Q}"):
        with pytest.raises(ValueError, match="must be"):
            bootstrap._render(template, refs)
    for step in bootstrap.STEPS:  # every placeholder of the real steps renders
        for text in (step.sql, step.exists or ""):
            bootstrap._render(text, {k: bootstrap._PsqlVar(k) for k in bootstrap.values(DbParams())})


def test_a_wrong_password_is_not_a_reason_to_create_anything(pg_admin: PgUrl) -> None:
    wrong = PgUrl(pg_admin.user, "not-the-one", pg_admin.host, pg_admin.port, pg_admin.database)
    calls: list[str] = []

    def create() -> list[str]:
        calls.append("create")
        return []

    with pytest.raises(AuthFailed):
        bootstrap.ready_or_bootstrap(PgProbe(wrong), create)
    assert calls == ["create"]


def test_a_missing_database_is_created_then_waited_for(pg_admin: PgUrl, target: DbParams) -> None:
    app = _app_url(pg_admin, target)
    bootstrap.ready_or_bootstrap(PgProbe(app), lambda: bootstrap.run(pg_admin, target))
    assert _state(pg_admin, target)[0] == target.user


def test_the_docker_engines_script_runs_bootstrap_with_values_only_in_the_environment(pg_admin: PgUrl,
                                                                                     target: DbParams) -> None:
    """engines/docker.py's BOOTSTRAP_SH as the container runs it (sh, psql on PATH, the values in the
    environment), here against the session server: same result, and no value in psql's argv."""
    from toolkit.engines.docker import BOOTSTRAP_SH, _bootstrap_env

    assert HOSTILE_PASSWORD not in BOOTSTRAP_SH and "--set" not in BOOTSTRAP_SH
    env = {"PATH": f"{bin_path('psql').parent}:{os.environ['PATH']}", "PGHOST": pg_admin.host, "PGPORT": str(pg_admin.port),
           "PGPASSWORD": pg_admin.password, "POSTGRES_USER": pg_admin.user, **_bootstrap_env(target)}
    done = subprocess.run(["sh", "-c", BOOTSTRAP_SH], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert bootstrap.created_in(done.stdout) == ["role", "database", "extension"]
    assert _state(pg_admin, target) == (target.user, target.database, False, False, False, True, target.user,
                                     "vector", True)
