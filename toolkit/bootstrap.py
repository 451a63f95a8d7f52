"""Bootstrap room: what is inside the server (the application role, its database, the ``vector``
extension), apart from where the server runs, as pytest-postgresql's janitor is apart from its executors.

One list of statements (``STEPS``), with every value quoted by libpq's own escaping, executed two ways:

* ``run(admin, db)``: through our libpq client, as a superuser whose URL the engine hands over (the
  embedded engine: scram over TCP to its own loopback port, the password in a 0600 file).
* ``psql_script()``: the same statements as a psql script, values passed as psql variables (psql quotes
  ``:'x'`` and ``:"x"`` with the same libpq functions). The Docker engine runs it inside the container,
  as the image's superuser over the local socket: that superuser's password is random and discarded when
  the container is created, and only the container's socket trusts it, so no superuser password exists on
  the host and none crosses the published port (which ``--bind`` may open to the network). Going through
  libpq from the host would mean keeping that password and letting the superuser log in over TCP.

The external engine has no superuser: the readiness probe creates the extension as the application role
(``create_extension``), the one step it may be allowed. Every step is idempotent; each reports whether
it created something, so an engine can tell "the role was missing" from "the password is wrong".
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from toolkit import libpq
from toolkit.errors import NotReadyError
from toolkit.health import AuthFailed, ExtensionMissing, RoleOrDatabaseMissing, query_error
from toolkit.settings import DbParams
from toolkit.urls import PgUrl

MAINTENANCE_DB = "postgres"
CREATED = "toolkit-bootstrap: created"  # psql prints this and the step's name for what it created
PSQL_VAR = "toolkit_"  # prefix of the psql variables holding the values


@dataclass(frozen=True)
class Step:
    """One idempotent statement. Placeholders: ``{name:I}`` an identifier, ``{name:L}`` a literal; there
    is no unquoted form, so no value is ever spliced into SQL as it is."""

    name: str  # what it creates, for "created ..." ("" for a statement that always runs)
    in_app_db: bool  # run in the application's database, else in the maintenance database
    sql: str
    exists: str | None = None  # a query that returns a row when there is nothing to do


STEPS: tuple[Step, ...] = (
    Step("role", False, "CREATE ROLE {user:I} LOGIN PASSWORD {password:L} NOSUPERUSER NOCREATEDB NOCREATEROLE",
         exists="SELECT 1 FROM pg_roles WHERE rolname = {user:L}"),
    Step("database", False, "CREATE DATABASE {database:I} OWNER {user:I}",
         exists="SELECT 1 FROM pg_database WHERE datname = {database:L}"),
    Step("extension", True, "CREATE EXTENSION IF NOT EXISTS vector",
         exists="SELECT 1 FROM pg_extension WHERE extname = 'vector'"),
    # Postgres 15+ no longer lets every role create in public; the database owner may, but a role
    # reusing a database made for another (or by the seed's script) needs the grant
    Step("", True, "GRANT ALL ON SCHEMA public TO {user:I}"),
)

# the step a non-superuser may be allowed (the probe, the external engine, backends/postgres.py)
EXTENSION = next(step for step in STEPS if step.name == "extension")

# unique_violation, duplicate_object (role), duplicate_database: created by another session meanwhile
_ALREADY = ("23505", "42710", "42P04")


def values(db: DbParams) -> dict[str, str]:
    return {"user": db.user, "password": db.password, "database": db.database}


class _Quoted:
    """A value rendered by libpq's escaping on a live connection (knows the server's encoding)."""

    def __init__(self, conn: libpq.Connection, value: str) -> None:
        self.conn, self.value = conn, value

    def __format__(self, spec: str) -> str:
        if spec == "I":
            return self.conn.identifier(self.value)
        if spec == "L":
            return self.conn.literal(self.value)
        raise ValueError(f"placeholder format must be I or L, not {spec!r}")


class _PsqlVar:
    """A value rendered as a reference to a psql variable, which psql quotes when it sends the statement."""

    def __init__(self, name: str) -> None:
        self.name = PSQL_VAR + name

    def __format__(self, spec: str) -> str:
        if spec == "I":
            return f':"{self.name}"'
        if spec == "L":
            return f":'{self.name}'"
        raise ValueError(f"placeholder format must be I or L, not {spec!r}")


def _render(template: str, quoted: Mapping[str, object]) -> str:
    """``template`` with each placeholder quoted; a placeholder that is not a plain name with ``:I`` or
    ``:L`` (no conversion, no attribute or index access that would reach the raw value) is refused."""
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is not None and (spec not in ("I", "L") or conversion or not name.isidentifier()):
            raise ValueError(f"placeholder {{{name}}} in {template!r} must be {{name:I}} or {{name:L}}")
    return template.format_map(quoted)


# --- through libpq -------------------------------------------------------------------------------


def run(admin: PgUrl, db: DbParams) -> list[str]:
    """As the superuser in ``admin`` (any database of the server): create what ``db`` needs and is
    missing. Idempotent; returns the names of what it created."""
    created: list[str] = []
    for in_app_db in (False, True):
        target = PgUrl(admin.user, admin.password, admin.host, admin.port,
                       db.database if in_app_db else MAINTENANCE_DB, admin.options)
        with libpq.Connection(target.libpq) as conn:
            quoted = {k: _Quoted(conn, v) for k, v in values(db).items()}
            for step in STEPS:
                if step.in_app_db == in_app_db and _apply(conn, step, quoted):
                    created.append(step.name)
    return [name for name in created if name]


def _apply(conn: libpq.Connection, step: Step, quoted: Mapping[str, object]) -> bool:
    """Run ``step`` unless its ``exists`` finds the object; True when this call created it. A session of
    an earlier `up` that was killed may still be creating it on the server: its commit makes ours a
    duplicate, which is success, not an error."""
    exists = _render(step.exists, quoted) if step.exists else None
    if exists is not None and conn.scalar(exists) is not None:
        return False
    try:
        conn.scalar(_render(step.sql, quoted))
    except libpq.PqError as exc:
        if exists is not None and exc.sqlstate in _ALREADY and conn.scalar(exists) is not None:
            return False
        raise
    return True


def create_extension(conn: libpq.Connection, url: PgUrl) -> None:
    """The extension step as the role ``url`` names (the readiness probe's, and all the external engine
    does): libpq autocommits, so it is committed before anyone else needs it."""
    try:
        conn.scalar(EXTENSION.sql)
    except libpq.PqError as exc:
        if exc.sqlstate == "42501":  # insufficient_privilege
            raise ExtensionMissing(
                "extension",
                f"the vector extension is missing in database {url.database!r} and role {url.user!r} may not create it",
            ) from None
        if exc.sqlstate == "58P01":  # undefined_file: no vector.control
            raise NotReadyError(
                "pgvector is not installed on this server (no vector.control)",
                hint="use an image or package with pgvector (e.g. pgvector/pgvector:pg16), or the embedded engine",
            ) from None
        raise query_error("extension", exc) from None


# --- through psql ----------------------------------------------------------------------------------


def psql_script() -> str:
    """``STEPS`` for psql (10+), run as a superuser connected to the maintenance database, with the
    variables of ``psql_variables`` set. Prints ``CREATED <name>`` for each thing it created."""
    refs = {k: _PsqlVar(k) for k in values(DbParams())}
    lines: list[str] = []
    in_app_db = False
    for step in STEPS:
        if step.in_app_db != in_app_db:
            database = _render("{database:I}", refs) if step.in_app_db else MAINTENANCE_DB
            lines.append(f"\\connect {database}")
            in_app_db = step.in_app_db
        sql = _render(step.sql, refs) + ";"
        if step.exists is None:
            lines.append(sql)
            continue
        lines += [f"SELECT NOT EXISTS ({_render(step.exists, refs)}) AS {PSQL_VAR}missing \\gset",
                  f"\\if :{PSQL_VAR}missing", sql, f"\\echo {CREATED} {step.name}", "\\endif"]
    return "\n".join(lines) + "\n"


def psql_variables(db: DbParams) -> dict[str, str]:
    """The psql variable names ``psql_script`` uses, and their values."""
    return {PSQL_VAR + k: v for k, v in values(db).items()}


def created_in(output: str) -> list[str]:
    """What a run of ``psql_script`` created, from its output."""
    return [line.split(CREATED, 1)[1].strip() for line in output.splitlines() if line.startswith(CREATED)]


# --- for every engine ------------------------------------------------------------------------------


def ready_or_bootstrap(wait: Callable[[], None], create: Callable[[], list[str]]) -> None:
    """Wait until the application role is served; when the role, its database or the extension is
    missing, ``create`` them and wait again. Under scram a missing role looks like a wrong password: when
    ``create`` finds nothing to create, the password really is wrong, and that error stands."""
    try:
        wait()
    except (RoleOrDatabaseMissing, ExtensionMissing, AuthFailed):
        # an earlier `up` was stopped mid-bootstrap, the settings name another role or database, or a
        # volume was made by the seed's script
        if not create():
            raise
        wait()
