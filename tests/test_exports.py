"""Exports: every client's variables (--export / TOOLKIT_EXPORT), as each client really reads them: psql with
only PG* in its environment, SQLAlchemy + pg8000 from LETTA_PG_URI the way Letta builds its engine, a GitHub
runner reading $GITHUB_ENV; `up` writes them into .env keeping every other line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import parse_github_file, run_toolkit
from toolkit.settings import Settings
from toolkit.urls import PgUrl

# every character a shell, a .env parser or a URL could trip on; a role logs in with it. (No control
# characters: SCRAM's SASLprep, which pg8000 applies, refuses them; libpq would fall back to the raw bytes.)
LOGIN = "it's \"q\" $HOME `x` \\ \\' back\\\\slash =<<EOF sslmode=x @/:%#?& end\\"
# and what only a file format can trip on: newlines, a carriage return, the runner's delimiter's prefix
HOSTILE = LOGIN + "\nnew line\r\nEOF\nghadelimiter_\n\r"
LIBPQ = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")


@pytest.fixture
def hostile_role(pg_admin: PgUrl, pg_settings: Settings) -> Iterator[PgUrl]:
    """A login role with the LOGIN password on the session server's database, dropped afterwards."""
    import psycopg
    from psycopg import sql

    role = f"tk_exports_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(LOGIN)))
    try:
        yield PgUrl(role, LOGIN, "127.0.0.1", pg_settings.db.port, pg_settings.db.database)
    finally:
        with psycopg.connect(pg_admin.libpq, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def psql_with_only(variables: dict[str, str]) -> str:
    """``SELECT current_user`` through the embedded wheel's psql (what `toolkit psql` runs), with nothing in
    its environment but ``variables``: no URL, no argument says where to connect."""
    from toolkit.engines.wheel import bin_path

    done = subprocess.run([str(bin_path("psql")), "-X", "-At", "-c", "SELECT current_user"], capture_output=True,
                          text=True, env=variables, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def letta_connects(uri: str) -> str:
    """Connect with LETTA_PG_URI as Letta's server does (letta/server/db.py): its sync engine hands the URI to
    SQLAlchemy as is (psycopg2 there: SQLAlchemy must read the same password out of it); its async engine
    swaps the scheme for its driver and "sslmode=" for "ssl=". pg8000 stands in for asyncpg here."""
    from sqlalchemy import create_engine, text

    assert uri.startswith("postgresql://"), uri
    driver_uri = f"postgresql+pg8000://{uri.split('://', 1)[1]}".replace("sslmode=", "ssl=")
    engine = create_engine(driver_uri)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT current_user")).scalar_one())
    finally:
        engine.dispose()


def test_env_export_letta_libpq_connects_psql_and_sqlalchemy(hostile_role: PgUrl, isolated: Path) -> None:
    external = ("--engine", "external", "--url", hostile_role.libpq)
    printed = run_toolkit("env", *external, "--export", "letta,libpq", "--format", "json")
    assert printed.returncode == 0, printed.stderr
    values = json.loads(printed.stdout)
    assert list(values) == ["LETTA_PG_URI", *LIBPQ]  # only what was asked, in the order asked
    assert values["PGPASSWORD"] == LOGIN and values["PGHOST"] == "127.0.0.1"
    from sqlalchemy.engine import make_url

    assert make_url(values["LETTA_PG_URI"]).password == LOGIN
    assert letta_connects(values["LETTA_PG_URI"]) == hostile_role.user
    assert psql_with_only({k: values[k] for k in LIBPQ}) == hostile_role.user

    # the sh form, eval'd by a shell, gives psql the same variables (the password's quotes, $, newlines)
    sh = run_toolkit("env", *external, "--export", "letta,libpq")
    script = sh.stdout + "\nenv -0\n"
    shell = subprocess.run(["bash", "-c", script], capture_output=True, env={"PATH": os.environ["PATH"]})
    exported = dict(entry.split("=", 1) for entry in shell.stdout.decode().split("\0") if "=" in entry)
    assert {k: exported[k] for k in ["LETTA_PG_URI", *LIBPQ]} == values


def test_up_writes_every_chosen_export_keeping_other_lines(embedded_down_after: Path) -> None:
    project = embedded_down_after
    env = project / ".env"
    mine = "# my secrets\nOPENAI_API_KEY=sk-123\n\nTOOLKIT_EXPORT=letta, libpq,letta\nexport OTHER='x y'  # trailing\n"
    env.write_text(mine)
    env.chmod(0o644)
    password = "Pa'ss\"w$rd\\1 @/x"  # the server's own; never printed by up
    flags = ("--engine", "embedded", "--password", password, "--json")

    first = run_toolkit("up", *flags)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["variables"] == ["LETTA_PG_URI", *LIBPQ] and result["written"] == result["variables"]
    assert password not in first.stdout + first.stderr and quote(password, safe="") not in first.stdout
    text = env.read_text()
    assert text.startswith(mine) and stat.S_IMODE(env.stat().st_mode) == 0o600
    from dotenv import dotenv_values

    written = dotenv_values(env)
    assert "PGVECTOR_TEST_DB_URL" not in written and written["PGPASSWORD"] == password
    assert psql_with_only({k: str(written[k]) for k in LIBPQ}) == "memgpt"
    assert letta_connects(str(written["LETTA_PG_URI"])) == "memgpt"

    before = env.stat().st_mtime_ns
    again = run_toolkit("up", "--engine", "embedded", "--password", password)
    assert again.returncode == 0, again.stderr
    assert "LETTA_PG_URI, PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE in .env are current" in again.stdout
    assert env.stat().st_mtime_ns == before  # nothing written when current

    # the environment beats .env, a flag beats both; every earlier line stays
    from_environment = run_toolkit("up", *flags, env={"TOOLKIT_EXPORT": "database-url"})
    assert json.loads(from_environment.stdout)["written"] == ["DATABASE_URL"], from_environment.stderr
    flag = run_toolkit("up", *flags, "--export", "memgpt", "--export", "database-url,memgpt",
                       env={"TOOLKIT_EXPORT": "letta"})
    result = json.loads(flag.stdout)
    assert result["variables"] == ["PGVECTOR_TEST_DB_URL", "DATABASE_URL"] and result["written"] == ["PGVECTOR_TEST_DB_URL"]
    final = dotenv_values(env)
    assert env.read_text().startswith(mine) and final["OPENAI_API_KEY"] == "sk-123" and final["OTHER"] == "x y"
    assert final["DATABASE_URL"] == str(final["LETTA_PG_URI"]) and final["PGPASSWORD"] == password
    assert str(final["PGVECTOR_TEST_DB_URL"]).startswith("postgresql+pg8000://memgpt:")
    line = run_toolkit("up", "--engine", "embedded", "--password", password, "--export", "letta,memgpt,libpq").stdout
    assert "are current" in line and password not in line


@pytest.mark.parametrize(("args", "env", "says"), [
    (("env", "--export", "letta,lettta"), {}, "invalid value 'letta,lettta' for --export: no export named 'lettta' "
                                              "(did you mean 'letta'?)"),
    (("up", "--export", "psql"), {}, "invalid value 'psql' for --export: no export named 'psql'"),
    (("env",), {"TOOLKIT_EXPORT": "libpq,pg"}, "invalid value 'libpq,pg' for TOOLKIT_EXPORT (environment)"),
    (("up", "--no-export", "--export", "letta"), {}, "--export and --no-export contradict each other"),
    # python-dotenv expands ${NAME} even in quotes: refused before a server starts
    (("up", "--engine", "embedded", "--export", "libpq", "--password", "a${HOME}"), {},
     "PGPASSWORD holds '${', which python-dotenv would expand"),
])
def test_an_unknown_or_unwritable_export_is_one_usage_line(args: tuple[str, ...], env: dict[str, str], says: str,
                                                           isolated: Path) -> None:
    done = run_toolkit(*args, env=env)
    assert done.returncode == 2 and done.stdout == "", done
    [line] = done.stderr.splitlines()
    assert line.startswith(f"toolkit: error: {says}") and "Traceback" not in done.stderr, line
    if "no export named" in says:
        assert "expected a comma list of memgpt, letta, libpq, database-url" in line  # how to fix it
    assert not (isolated / ".toolkit").exists() and not (isolated / ".env").exists()  # nothing was started or written


def test_an_unknown_export_in_dotenv_is_one_usage_line(isolated: Path) -> None:
    (isolated / ".env").write_text("TOOLKIT_EXPORT=memgpt,mysql\n")
    done = run_toolkit("up")
    assert done.returncode == 2, done
    assert done.stderr.startswith("toolkit: error: invalid value 'memgpt,mysql' for TOOLKIT_EXPORT (.env): "
                                  "no export named 'mysql'") and len(done.stderr.splitlines()) == 1


def test_github_format_round_trips_any_password(isolated: Path) -> None:
    import sys

    args = ("env", "--port", "5555", "--password", HOSTILE, "--export", "libpq,memgpt,letta,database-url")
    # bytes: text mode would turn the password's CR LF into LF before the parser saw it
    github = subprocess.run([sys.executable, "-m", "toolkit", *args, "--format", "github"], capture_output=True)
    assert github.returncode == 0, github.stderr
    as_json = json.loads(run_toolkit(*args, "--format", "json").stdout)
    assert as_json["PGPASSWORD"] == HOSTILE
    github_env = isolated / "github_env"
    github_env.write_bytes(b"EARLIER=1\n")  # the runner's file: appended to (`>> "$GITHUB_ENV"`), steps before ours
    with github_env.open("ab") as out:
        out.write(github.stdout)
        out.write(b"LATER=2\n")
    assert parse_github_file(github_env.read_bytes().decode()) == {"EARLIER": "1", **as_json, "LATER": "2"}
    # a single-line value keeps the plain NAME=value form
    assert b"PGHOST=localhost\n" in github.stdout and b"PGPORT=5555\n" in github.stdout


def test_github_delimiter_is_never_in_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit import envfile

    drawn = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(envfile.secrets, "token_hex", lambda n: next(drawn))
    value = f"x\nghadelimiter_{'a' * 32}\ny"  # the first delimiter drawn is in the value: drawn again
    text = envfile.render({"V": value}, "github")
    assert text == f"V<<ghadelimiter_{'b' * 32}\n{value}\nghadelimiter_{'b' * 32}"
    assert parse_github_file(text) == {"V": value}


def test_libpq_reads_a_urls_settings_as_libpq_does_plus_kept_percent_decoded() -> None:
    """libpq decodes %XX in a URL's query and keeps "+": PGSSLROOTCERT must name the file psql "$DATABASE_URL" reads."""
    from toolkit import exports
    from toolkit.urls import parse

    url = parse("postgresql://u:p@db.example:5432/d?sslmode=verify-full&sslrootcert=/etc/ssl/my+ca%20x.crt&application_name=a+b")
    got = exports.values(url, ["libpq"])
    assert (got["PGSSLROOTCERT"], got["PGAPPNAME"], got["PGSSLMODE"]) == ("/etc/ssl/my+ca x.crt", "a+b", "verify-full")
