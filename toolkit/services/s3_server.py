"""The S3-compatible test server the toolkit runs (room: services/): moto's server mode on 127.0.0.1.

For ``lancedb-s3`` without a cloud account: ``toolkit s3 up`` starts ``moto.server`` in the background
(pid file and log in the state dir), creates the bucket, and writes the endpoint into ``.env`` so every
command (smoke, migrate) reaches it through the usual settings; test keys only where ``.env`` has none
(moto accepts any keys, and a user's own keys are never overwritten). ``SERVICE`` describes it for
``toolkit s3 up|down|status|logs`` (``commands/servers.py``). Light at import: ``toolkit --help`` imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from toolkit.errors import NotReadyError
from toolkit.services.base import Option, Progress, Report, Service
from toolkit.services.pidfile import MARKERS
from toolkit.settings import Settings

if TYPE_CHECKING:
    from toolkit.services.background import BackgroundServer

DEFAULT_PORT = 9000
BUCKET = "toolkit"
REGION = "us-east-1"
TEST_KEY = "testing"  # moto accepts any keys; these only make clients sign requests
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def local_port(settings: Settings) -> int | None:
    """The port of TOOLKIT_S3_ENDPOINT when it names this machine (where the test server would listen)."""
    endpoint = urlsplit(settings.s3_endpoint or "")
    try:
        return endpoint.port if endpoint.hostname in ("127.0.0.1", "localhost") else None
    except ValueError:  # a port out of range: not one of ours
        return None


def chosen_address(settings: Settings) -> bool:
    """Did the user choose where the server listens: a TOOLKIT_S3_ENDPOINT on this machine that they set
    (in the environment or their .env), not one `toolkit s3 up` wrote?"""
    return local_port(settings) is not None and settings.user_chose("s3_endpoint")


def s3_server(settings: Settings, *, port: int | None = None, host: str = "127.0.0.1") -> BackgroundServer:
    """The server; its port is ``port``, else the one in a local TOOLKIT_S3_ENDPOINT, else 9000."""
    from toolkit.services.background import BackgroundServer

    if port is None:
        port = local_port(settings) or DEFAULT_PORT
    argv = (sys.executable, "-m", "moto.server", "-H", host, "-p", str(port))
    return BackgroundServer(name="s3", argv=argv, host=host, port=port, health_path="/moto-api/data.json",
                            state_dir=settings.state_dir, marker=MARKERS["s3"], start_hint="toolkit s3 up",
                            port_flag="-p")


def create_bucket(server: BackgroundServer, bucket: str = BUCKET) -> None:
    """PUT the bucket (moto needs no signature); an existing bucket is fine."""
    import urllib.error
    import urllib.request

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


def client_env(server: BackgroundServer) -> dict[str, str]:
    """The bucket created, and the settings that point LanceDB at it (a test run's server: ``Service.client_env``)."""
    create_bucket(server)
    return env_values(server)


def env_to_write(server: BackgroundServer, current: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """What `toolkit s3 up` writes into a .env holding ``current``, and the key variables it keeps: a key
    already set there stays (they may be the user's real keys, and moto takes any), a missing one gets
    the test value."""
    values = env_values(server)
    kept = [name for name in KEY_VARS if current.get(name) not in (None, "", TEST_KEY)]
    return {k: v for k, v in values.items() if k not in kept}, kept


def start(settings: Settings, *, port: int | None, timeout: float, progress: Progress | None,
          options: Mapping[str, Any]) -> Report:
    """`s3 up`: the server started and awaited, the bucket created, and (unless ``options["no_export"]``)
    its settings written into the .env, keeping the AWS keys already there."""
    from toolkit import envfile, extras, state
    from toolkit.settings import read_dotenv

    extras.require("s3", "toolkit s3 up")
    # the default port (none given; the .env's endpoint, when `s3 up` wrote it, is one): another one
    # when something holds it, and that one written into .env
    movable = port is None and not chosen_address(settings)
    server = s3_server(settings, port=port)
    status = server.up(timeout=timeout, movable=movable)
    server = server.on_port(urlsplit(status.url).port or server.port)
    create_bucket(server)
    changed = False
    kept: list[str] = []
    if not options.get("no_export"):
        current = read_dotenv(settings.env_file)
        values, kept = env_to_write(server, current)
        changed = bool(envfile.write(settings.env_file, values))
        if not (settings.user_chose("s3_endpoint") and current.get("TOOLKIT_S3_ENDPOINT") == server.url):
            # the endpoint is the toolkit's choice, not the user's: what answers there later must be ours
            state.record_exported(settings.state_dir, {"TOOLKIT_S3_ENDPOINT": server.url})
    name = settings.env_file.name
    notes = (f"bucket {BUCKET}",
             *((f"settings written to {name}",) if changed else ()),
             *((f"kept {' and '.join(kept)} already in {name}",) if kept else ()))
    return Report(status, {"bucket": BUCKET, "env_changed": changed, "env_kept": kept}, notes)


SERVICE = Service(
    name="s3",
    default_port=DEFAULT_PORT,
    port_default=f"the port of a local TOOLKIT_S3_ENDPOINT, else {DEFAULT_PORT} (a free port when taken)",
    help="""Run an S3-compatible test server (moto) on 127.0.0.1 for LanceDB on s3://.

`s3 up` creates the bucket `toolkit` and writes TOOLKIT_S3_ENDPOINT, TOOLKIT_S3_REGION,
TOOLKIT_S3_ALLOW_HTTP into .env, so smoke and migrate reach it, and test keys unless .env already
has AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (those are kept: moto accepts any keys).

\b
Example:
  toolkit s3 up && toolkit smoke --backend lancedb-s3
""",
    up_help="""Start the S3 test server, create the bucket, export its settings; idempotent.

AWS keys already in .env are kept; test keys are written only where there are none. Without --port
(and an endpoint you set): where the toolkit's server runs, else 9000, else a free port when
something else holds it. A port you give that something else holds is an error (exit 3). When the
toolkit's S3 server already runs on another port, this refuses (`toolkit s3 down` first).

\b
Examples:
  toolkit s3 up                                 # 127.0.0.1:9000, bucket toolkit, settings into .env
  toolkit s3 up --port 9001 --no-export --json  # leave .env alone; the endpoint for a script
""",
    down_help="Stop the S3 test server the toolkit started, on whichever port it runs (its data lives in memory "
              "and is gone).",
    status_help="""Is the S3 test server running? Exit 0 whether it runs or not ("running" in --json);
non-zero only when it cannot tell.

Without --port: the toolkit's server where it runs, else the .env's port or 9000 (a server this
checkout did not start there is named, not counted, unless you set that endpoint yourself). With
--port: that port (naming where the toolkit's server runs when that is elsewhere).
""",
    logs_help="The S3 test server log's tail (one log per checkout, whatever the port).",
    server=lambda settings, port: s3_server(settings, port=port),
    start=start,
    up_options=(Option("--no-export", "no_export", "Do not write the S3 settings into .env.", kind="flag"),),
    chosen=chosen_address,
    extra="s3",
    client_env=client_env,
)
