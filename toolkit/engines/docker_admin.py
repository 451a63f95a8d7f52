"""Engines room: the Docker engine's role for tests (``DockerEngine.admin``), for the pytest plugin.

The plugin creates a database per test, owned by the application role, with the ``vector`` extension. The
application role may do neither (no CREATEDB; creating ``vector`` needs a superuser), and the Docker engine
keeps no superuser password on the host (see toolkit/bootstrap.py). So the superuser, through ``docker
exec`` over the container's socket as for bootstrap, sets up once:

* ``<user>_tests``: a login role, NOSUPERUSER CREATEDB NOCREATEROLE, a member of the application role
  (with SET, which Postgres 16+ needs for ``CREATE DATABASE ... OWNER``, and INHERIT, which cloning a
  database the application role owns and dropping one need). Its password is random, kept in
  ``<state_dir>/docker/tests-role.pw`` (0600); a lost file is replaced and the password reset.
* ``<database>_vector_template``: owned by the application role, the extension created by the superuser,
  then marked a template that accepts no connections (``datistemplate`` is also the mark that it is
  complete: a connection to it, even ours, would make every concurrent clone fail).

A role or database by those names that the toolkit did not create (no marker comment; for the database,
also another owner) is left alone: changing it could break someone's application.

Each call first logs in as that role over TCP and checks all of it; only when something is missing or wrong
does it run the superuser's script. A lock in the state dir makes concurrent callers (pytest-xdist workers)
take turns, so one never resets the password another has just read.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

from toolkit import bootstrap, libpq, perms
from toolkit.engines.base import Admin
from toolkit.engines.docker import SUPERUSER, superuser_psql_sh
from toolkit.errors import InUseError, NotReadyError, error_line
from toolkit.lock import state_lock
from toolkit.ports import connect_host
from toolkit.settings import Settings
from toolkit.urls import PgUrl

ROLE_SUFFIX = "_tests"
TEMPLATE_SUFFIX = "_vector_template"
PASSWORD_FILE = Path("docker") / "tests-role.pw"  # under the state dir
LOCK = ".docker-admin.lock"
MARKER = "toolkit: for the tests of the application role"  # the role's and the template's comment: ours
REFUSED = "toolkit-admin: refused"
NAMEDATALEN = 63  # bytes in a Postgres identifier; a longer name is cut silently

# psql variable -> the environment variable of the exec that carries it (as docker.ENV_OF for bootstrap)
ENV_OF = {"toolkit_role": "TOOLKIT_TESTS_ROLE", "toolkit_password": "TOOLKIT_TESTS_PASSWORD",
          "toolkit_owner": "TOOLKIT_TESTS_OWNER", "toolkit_template": "TOOLKIT_TESTS_TEMPLATE",
          "toolkit_marker": "TOOLKIT_TESTS_MARKER"}

# As the superuser on the maintenance database, values as psql variables (psql quotes :'x' and :"x"), read
# through printf so none is in any argv. Refusals come first, before anything changes.
SQL = rf"""SELECT
  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'toolkit_role') AS toolkit_role_exists,
  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'toolkit_role'
          AND shobj_description(oid, 'pg_authid') = :'toolkit_marker') AS toolkit_role_ours,
  EXISTS (SELECT 1 FROM pg_database WHERE datname = :'toolkit_template') AS toolkit_db_exists,
  EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
          WHERE d.datname = :'toolkit_template' AND r.rolname = :'toolkit_owner'
          AND shobj_description(d.oid, 'pg_database') = :'toolkit_marker') AS toolkit_db_ours,
  EXISTS (SELECT 1 FROM pg_database WHERE datname = :'toolkit_template'
          AND datistemplate AND NOT datallowconn) AS toolkit_db_done,
  current_setting('server_version_num')::int >= 160000 AS toolkit_pg16 \gset
\if :toolkit_role_exists
  \if :toolkit_role_ours
  \else
    \echo {REFUSED} role
    \q
  \endif
\endif
\if :toolkit_db_exists
  \if :toolkit_db_ours
  \else
    \echo {REFUSED} database
    \q
  \endif
\endif
\if :toolkit_role_exists
  ALTER ROLE :"toolkit_role" LOGIN PASSWORD :'toolkit_password' NOSUPERUSER CREATEDB NOCREATEROLE INHERIT
    NOREPLICATION NOBYPASSRLS;
\else
  BEGIN;
  CREATE ROLE :"toolkit_role" LOGIN PASSWORD :'toolkit_password' NOSUPERUSER CREATEDB NOCREATEROLE INHERIT;
  COMMENT ON ROLE :"toolkit_role" IS :'toolkit_marker';
  COMMIT;
  \echo {bootstrap.CREATED} role
\endif
\if :toolkit_pg16
  GRANT :"toolkit_owner" TO :"toolkit_role" WITH INHERIT TRUE, SET TRUE;
\else
  GRANT :"toolkit_owner" TO :"toolkit_role";
\endif
\if :toolkit_db_exists
\else
  CREATE DATABASE :"toolkit_template" OWNER :"toolkit_owner";
  COMMENT ON DATABASE :"toolkit_template" IS :'toolkit_marker';
  \echo {bootstrap.CREATED} template
\endif
\if :toolkit_db_done
\else
  \connect :"toolkit_template"
  CREATE EXTENSION IF NOT EXISTS vector;
  \connect {bootstrap.MAINTENANCE_DB}
  ALTER DATABASE :"toolkit_template" IS_TEMPLATE true ALLOW_CONNECTIONS false;
\endif
"""

SCRIPT = superuser_psql_sh(SQL, ENV_OF, options="-v ON_ERROR_STOP=1 -X -q")


def fit(name: str, suffix: str) -> str:
    """``name + suffix`` as Postgres keeps it: within 63 bytes (a longer identifier is cut silently, and the
    role we create would not be the one we log in as), else ``name`` cut and tagged with its hash."""
    if len((name + suffix).encode()) <= NAMEDATALEN:
        return name + suffix
    tag = "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = NAMEDATALEN - len(suffix.encode()) - len(tag)
    return name.encode()[:room].decode("utf-8", "ignore") + tag + suffix


def names(settings: Settings) -> tuple[str, str]:
    """The test role's name and the vector template's, for these settings."""
    return fit(settings.db.user, ROLE_SUFFIX), fit(settings.db.database, TEMPLATE_SUFFIX)


def ensure(settings: Settings, container: Any, app_url: PgUrl) -> Admin:
    """The test role and template of ``container``'s server (running), created or repaired when missing;
    ``app_url``: where the application connects, whose host and port the role's URL keeps."""
    role, template = names(settings)
    owner = settings.db.user
    # a lock of its own: `up` (which holds the lifecycle lock) is not waited for, nor waits
    with state_lock(settings.state_dir, "admin", timeout=settings.timeout + 10, name=LOCK):
        password, fresh = _password(settings.state_dir / PASSWORD_FILE)
        admin = Admin(PgUrl(role, password, app_url.host, app_url.port, bootstrap.MAINTENANCE_DB, app_url.options),
                      owner=owner, vector_template=template)
        here = admin.url.with_address(host=connect_host(settings.db.bind))
        if fresh or check(here, owner, template) is not None:
            _setup(container, {"toolkit_role": role, "toolkit_password": password, "toolkit_owner": owner,
                               "toolkit_template": template, "toolkit_marker": MARKER})
            problem = check(here, owner, template)
            if problem is not None:
                raise NotReadyError(f"role {role!r} was set up in container {container.name} but {problem}",
                                    hint="the server must let it log in over TCP with a password (pg_hba.conf "
                                         "'host all all all scram-sha-256', as the postgres image has)")
    return admin


def _password(path: Path) -> tuple[str, bool]:
    """The role's password from ``path``, or a new one written there (0600 from its first byte); True when
    new (the server does not know it yet)."""
    try:
        password = perms.read_private(path)
    except OSError:  # missing, a symlink, another user's file: ours replaces it, and the server is told
        password = ""
    if password:
        return password, False
    path.parent.mkdir(mode=0o700, exist_ok=True)
    password = secrets.token_urlsafe(32)
    perms.replace_private(path, password + "\n")
    return password, True


def check(url: PgUrl, owner: str, template: str) -> str | None:
    """None when ``url``'s role logs in and may do all the plugin needs, else what is wrong."""
    try:
        with libpq.Connection(url.libpq) as conn:
            o, t = conn.literal(owner), conn.literal(template)
            set_ok = f"CASE WHEN current_setting('server_version_num')::int >= 160000 " \
                     f"THEN pg_has_role(current_user, {o}, 'SET') ELSE pg_has_role(current_user, {o}, 'MEMBER') END"
            ok = conn.scalar(
                f"SELECT r.rolcreatedb AND NOT r.rolsuper AND pg_has_role(current_user, {o}, 'USAGE') AND {set_ok} "
                f"AND EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles w ON w.oid = d.datdba WHERE d.datname = {t} "
                f"AND w.rolname = {o} AND d.datistemplate AND NOT d.datallowconn) "
                "FROM pg_roles r WHERE r.rolname = current_user")
    except libpq.PqError as exc:
        return f"cannot log in: {error_line(exc)}"
    return None if ok == "t" else f"lacks CREATEDB, membership in {owner!r} or template {template!r}"


def _setup(container: Any, values: dict[str, str]) -> list[str]:
    """Run the superuser's script in ``container``; what it created. Once more when it fails: a caller
    with another state dir may have created the role or the template a moment before."""
    env = {ENV_OF[var]: value for var, value in values.items()}
    text = ""
    for _ in range(2):
        code, output = container.exec_run(["sh", "-c", SCRIPT], user=SUPERUSER,
                                          environment={**env, "POSTGRES_USER": SUPERUSER})
        text = output.decode("utf-8", "replace").replace(values["toolkit_password"], "***")
        if f"{REFUSED} role" in text:
            raise InUseError(f"role {values['toolkit_role']!r} exists in container {container.name} but the toolkit "
                             "did not create it; leaving it alone",
                             hint="drop or rename that role, or give the application another role (TOOLKIT_PG_USER)")
        if f"{REFUSED} database" in text:
            raise InUseError(f"database {values['toolkit_template']!r} exists in container {container.name} but the "
                             f"toolkit did not create it for role {values['toolkit_owner']!r}; leaving it alone",
                             hint="drop or rename that database, or use another database name (TOOLKIT_PG_DATABASE)")
        if code == 0:
            return bootstrap.created_in(text)
    raise NotReadyError(f"setting up role {values['toolkit_role']!r} for tests in container {container.name} failed",
                        detail=text, hint="see the output above; `toolkit logs` shows the server's side")
