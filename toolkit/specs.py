"""Store SPECs: the one-string names of an archival store that ``migrate`` and ``configure`` take.

    postgresql://USER:PASS@HOST:PORT/DB    Postgres+pgvector (also postgresql+pg8000://, postgresql+psycopg://)
    postgres                               the Postgres the toolkit provisioned (PGVECTOR_TEST_DB_URL)
    chroma:///ABS/PATH  chroma://REL/PATH  Chroma, persistent client on a directory
    chroma+http://HOST:PORT                Chroma server (HTTP client)
    lancedb:///ABS/PATH                    LanceDB in a directory
    s3://BUCKET/PREFIX                     LanceDB on an S3-compatible store (TOOLKIT_S3_* / AWS_* settings)
    local:///ABS/PATH                      local files (MemGPT's default ~/.memgpt/archival)
    chroma | chroma+http | lancedb | local the backend's default location from settings

Chroma and LanceDB SPECs take ``?format=F`` (``chroma:///path?format=0.5``, ``lancedb:///path?format=legacy``,
or ``memgpt`` / ``current``): the format new data is written in; without it, the one already there, else
the settings' default (``backends/formats.py``).

Also the mapping between a SPEC and MemGPT's ``[archival_storage]`` section (type/path/uri).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit import urls
from toolkit.backends import DEFAULT_TABLE, StoreLocation
from toolkit.errors import UsageError
from toolkit.memgpt_config import ArchivalStorage
from toolkit.settings import Settings, read_dotenv

URL_ENV = "PGVECTOR_TEST_DB_URL"
GRAMMAR_HINT = ("use a Postgres URL (postgresql://...), chroma:///PATH, chroma+http://HOST:PORT, "
                "lancedb:///PATH, s3://BUCKET/PREFIX or local:///PATH")


@dataclass(frozen=True)
class Spec:
    """A parsed SPEC: which backend, and where (a directory, a libpq URL, ``host:port`` or an s3:// URI)."""

    backend: str  # local, postgres, chroma, chroma-http, lancedb, lancedb-s3
    location: str
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    format: str | None = None  # explicit, in the backend's words; None: on disk, else default_format
    default_format: str = field(default="current", compare=False)
    clients_dir: str | None = field(default=None, compare=False)

    def store(self, table: str = DEFAULT_TABLE, *, snapshot: bool = False) -> StoreLocation:
        """Where ``table`` lives in this store, for ``toolkit.backends.open_store``; ``snapshot``: read a
        private copy, leaving the directory itself untouched (a migration's source)."""
        return StoreLocation(self.backend, self.location, table, dict(self.options), format=self.format,
                             default_format=self.default_format, snapshot=snapshot, clients_dir=self.clients_dir)

    def with_format(self, text: str | None) -> Spec:
        """This SPEC writing ``text`` (``memgpt``, ``current``, ``0.5``, ``legacy``...); None keeps it."""
        from toolkit.backends import formats

        return self if text is None else replace(self, format=formats.normalize(self.backend, text))

    def __str__(self) -> str:
        """The canonical SPEC, passwords redacted: safe to print."""
        return urls.redact(self.render())

    def render(self) -> str:
        """The canonical SPEC with credentials: what `toolkit migrate` accepts back."""
        if self.backend == "postgres":
            return urls.parse(self.location).render("pg8000")
        scheme = {"local": "local://", "chroma": "chroma://", "chroma-http": "chroma+http://",
                  "lancedb": "lancedb://", "lancedb-s3": ""}[self.backend]
        return scheme + self.location + (f"?format={self.format}" if self.format else "")

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes two SPECs the same store (modulo the table name)."""
        if self.backend == "postgres":
            url = urls.parse(self.location)
            host = "127.0.0.1" if url.host in ("localhost", "::1") else url.host
            return ("postgres", host, str(url.port), url.database)
        if self.backend in ("local", "chroma", "lancedb"):
            return (self.backend, os.path.realpath(self.location))
        if self.backend == "chroma-http":
            host, port = self.location.rsplit(":", 1)
            return (self.backend, "127.0.0.1" if host == "localhost" else host, port)
        return (self.backend, self.location.rstrip("/"))


def provisioned_url(settings: Settings) -> str:
    """The URL `toolkit up` exported: environment, then the project's .env, then the settings' defaults."""
    url = os.environ.get(URL_ENV) or read_dotenv(settings.env_file).get(URL_ENV)
    return url or settings.db.url().render("pg8000")


def _provisioned(settings: Settings) -> Spec:
    url = provisioned_url(settings)
    if "://" not in url:  # PGVECTOR_TEST_DB_URL=postgres would name itself
        raise UsageError(f"{URL_ENV} is {urls.redact(url)!r}, not a Postgres URL",
                         hint="run `toolkit up` to write it, or give the URL in --from/--to")
    return parse(url, settings)


def default_local_dir() -> Path:
    return Path.home() / ".memgpt" / "archival"


def default_chroma_dir() -> Path:
    return Path.home() / ".memgpt" / "chroma"  # MemGPT's default archival_storage_path


def parse(text: str, settings: Settings) -> Spec:
    """Parse a SPEC; a bad one raises UsageError naming the grammar."""
    raw, wanted = _split_format(text.strip())
    return with_defaults(_parse(raw, settings), settings, wanted)


def with_defaults(spec: Spec, settings: Settings, wanted: str | None = None) -> Spec:
    """``spec`` with the settings' format default and clients directory, and ``wanted`` as its format."""
    from toolkit.backends import formats

    if not formats.has_formats(spec.backend):
        if wanted is not None:
            raise UsageError(f"?format= does not apply to {spec.backend} stores ({spec})",
                             hint="only chroma and lancedb SPECs take ?format=")
        return spec
    default = formats.default(settings.archival_format, settings.memgpt_config_path)
    return replace(spec, format=formats.normalize(spec.backend, wanted), default_format=default.format,
                   clients_dir=str(settings.clients_path))


def _split_format(raw: str) -> tuple[str, str | None]:
    """``chroma:///p?format=0.5`` -> (``chroma:///p``, ``0.5``). Postgres URLs keep their own query string."""
    from urllib.parse import parse_qsl

    scheme = raw.partition("://")[0].lower()
    if "?" not in raw:
        return raw, None
    base, _, query = raw.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [key for key, _ in pairs]
    if scheme.startswith("postgres"):  # libpq parameters stay in the URL; format is not one of them
        if "format" in keys:
            raise UsageError(f"?format= does not apply to Postgres ({urls.redact(raw)!r})",
                             hint="the postgres backend has one format; drop ?format=")
        return raw, None
    if keys != ["format"]:
        unknown = sorted(set(keys) - {"format"})
        raise UsageError(f"{'unknown SPEC parameter(s) ' + str(unknown) if unknown else 'more than one ?format='} "
                         f"in {urls.redact(raw)!r}", hint="the one parameter is ?format=, e.g. chroma:///path?format=0.5")
    return base, pairs[0][1]


def _parse(raw: str, settings: Settings) -> Spec:
    shown = urls.redact(raw)
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        defaults = {
            "postgres": lambda: _provisioned(settings),
            "chroma": lambda: Spec("chroma", str(settings.chroma_dir)),
            "chroma+http": lambda: Spec("chroma-http", f"{settings.chroma_host}:{settings.chroma_port}"),
            "lancedb": lambda: parse(_lancedb_spec(settings.lancedb_location), settings),
            "local": lambda: Spec("local", str(default_local_dir())),
        }
        if scheme in defaults:
            return defaults[scheme]()
        raise UsageError(f"not a store SPEC: {shown!r}", hint=GRAMMAR_HINT)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return Spec("postgres", urls.parse(raw).libpq)
    if scheme in ("chroma", "lancedb", "local"):
        return Spec(scheme, _directory(rest, raw, settings))
    if scheme == "chroma+http":
        return Spec("chroma-http", _host_port(rest, raw, default_port=settings.chroma_port))
    if scheme == "s3":
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise UsageError(f"no bucket in {shown!r}", hint="use s3://BUCKET/PREFIX")
        return Spec("lancedb-s3", "s3://" + rest.rstrip("/"), options=s3_options(settings))
    raise UsageError(f"unknown store scheme {scheme + '://'!r} in {shown!r}", hint=GRAMMAR_HINT)


def _directory(rest: str, raw: str, settings: Settings) -> str:
    if not rest or rest == "/":
        raise UsageError(f"no directory in {raw!r}", hint="use e.g. chroma:///abs/path or chroma://relative/path")
    path = Path(rest).expanduser()
    return str(path if path.is_absolute() else settings.project_dir / path)


def _host_port(rest: str, raw: str, *, default_port: int) -> str:
    hostport = rest.rstrip("/")
    if not hostport or "/" in hostport or "@" in hostport:
        raise UsageError(f"expected HOST:PORT in {raw!r}", hint="use chroma+http://127.0.0.1:8000")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"bad HOST:PORT {hostport!r} in {raw!r}", hint="use chroma+http://127.0.0.1:8000")
    return f"{host}:{int(port)}"


def _lancedb_spec(uri: str) -> str:
    return uri if uri.startswith("s3://") else "lancedb://" + uri


def s3_options(settings: Settings) -> dict[str, str]:
    """LanceDB/object_store storage options for s3:// URIs, from settings."""
    pairs = {
        "aws_endpoint": settings.s3_endpoint,
        "aws_region": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": settings.s3_secret_access_key,
        "allow_http": "true" if settings.s3_allow_http else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    """The SPEC of the store a MemGPT ``[archival_storage]`` section selects, read as MemGPT reads it."""
    return with_defaults(_from_memgpt(storage, settings), settings)


def _from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    kind = storage.type.strip().lower()
    if kind == "postgres":
        if not storage.uri:
            raise UsageError("MemGPT config selects postgres but has no uri", hint="run `toolkit configure`")
        return parse(storage.uri, settings)
    if kind == "chroma":
        if storage.path:  # MemGPT picks the persistent client whenever path is set
            return Spec("chroma", _directory(storage.path, storage.path, settings))
        if storage.uri:
            return Spec("chroma-http", _host_port(storage.uri, storage.uri, default_port=settings.chroma_port))
        return Spec("chroma", str(default_chroma_dir()))
    if kind == "lancedb":
        return parse(_lancedb_spec(storage.uri or "./.lancedb"), settings)
    if kind == "local":
        return Spec("local", _directory(storage.path, storage.path, settings) if storage.path
                    else str(default_local_dir()))
    raise UsageError(f"MemGPT config has unknown archival storage type {storage.type!r}",
                     hint="expected local, postgres, chroma or lancedb; run `toolkit configure`")


def to_memgpt(spec: Spec) -> ArchivalStorage:
    """The ``[archival_storage]`` section that makes MemGPT use ``spec``."""
    if spec.backend == "postgres":
        return ArchivalStorage("postgres", "", urls.parse(spec.location).render("pg8000"))
    if spec.backend == "chroma":
        return ArchivalStorage("chroma", spec.location, "")
    if spec.backend == "chroma-http":
        return ArchivalStorage("chroma", "", spec.location)  # path must be empty, or MemGPT goes persistent
    if spec.backend in ("lancedb", "lancedb-s3"):
        return ArchivalStorage("lancedb", "", spec.location)
    return ArchivalStorage("local", spec.location, "")
