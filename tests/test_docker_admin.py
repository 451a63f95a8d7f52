"""The Docker engine's role for tests (``DockerEngine.admin``) against a real container: what the pytest
plugin does with it (clone the vector template, give databases to the application role, drop them), twice
and from two processes at once, a lost password file, names that need quoting or cutting, and a role by
that name the toolkit did not create."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import docker_engine
from tests.support import REPO
from toolkit.engines.base import Admin
from toolkit.errors import EngineUnavailableError, InUseError, NotReadyError
from toolkit.settings import Settings, resolve

pytestmark = pytest.mark.docker


def connect(url: Any, database: str | None = None, **kw: Any) -> Any:
    """A psycopg connection (autocommit) to ``url`` over 127.0.0.1, to ``database`` if given."""
    import psycopg

    url = url.with_address(host="127.0.0.1")
    return psycopg.connect(replace(url, database=database or url.database).libpq, autocommit=True, **kw)


def superuser(settings: Settings, query: str, database: str = "postgres") -> str:
    """``query`` run by the container's superuser over its socket; psql's unaligned output."""
    from toolkit.engines.docker import client

    code, out = client().containers.get(settings.container).exec_run(
        ["psql", "-X", "-At", "-U", "postgres", "-d", database, "-c", query], user="postgres")
    assert code == 0, out
    return str(out.decode().strip())


def password_file(settings: Settings) -> Path:
    return settings.state_dir / "docker" / "tests-role.pw"


def test_admin_makes_vector_databases_owned_by_the_app_role(dsettings: Settings) -> None:
    docker_engine(dsettings).up()
    admin = docker_engine(dsettings).admin()
    assert admin == docker_engine(dsettings).admin()  # idempotent: the same role, password and template
    assert (admin.owner, admin.vector_template) == ("memgpt", "memgpt_vector_template")
    assert (admin.url.user, admin.url.database, admin.url.host, admin.url.port) == \
        ("memgpt_tests", "postgres", dsettings.db.host, dsettings.db.port)
    st = password_file(dsettings).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(password_file(dsettings).parent.stat().st_mode) == 0o700
    assert password_file(dsettings).read_text().strip() == admin.url.password

    # the plugin's steps, as the role, with its long-lived connection (advisory lock) open throughout
    with connect(admin.url) as held:
        held.execute("SELECT pg_advisory_lock_shared(42)")
        held.execute('CREATE DATABASE run_tpl TEMPLATE memgpt_vector_template OWNER memgpt')
        with connect(admin.url, "run_tpl") as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # a no-op: cloned with it
        held.execute('CREATE DATABASE t1 TEMPLATE run_tpl OWNER memgpt')
        app = connect(dsettings.db.url(), "t1")
        with app:
            assert app.execute("SELECT current_user, pg_get_userbyid(datdba) FROM pg_database "
                               "WHERE datname = current_database()").fetchone() == ("memgpt", "memgpt")
            app.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
            app.execute("INSERT INTO items VALUES (1, '[1,2,3]'), (2, '[3,2,1]')")
            assert app.execute("SELECT id FROM items ORDER BY embedding <-> '[3,2,0]' LIMIT 1").fetchone() == (2,)
            # dropped while the application role is still connected to it
            held.execute("DROP DATABASE t1 WITH (FORCE)")
        held.execute("DROP DATABASE run_tpl WITH (FORCE)")

    # the application role gained nothing; the test role is no superuser and creates no roles
    assert superuser(dsettings, "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                "WHERE rolname LIKE 'memgpt%' ORDER BY 1") == "memgpt|f|f|f\nmemgpt_tests|f|t|f"
    # the template takes no connections (one would make every clone fail), not even the test role's
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        connect(admin.url, "memgpt_vector_template")


def test_two_processes_at_once_get_one_working_role(dsettings: Settings, tmp_path: Path) -> None:
    """Two pytest-xdist workers' first call, on a fresh server: both get the same password, and it works."""
    docker_engine(dsettings).up()
    pickled = tmp_path / "settings.pickle"
    pickled.write_bytes(pickle.dumps(dsettings))
    code = ("import pickle, sys; from toolkit.engines.docker import DockerEngine; "
            "a = DockerEngine(pickle.load(open(sys.argv[1], 'rb'))).admin(); print(a.url.password)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(2):  # cold (nothing exists), then with the password file gone (both reset it)
        workers = [subprocess.Popen([sys.executable, "-c", code, str(pickled)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
        results = [worker.communicate() for worker in workers]
        assert all(worker.returncode == 0 for worker in workers), results
        passwords = {out.strip() for out, _ in results}
        assert len(passwords) == 1
        admin = docker_engine(dsettings).admin()
        assert passwords == {admin.url.password}
        with connect(admin.url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("memgpt_tests",)
        password_file(dsettings).unlink()


def test_a_lost_password_file_resets_the_password(dsettings: Settings) -> None:
    import psycopg

    docker_engine(dsettings).up()
    before = docker_engine(dsettings).admin()
    password_file(dsettings).unlink()
    after = docker_engine(dsettings).admin()
    assert after.url.password != before.url.password
    assert stat.S_IMODE(password_file(dsettings).stat().st_mode) == 0o600
    with connect(after.url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("memgpt_tests",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(before.url)
    # a file emptied, or replaced by a symlink to something else, is replaced too (never read through)
    for spoil in ("empty", "symlink"):
        path = password_file(dsettings)
        path.unlink()
        if spoil == "empty":
            path.write_text("")
        else:
            (path.parent / "elsewhere").write_text("planted\n")
            path.symlink_to(path.parent / "elsewhere")
        again = docker_engine(dsettings).admin()
        assert again.url.password not in ("", "planted") and not path.is_symlink()
        assert (path.parent / "elsewhere").read_text() == "planted\n" if spoil == "symlink" else True
        with connect(again.url) as conn:
            conn.execute("SELECT 1")


def test_a_password_the_server_forgot_is_set_again(dsettings: Settings) -> None:
    """The file is there but the role is not (the volume purged and made again): created with the file's password."""
    engine = docker_engine(dsettings)
    engine.up()
    admin = engine.admin()
    superuser(dsettings, "ALTER DATABASE memgpt_vector_template IS_TEMPLATE false")
    superuser(dsettings, "DROP DATABASE memgpt_vector_template")
    superuser(dsettings, "DROP ROLE memgpt_tests")
    assert docker_engine(dsettings).admin() == admin
    with connect(admin.url) as conn:
        conn.execute("CREATE DATABASE again TEMPLATE memgpt_vector_template OWNER memgpt")
        conn.execute("DROP DATABASE again")
    # a setup stopped half way (the template made, not yet given the extension nor marked) or a role
    # changed since: finished and repaired by the next call
    superuser(dsettings, "ALTER DATABASE memgpt_vector_template IS_TEMPLATE false ALLOW_CONNECTIONS true")
    superuser(dsettings, "ALTER ROLE memgpt_tests NOCREATEDB")
    superuser(dsettings, "DROP EXTENSION vector", "memgpt_vector_template")
    assert docker_engine(dsettings).admin() == admin
    with connect(admin.url) as conn:
        conn.execute("CREATE DATABASE again TEMPLATE memgpt_vector_template OWNER memgpt")
    with connect(dsettings.db.url(), "again") as app:
        assert app.execute("SELECT '[1,2]'::vector <-> '[1,3]'").fetchone() == (1.0,)


def test_names_that_need_quoting_or_cutting(dsettings: Settings) -> None:
    """A user and database whose names need quotes, and so long that ``_tests`` would be cut off by Postgres."""
    user = "o'bri\"en " + "x" * 50  # 59 bytes: the longest Postgres keeps is 63
    hostile = replace(dsettings, db=replace(dsettings.db, user=user, password="pa's \"wo\\rd;-- $HOME `id`",
                                            database="my db; DROP " + "é" * 25))
    docker_engine(hostile).up()
    admin = docker_engine(hostile).admin()
    assert admin.owner == user and admin.vector_template is not None
    assert len(admin.url.user.encode()) <= 63 and admin.url.user.endswith("_tests")
    assert len(admin.vector_template.encode()) <= 63 and admin.vector_template.endswith("_vector_template")
    with connect(admin.url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (admin.url.user,)
        conn.execute(f'CREATE DATABASE "t 1" TEMPLATE "{admin.vector_template}" OWNER "{user.replace(chr(34), 2 * chr(34))}"')
    with connect(hostile.db.url(), "t 1") as app:
        app.execute("CREATE TABLE v (e vector(3))")
    with connect(admin.url) as conn:
        conn.execute('DROP DATABASE "t 1" WITH (FORCE)')


def test_a_role_the_toolkit_did_not_create_is_left_alone(dsettings: Settings) -> None:
    docker_engine(dsettings).up()
    superuser(dsettings, "CREATE ROLE memgpt_tests LOGIN PASSWORD 'theirs' NOCREATEDB")
    with pytest.raises(InUseError, match="'memgpt_tests' exists .* the toolkit did not create it"):
        docker_engine(dsettings).admin()
    assert superuser(dsettings, "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'memgpt_tests'") == "f"
    assert superuser(dsettings, "SELECT count(*) FROM pg_auth_members WHERE member = 'memgpt_tests'::regrole") == "0"
    superuser(dsettings, "DROP ROLE memgpt_tests")
    # a database by the template's name, another role's or the application role's own: refused, nothing changed
    for owner in ("postgres", "memgpt"):
        superuser(dsettings, f"CREATE DATABASE memgpt_vector_template OWNER {owner}")
        with pytest.raises(InUseError, match="'memgpt_vector_template' exists .* the toolkit did not create it"):
            docker_engine(dsettings).admin()
        assert superuser(dsettings, "SELECT count(*) FROM pg_roles WHERE rolname = 'memgpt_tests'") == "0"
        assert superuser(dsettings, "SELECT datistemplate, datallowconn FROM pg_database "
                                    "WHERE datname = 'memgpt_vector_template'") == "f|t"
        superuser(dsettings, "DROP DATABASE memgpt_vector_template")


def test_no_server_or_no_docker_is_one_clear_error(dsettings: Settings, isolated: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotReadyError, match="no container .*not up") as no_container:
        docker_engine(dsettings).admin()
    assert "toolkit up --engine docker" in (no_container.value.hint or "")
    engine = docker_engine(dsettings)
    engine.up()
    engine.client.containers.get(dsettings.container).stop(timeout=10)
    with pytest.raises(NotReadyError, match="is exited, not running") as stopped:
        docker_engine(dsettings).admin()
    assert "toolkit up" in (stopped.value.hint or "")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{isolated}/no.sock")
    with pytest.raises(EngineUnavailableError, match="does not exist"):
        docker_engine(resolve({"engine": "docker"}, environ={}, project_dir=isolated)).admin()


def test_admin_is_part_of_the_engine_protocol() -> None:
    from toolkit.engines.base import Engine
    from toolkit.engines.docker import DockerEngine

    assert "admin" in dir(Engine) and callable(DockerEngine.admin)
    assert [f for f in Admin.__dataclass_fields__] == ["url", "owner", "vector_template"]
