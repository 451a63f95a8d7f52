"""Connection URLs: build, parse, convert between drivers (pg8000 / psycopg / plain), redact."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urlsplit

from toolkit.errors import UsageError

# SQLAlchemy-style driver suffixes we accept on input
_SCHEMES = {
    "postgresql": "plain",
    "postgres": "plain",
    "postgresql+pg8000": "pg8000",
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg2": "psycopg",
}
# the password runs to the last "@" before whitespace (an unencoded "@", "/", "#" or "?" in it stays hidden),
# but not into the next URL of the same line
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]+:)((?:(?!://)\S)*)(@)")
_ENCODE_HINT = "percent-encode it: / as %2F, # as %23, ? as %3F, @ as %40 (and % as %25)"
_PASSWORD_KV = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")
# SQL in server logs: CREATE/ALTER ROLE ... PASSWORD 'secret' ('' escapes a quote), or E'se\\cret' as libpq
# quotes a literal holding a backslash (there \' escapes a quote too: taking it as one only hides more)
_PASSWORD_SQL = re.compile(r"(?i)(password\s+)(E?'(?:[^'\\]|''|\\.)*'?)")


@dataclass(frozen=True)
class PgUrl:
    user: str
    password: str
    host: str
    port: int
    database: str
    # libpq connection parameters from the URL's query (sslmode=verify-full, connect_timeout, ...)
    options: str = ""

    def render(self, driver: str = "pg8000", *, password: bool = True) -> str:
        """``pg8000`` (MemGPT's tests), ``psycopg`` (SQLAlchemy + psycopg 3) or ``plain`` (libpq, psql).

        libpq parameters are kept for libpq and psycopg; pg8000 does not take them (its TLS is set in
        code), so its URL goes without. ``password=False``: without it (for a client that takes it from
        PGPASSWORD, not from argv where ``ps`` shows it)."""
        scheme = {"pg8000": "postgresql+pg8000", "psycopg": "postgresql+psycopg", "plain": "postgresql"}[driver]
        auth = quote(self.user, safe="")
        if self.password and password:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{self.options}" if self.options and driver != "pg8000" else ""
        return f"{scheme}://{auth}@{host}:{self.port}/{quote(self.database, safe='')}{query}"

    def with_address(self, host: str | None = None, port: int | None = None) -> PgUrl:
        """The same role and database at another host or port (where this process connects)."""
        return replace(self, host=host or self.host, port=port or self.port)

    @property
    def libpq(self) -> str:
        return self.render("plain")

    def redacted(self, driver: str = "pg8000") -> str:
        return redact(self.render(driver))


def parse(url: str) -> PgUrl:
    """Parse any accepted Postgres URL; raise UsageError naming what is wrong."""
    _check_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid database URL {redact(url)!r}: {redact(str(exc))}",
                         hint="use postgresql+pg8000://USER:PASSWORD@HOST:PORT/DATABASE, special characters "
                              "in the password percent-encoded") from None
    if parts.scheme not in _SCHEMES:
        raise UsageError(f"unsupported URL scheme {parts.scheme!r} in {redact(url)!r}",
                         hint="use postgresql://, postgresql+pg8000:// or postgresql+psycopg://")
    if not parts.hostname or not parts.username or not parts.path.strip("/"):
        raise UsageError(f"incomplete database URL {redact(url)!r}",
                         hint="it needs a user, a host and a database: postgresql+pg8000://USER:PASSWORD@HOST:PORT/DB")
    return PgUrl(
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        host=parts.hostname,
        port=port or 5432,
        database=unquote(parts.path.lstrip("/")),
        options=parts.query,
    )


def _check_credentials(url: str) -> None:
    """Refuse a password holding an unencoded "/", "?", "#" or "@": the URL then splits inside the password
    (its start read as the port, the rest as the path or the host), and an error quoting any part of it
    would show the password. The message shows only the user and what follows the last "@"."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or "@" not in rest:
        return
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if "@" not in after and authority.count("@") <= 1:
        return
    user = rest.split(":", 1)[0].split("@", 1)[0].split("/", 1)[0]
    shown = f"{scheme}://{user}:***@{rest.rsplit('@', 1)[1]}"
    raise UsageError(f"the password in database URL {shown!r} holds an unencoded '/', '?', '#' or '@'",
                     hint=_ENCODE_HINT)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Hide passwords in URLs, ``password=...`` pairs, and any extra secret strings given."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    text = _PASSWORD_KV.sub(r"\1***", text)
    text = _PASSWORD_SQL.sub(r"\1'***'", text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text
