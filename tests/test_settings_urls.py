"""Settings precedence and URL handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import UsageError
from toolkit.settings import resolve
from toolkit.urls import parse, redact


def test_defaults_match_run_postgres_sh(tmp_path: Path) -> None:
    s = resolve(environ={}, project_dir=tmp_path)
    assert (s.db.user, s.db.password, s.db.database, s.db.port, s.db.bind) == ("memgpt", "memgpt", "memgpt", 8888, "127.0.0.1")
    assert s.db.url().render() == "postgresql+pg8000://memgpt:memgpt@localhost:8888/memgpt"
    assert s.state_dir == tmp_path / ".toolkit"
    assert s.sources == {}


def test_precedence_flags_env_dotenv_defaults(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TOOLKIT_PG_PORT=1111\nTOOLKIT_PG_USER=fromdotenv\nTOOLKIT_PG_DATABASE=dotdb\n")
    env = {"TOOLKIT_PG_PORT": "2222", "TOOLKIT_PG_USER": "fromenv"}
    s = resolve({"db.port": 3333}, environ=env, project_dir=tmp_path)
    assert s.db.port == 3333 and s.sources["db.port"] == "flag"
    assert s.db.user == "fromenv" and s.sources["db.user"] == "environment"
    assert s.db.database == "dotdb" and s.sources["db.database"] == ".env"
    assert s.db.password == "memgpt"  # default
    assert resolve(environ=env, project_dir=tmp_path).db.port == 2222
    assert resolve(environ={}, project_dir=tmp_path).db.port == 1111


@pytest.mark.parametrize("name,value", [("TOOLKIT_PG_PORT", "abc"), ("TOOLKIT_PG_PORT", "70000"),
                                        ("TOOLKIT_ENGINE", "podman"), ("TOOLKIT_TIMEOUT", "-1"),
                                        ("TOOLKIT_PG_USER", "postgres"), ("TOOLKIT_PG_PASSWORD", "")])
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(UsageError) as err:
        resolve(environ={name: value}, project_dir=tmp_path)
    assert name in err.value.message and err.value.hint


def test_empty_env_value_falls_through(tmp_path: Path) -> None:
    # an exported-but-empty variable is "unset", not "empty string" (is-not-None pitfall)
    assert resolve(environ={"TOOLKIT_PG_PORT": ""}, project_dir=tmp_path).db.port == 8888


def test_url_round_trip_and_drivers() -> None:
    url = parse("postgresql+pg8000://u%40x:p%3Aw%40rd@db.example:6543/my%20db")
    assert (url.user, url.password, url.host, url.port, url.database) == ("u@x", "p:w@rd", "db.example", 6543, "my db")
    assert parse(url.render("psycopg")) == url == parse(url.libpq)
    assert url.render().startswith("postgresql+pg8000://") and url.libpq.startswith("postgresql://")


@pytest.mark.parametrize("bad", ["mysql://u:p@h/db", "postgresql://h/db", "postgresql://u:p@h:99999/db", "nonsense"])
def test_bad_urls_are_usage_errors_without_password(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(bad)
    assert ":p@" not in err.value.message


def test_redact_hides_passwords_everywhere() -> None:
    text = "postgresql://memgpt:s3cret@localhost/db password=s3cret and s3cret"
    out = redact(text, ("s3cret",))
    assert "s3cret" not in out and "memgpt:***@" in out


def test_env_example_documents_every_variable() -> None:
    from toolkit.settings import FIELDS

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    missing = [f.env for f in FIELDS if f"{f.env}=" not in text]
    assert not missing, f".env.example lacks {missing}"


def test_libpq_parameters_are_kept_where_the_driver_takes_them() -> None:
    url = parse("postgresql://u:secret@db.example:5433/app?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    assert url.libpq == "postgresql://u:secret@db.example:5433/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert url.render("psycopg").endswith("/app?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    assert url.render("pg8000") == "postgresql+pg8000://u:secret@db.example:5433/app"  # pg8000 takes no libpq options
    assert "secret" not in url.redacted("plain")


def test_redact_hides_passwords_in_sql_statements_of_server_logs() -> None:
    from toolkit.urls import redact

    line = "ERROR:  syntax error at end of input STATEMENT:  ALTER ROLE memgpt PASSWORD 'Hunter2-Secret'"
    assert "Hunter2" not in redact(line) and "PASSWORD '***'" in redact(line)
    assert "it''s" not in redact("CREATE ROLE a LOGIN PASSWORD 'it''s' NOSUPERUSER")
    # libpq quotes a password holding a backslash as E'...' (bootstrap's CREATE ROLE, logged when it fails)
    logged = r"STATEMENT:  CREATE ROLE pg_x LOGIN PASSWORD  E'p''w\\x Secret' NOSUPERUSER NOCREATEDB"
    assert "Secret" not in redact(logged) and redact(logged).endswith("PASSWORD  '***' NOSUPERUSER NOCREATEDB")
    # words after "password" that are not a quoted value stay readable
    kept = 'FATAL:  password authentication failed for user "memgpt"'
    assert redact(kept) == kept


def test_the_application_role_is_never_the_superuser_and_never_passwordless(tmp_path: Path) -> None:
    """`postgres` would make the app role the superuser (COPY TO PROGRAM runs); an empty password set on
    purpose must not silently become the default. Flags, environment and .env alike."""
    with pytest.raises(UsageError, match="superuser"):
        resolve({"db.user": "postgres"}, environ={}, project_dir=tmp_path)
    (tmp_path / ".env").write_text("TOOLKIT_PG_PASSWORD=\n")
    with pytest.raises(UsageError, match=r"TOOLKIT_PG_PASSWORD \(.env\): no value"):
        resolve(environ={}, project_dir=tmp_path)
    (tmp_path / ".env").write_text("TOOLKIT_PG_IMAGE=\n")  # other empty values still mean "unset"
    assert resolve(environ={"TOOLKIT_PG_PORT": ""}, project_dir=tmp_path).image == "pgvector/pgvector:pg16"
