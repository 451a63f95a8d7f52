"""Exports: which variables each client reads to find the database, one typed registry.

``toolkit up`` writes the chosen exports into .env and ``toolkit env`` prints them (``--export`` /
``TOOLKIT_EXPORT``: a comma list of names). A name maps a ``PgUrl`` to the variables that client reads;
adding a client is one function and one line in ``EXPORTS``. Commands only parse names and render.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from toolkit.errors import UsageError
from toolkit.urls import PgUrl

URL_VAR = "PGVECTOR_TEST_DB_URL"  # what MemGPT's tests read

# libpq's environment variables for the connection parameters a URL's query may carry (libpq's
# "Environment Variables" section): an external server's sslmode must reach psql as PGSSLMODE, or psql
# would quietly connect with libpq's default (prefer) instead
_LIBPQ_ENV = {
    "hostaddr": "PGHOSTADDR", "passfile": "PGPASSFILE", "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING", "service": "PGSERVICE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "sslmode": "PGSSLMODE", "requiressl": "PGREQUIRESSL",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcertmode": "PGSSLCERTMODE", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION", "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION", "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


@dataclass(frozen=True)
class Export:
    """One client's way of finding the database."""

    name: str  # what --export / TOOLKIT_EXPORT say
    client: str  # who reads it, for help texts
    variables: tuple[str, ...]  # the variables it always sets (libpq adds PGSSLMODE & co. from a URL's query)
    values: Callable[[PgUrl], dict[str, str]]


def _memgpt(url: PgUrl) -> dict[str, str]:
    return {URL_VAR: url.render("pg8000")}


def _letta(url: PgUrl) -> dict[str, str]:
    # Letta's server (letta/settings.py, Settings with env_prefix "letta_") takes LETTA_PG_URI first; only
    # without it does it paste LETTA_PG_USER/PASSWORD/HOST/PORT/DB into a postgresql+pg8000:// URL, and
    # unencoded (a password holding "@", "/", ":" or "%" then breaks it). So the URI alone, percent-encoded.
    # Plain postgresql://: its sync engine hands the URI to SQLAlchemy as is (psycopg2, in Letta's postgres
    # extra), its async one swaps the scheme for postgresql+asyncpg:// and "sslmode=" for "ssl=" (an
    # encoded password holds no "=", so that replace cannot reach into it).
    return {"LETTA_PG_URI": url.render("plain")}


def _libpq(url: PgUrl) -> dict[str, str]:
    # an empty PGPASSWORD is no password to libpq (it then reads ~/.pgpass), so it is always written: a
    # stale one in .env from an earlier server never survives
    values = {"PGHOST": url.host, "PGPORT": str(url.port), "PGUSER": url.user, "PGPASSWORD": url.password,
              "PGDATABASE": url.database}
    for key, value in _query(url.options):
        if key not in _LIBPQ_ENV:
            raise UsageError(f"the URL's parameter {key!r} has no libpq environment variable, so --export libpq "
                             "cannot carry it", hint="use --export database-url (the URL keeps it) instead of libpq")
        values[_LIBPQ_ENV[key]] = value
    return values


def _query(options: str) -> list[tuple[str, str]]:
    """A URL's query as libpq reads it: %XX decoded, "+" kept (parse_qsl would make it a space, and a CA
    file's path "my+ca.crt" would reach psql as "my ca.crt")."""
    pairs = []
    for part in options.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _database_url(url: PgUrl) -> dict[str, str]:
    return {"DATABASE_URL": url.render("plain")}


EXPORTS: dict[str, Export] = {e.name: e for e in (
    Export("memgpt", "MemGPT's tests", (URL_VAR,), _memgpt),
    Export("letta", "the Letta server", ("LETTA_PG_URI",), _letta),
    Export("libpq", "psql and every libpq client", ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"), _libpq),
    Export("database-url", "12-factor apps", ("DATABASE_URL",), _database_url),
)}
DEFAULT: tuple[str, ...] = ("memgpt",)


def parse_names(text: str) -> tuple[str, ...]:
    """``"letta, libpq,letta"`` -> ``("letta", "libpq")``: comma-separated, spaces ignored, duplicates
    collapsed, order kept. ValueError (a few words, for settings' message) for an unknown or no name."""
    import difflib

    names = [part.strip().lower() for part in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no name in it")
    unknown = list(dict.fromkeys(n for n in names if n not in EXPORTS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], EXPORTS, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"no export named {', '.join(repr(n) for n in unknown)}{guess}")
    return tuple(dict.fromkeys(names))


def values(url: PgUrl, names: Iterable[str] = DEFAULT) -> dict[str, str]:
    """Every variable of the named exports, for ``url``, in the names' order."""
    out: dict[str, str] = {}
    for name in names:
        out.update(EXPORTS[name].values(url))
    return out


def described() -> str:
    """Every name with its variables, for --help: "memgpt (PGVECTOR_TEST_DB_URL), letta (LETTA_PG_URI), ..."."""
    return ", ".join(f"{e.name} ({', '.join(e.variables)})" for e in EXPORTS.values())
