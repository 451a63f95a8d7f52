"""The S3-compatible test server the toolkit runs (room: services/): moto's server mode on 127.0.0.1.

For ``lancedb-s3`` without a cloud account: ``toolkit s3 up`` starts ``moto.server`` in the background
(pid file and log in the state dir), creates the bucket, and writes the endpoint into ``.env`` so every
command (smoke, migrate) reaches it through the usual settings; test keys only where ``.env`` has none
(moto accepts any keys, and a user's own keys are never overwritten).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from toolkit.errors import NotReadyError
from toolkit.services.background import BackgroundServer
from toolkit.settings import Settings

DEFAULT_PORT = 9000
BUCKET = "toolkit"
REGION = "us-east-1"
TEST_KEY = "testing"  # moto accepts any keys; these only make clients sign requests
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def s3_server(settings: Settings, *, port: int | None = None, host: str = "127.0.0.1") -> BackgroundServer:
    """The server; its port is ``port``, else the one in a local TOOLKIT_S3_ENDPOINT, else 9000."""
    if port is None:
        endpoint = urlsplit(settings.s3_endpoint or "")
        local = endpoint.hostname in ("127.0.0.1", "localhost")
        port = endpoint.port if local and endpoint.port else DEFAULT_PORT
    argv = (sys.executable, "-m", "moto.server", "-H", host, "-p", str(port))
    return BackgroundServer(name="s3", argv=argv, host=host, port=port, health_path="/moto-api/data.json",
                            state_dir=settings.state_dir, marker="moto.server", start_hint="toolkit s3 up")


def create_bucket(server: BackgroundServer, bucket: str = BUCKET) -> None:
    """PUT the bucket (moto needs no signature); an existing bucket is fine."""
    request = urllib.request.Request(f"{server.url}/{bucket}", method="PUT", data=b"")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # BucketAlreadyOwnedByYou
            raise NotReadyError(f"cannot create bucket {bucket!r} on {server.url}: HTTP {exc.code}") from None


def env_values(server: BackgroundServer) -> dict[str, str]:
    """The settings that point LanceDB at this server, test keys included (`s3 up` writes them through
    ``env_to_write``, which keeps a .env's own keys)."""
    return {"TOOLKIT_S3_ENDPOINT": server.url, "TOOLKIT_S3_REGION": REGION, "TOOLKIT_S3_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_KEY}


def env_to_write(server: BackgroundServer, current: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """What `toolkit s3 up` writes into a .env holding ``current``, and the key variables it keeps: a key
    already set there stays (they may be the user's real keys, and moto takes any), a missing one gets
    the test value."""
    values = env_values(server)
    kept = [name for name in KEY_VARS if current.get(name) not in (None, "", TEST_KEY)]
    return {k: v for k, v in values.items() if k not in kept}, kept
