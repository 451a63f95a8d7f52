"""Store SPECs: the one-string names of an archival store that ``migrate`` and ``configure`` take.

    postgresql://USER:PASS@HOST:PORT/DB    Postgres+pgvector (also postgresql+pg8000://, postgresql+psycopg://)
    postgres                               the Postgres the toolkit provisioned (PGVECTOR_TEST_DB_URL)
    chroma:///ABS/PATH  chroma://REL/PATH  Chroma, persistent client on a directory
    chroma+http://HOST:PORT                Chroma server (HTTP client)
    lancedb:///ABS/PATH                    LanceDB in a directory
    s3://BUCKET/PREFIX                     LanceDB on an S3-compatible store (TOOLKIT_S3_* / AWS_* settings)
    local:///ABS/PATH                      local files (MemGPT's default ~/.memgpt/archival)
    parquet:///ABS/PATH/ARCHIVE.parquet    a portable archive file (migrate only: MemGPT cannot use it)
    chroma | chroma+http | lancedb | local the backend's default location from settings

Chroma and LanceDB SPECs take ``?format=F`` (``chroma:///path?format=0.5``, ``lancedb:///path?format=legacy``,
or ``memgpt`` / ``current``): the format new data is written in; without it, the one already there, else
the settings' default (``backends/formats.py``).

Each backend module parses its own SPECs and says what MemGPT calls it (``Backend`` in backends/base.py);
this module finds the module a SPEC names and applies what is common: ``?format=`` and the defaults.
"""

from __future__ import annotations

from dataclasses import replace

from toolkit import urls
from toolkit.backends import BACKENDS, backend, by_scheme, by_word, memgpt_types
from toolkit.backends.base import Spec
from toolkit.errors import UsageError
from toolkit.memgpt_config import ArchivalStorage
from toolkit.settings import Settings

__all__ = ["Spec", "from_choice", "from_memgpt", "grammar_hint", "parse", "to_memgpt", "with_defaults"]


def grammar_hint() -> str:
    return "use " + _or([b.EXAMPLE for b in BACKENDS.values()])


def _or(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


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
    kind = by_scheme(scheme)
    if kind is not None and kind.OWN_QUERY:  # a URL's query string is its own (libpq parameters)
        if "format" in keys:
            raise UsageError(f"?format= does not apply to {kind.TITLE} ({urls.redact(raw)!r})",
                             hint=f"the {kind.NAME} backend has one format; drop ?format=")
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
        named = by_word(scheme)
        if named is None:
            raise UsageError(f"not a store SPEC: {shown!r}", hint=grammar_hint())
        return named.parse(None, raw, settings)
    kind = by_scheme(scheme)
    if kind is None:
        raise UsageError(f"unknown store scheme {scheme + '://'!r} in {shown!r}", hint=grammar_hint())
    return kind.parse(rest, raw, settings)


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    """The SPEC of the store a MemGPT ``[archival_storage]`` section selects, read as MemGPT reads it."""
    kind = storage.type.strip().lower()
    if kind not in BACKENDS or BACKENDS[kind].MEMGPT_TYPE != kind:
        raise UsageError(f"MemGPT config has unknown archival storage type {storage.type!r}",
                         hint=f"expected {_or(memgpt_types())}; run `toolkit configure`")
    return with_defaults(BACKENDS[kind].from_memgpt(storage, settings), settings)


def from_choice(name: str, uri: str | None, path: str | None, settings: Settings) -> Spec:
    """The SPEC `configure --backend NAME --uri --path` selects; empty or missing values take MemGPT's /
    the toolkit's defaults."""
    spec = backend(name).from_choice((uri or "").strip(), (path or "").strip(), settings)
    return with_defaults(spec, settings)


def to_memgpt(spec: Spec) -> ArchivalStorage:
    """The ``[archival_storage]`` section that makes MemGPT use ``spec``."""
    return spec.kind.to_memgpt(spec)


def word_for(spec: Spec, settings: Settings) -> str:
    """``spec`` for people to type back: the redacted SPEC, unless redaction hid a password (the command
    would not work as printed) and the backend's bare word names that same store here (``postgres``: the
    provisioned database, read from PGVECTOR_TEST_DB_URL). A word for any other store would be read
    again where the command runs (another project, another TOOLKIT_LANCEDB_URI) and could name another."""
    shown, word = str(spec), spec.kind.WORD
    if word is None or shown == spec.render():
        return shown
    try:
        return word if parse(word, settings) == spec else shown
    except UsageError:
        return shown
