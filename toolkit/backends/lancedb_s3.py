"""The LanceDB backend on an S3-compatible object store (room: backends/): ``s3://BUCKET/PREFIX``.

The store is lancedb.py's ``LanceStore``; this module says what is particular to an object store: its
SPEC, the storage options from settings (endpoint, region, keys), the test server `toolkit s3 up` starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit.backends import _kind, lancedb
from toolkit.backends.base import Spec
from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.backends.base import Prompt, Scratch, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "lancedb-s3"
TITLE = "LanceDB on S3"
MEMGPT_TYPE = lancedb.MEMGPT_TYPE
SCHEMES = ("s3",)
WORD = None
OWN_QUERY = False
EXAMPLE = "s3://BUCKET/PREFIX"
SERVER = "toolkit s3 up"
SERVICE = "s3"  # a helper server the toolkit runs (services/registry.py)
EXTRA = lancedb.EXTRA
FORMATS = lancedb.FORMATS
ALIASES = lancedb.ALIASES
DEFAULT_URI = "s3://toolkit/lancedb"  # the bucket `toolkit s3 up` creates

open_store = lancedb.open_store


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    from toolkit.urls import redact

    bucket = (rest or "").split("/", 1)[0]
    if not bucket:
        raise UsageError(f"no bucket in {redact(raw)!r}", hint="use s3://BUCKET/PREFIX")
    return Spec(NAME, "s3://" + (rest or "").rstrip("/"), options=storage_options(settings))


def storage_options(settings: Settings) -> dict[str, str]:
    """LanceDB/object_store storage options for s3:// URIs, from settings."""
    pairs = {
        "aws_endpoint": settings.s3_endpoint,
        "aws_region": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": settings.s3_secret_access_key,
        "allow_http": "true" if settings.s3_allow_http else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def default_spec(settings: Settings) -> Spec:
    from toolkit.backends.base import NotConfigured

    if not settings.s3_endpoint:
        raise NotConfigured("no S3 endpoint is configured", hint=f"start the test server with `{SERVER}`")
    uri = settings.lancedb_uri or ""
    uri = uri if uri.startswith("s3://") else DEFAULT_URI
    return parse(uri.removeprefix("s3://"), uri, settings)


def render(spec: Spec) -> str:
    return _kind.with_format(spec.location, spec)


def identity(spec: Spec) -> tuple[str, ...]:
    return (NAME, spec.location.rstrip("/"))


to_memgpt = lancedb.to_memgpt
from_memgpt = lancedb.from_memgpt


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    from toolkit import specs

    target = uri or path or settings.lancedb_uri or ""
    if not target.strip().startswith("s3://"):
        raise UsageError(f"{NAME} needs an s3:// URI{f', not {target!r}' if target else ''}",
                         hint="give --uri s3://BUCKET/PREFIX, or --backend lancedb for a directory")
    return specs.parse(target, settings)


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    if uri is not None or path is not None:
        return uri, path
    fallback = old.uri if old is not None and old.type == MEMGPT_TYPE and old.uri.startswith("s3://") else ""
    return prompt("Enter LanceDB S3 URI (s3://bucket/prefix)", default=fallback or DEFAULT_URI), None


def endpoint(location: StoreLocation) -> tuple[str, int] | None:
    from urllib.parse import urlsplit

    if not location.options.get("aws_endpoint"):
        return None  # the provider's own endpoint: not ours to look for
    parts = urlsplit(location.options["aws_endpoint"])
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


holds_nothing = _kind.not_known_empty
guarded = _kind.unguarded


def describe_data(spec: Spec) -> str:
    return "format not inspected on S3"


def scratch_spec(scratch: Scratch) -> Spec:
    """A prefix of the test's own in the bucket of the run's S3 server."""
    bucket = DEFAULT_URI.removeprefix("s3://").split("/")[0]
    rest = f"{bucket}/{scratch.table}"
    return parse(rest, "s3://" + rest, scratch.service(SERVICE))
