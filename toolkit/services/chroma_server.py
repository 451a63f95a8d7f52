"""The Chroma server the toolkit runs (room: services/): ``chroma run`` from the chromadb of a format.

Format ``1``: the chromadb imported here. Format ``0.5`` (``0.4``): chromadb 0.5 (0.4) from its isolated
environment (``backends/compat``): the server MemGPT 0.3.x's ``HttpClient`` talks to. Readiness on
``/api/v2/heartbeat``, which chromadb 1.x and 0.5.23 both serve (1.x refuses every ``/api/v1`` path);
0.4 has only ``/api/v1/heartbeat``. Data in ``state_dir/chroma-server`` (``-0.5`` for the
older formats: the two cannot share a directory; never ``settings.chroma_dir``, the persistent
backend's); pid file and log in ``settings.state_dir``. ``SERVICE`` describes it for
``toolkit chroma up|down|status|logs`` (``commands/servers.py``). Light at import: ``toolkit --help``
imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.services.base import Option, Progress, Report, Service
from toolkit.services.pidfile import MARKERS
from toolkit.settings import Settings

if TYPE_CHECKING:
    from toolkit.services.background import BackgroundServer, ServiceStatus

DEFAULT_PORT = 8000  # settings' chroma_port default (TOOLKIT_CHROMA_PORT, else where ours runs)
HEARTBEAT = {"1": "/api/v2/heartbeat", "0.5": "/api/v2/heartbeat", "0.4": "/api/v1/heartbeat"}
_RUN = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()"


def data_dir(settings: Settings, fmt: str = "1") -> Path:
    """The server's own directory: never the persistent backend's (two writers on one sqlite file corrupt it)."""
    return settings.state_dir / ("chroma-server" if fmt == "1" else f"chroma-server-{fmt}")


def format_to_serve(settings: Settings, wanted: str | None, path: Path | None) -> str:
    """The format to serve: ``wanted`` (in chroma's words), else what the data directory holds, else the
    settings' default (memgpt: 0.5)."""
    from toolkit.backends import chroma, formats

    if wanted:
        return wanted
    default = chroma.ALIASES[formats.default(settings.archival_format, settings.memgpt_config_path).format]
    found = chroma.detect_format(path or data_dir(settings, default))
    return found if found in chroma.FORMATS else default


def chroma_server(settings: Settings, *, host: str | None = None, port: int | None = None,
                  path: Path | None = None, fmt: str = "1",
                  progress: Callable[[str], None] | None = None) -> BackgroundServer:
    """The server of format ``fmt``, provisioning the older client's environment it runs in when needed.
    ``down``/``status``/``logs`` need no format: the pid file records where (host, port, data path) and
    in which format the toolkit's server runs, and they follow it."""
    from toolkit.services.background import BackgroundServer

    host = host if host is not None else settings.chroma_host
    port = port if port is not None else settings.chroma_port
    python = sys.executable
    if fmt != "1":
        from toolkit.backends.compat import envs

        python = str(envs.python(envs.CHROMA[fmt], settings.clients_path, progress=progress))
    # the chromadb console script is `chroma`; calling its app through this interpreter needs no PATH
    data = str(path if path is not None else data_dir(settings, fmt))
    argv = (python, "-c", _RUN, "run", "--path", data, "--host", host, "--port", str(port))
    return BackgroundServer(name="chroma", argv=argv, host=host, port=port, health_path=HEARTBEAT[fmt],
                            state_dir=settings.state_dir, marker=MARKERS["chroma"], start_hint="toolkit chroma up",
                            data_path=data, fmt=fmt)


def start(settings: Settings, *, port: int | None, timeout: float, progress: Progress | None,
          options: Mapping[str, Any]) -> Report:
    """`chroma up`: the format to serve (``options["fmt"]``, else what the data holds, else the default),
    refused when a server of another format already answers on the port (ours or not: its clients would
    get the wrong format), then the server started and awaited."""
    from toolkit import extras
    from toolkit.backends import formats
    from toolkit.backends.chroma import describe, server_format
    from toolkit.errors import UsageError

    extras.require("chroma", "toolkit chroma up")  # chromadb 1.x serves, uv builds the older ones' environment
    where = Path(options["path"]).absolute() if options.get("path") else None
    chosen = format_to_serve(settings, formats.normalize("chroma", options.get("fmt")), where)
    # the default port (none given, no server of ours running): another one when something holds it
    movable = port is None and not chosen_address(settings)
    at = port if port is not None else settings.chroma_port
    # before the server (and the older client's environment it may build): refusing needs only the port
    running = server_format(settings.chroma_host, at) if not movable or "chroma_port" in settings.sources else None
    if running is not None and running != chosen:
        raise UsageError(f"a Chroma server of {describe(running)} already answers on port {at}, "
                         f"not format {chosen}",
                         hint="stop it with `toolkit chroma down`, or choose another --port")
    server = chroma_server(settings, port=port, path=where, fmt=chosen, progress=progress)
    state = server.up(timeout=timeout, movable=movable)
    data = server.data_path
    return Report(state, {"path": data, "format": chosen}, (describe(chosen), f"data in {data}"))


def chosen_address(settings: Settings) -> bool:
    """Did the user choose where the server listens (TOOLKIT_CHROMA_HOST / TOOLKIT_CHROMA_PORT)?"""
    return settings.user_chose("chroma_port", "chroma_host")


def describe_status(server: BackgroundServer, state: ServiceStatus) -> Report:
    """A status with the format of the server that answers (None when none does)."""
    from urllib.parse import urlsplit

    from toolkit.backends.chroma import describe, server_format

    where = urlsplit(state.url)
    running = server_format(where.hostname or server.host, where.port or server.port) if state.running else None
    return Report(state, {"format": running}, (describe(running),) if running else ())


SERVICE = Service(
    name="chroma",
    default_port=DEFAULT_PORT,
    port_default=f"TOOLKIT_CHROMA_PORT, else where the toolkit's server runs, else {DEFAULT_PORT} (a free port when taken)",
    help="""Run a Chroma server (`chroma run`) in the background, in the format its clients read.

\b
--format 0.5 (or memgpt) runs chromadb 0.5 from an isolated environment built on first use: the
server MemGPT 0.3.x's HttpClient talks to. --format 1 (or current) runs the chromadb installed here.
Data in ./.toolkit/chroma-server (-0.5 for 0.5; or --path); pid file and log in ./.toolkit.
One server per checkout: smoke, status, down and logs follow it to the port and data it was started
on; up refuses another port or --path while it runs (`toolkit chroma down` first). A server this
checkout did not start is never used at the default port: when something holds 8000, up starts
ours on a free port and says so; a port you give (--port, TOOLKIT_CHROMA_PORT) that something else
holds is an error (exit 3).
Example:
  toolkit chroma up --port 8001 && toolkit smoke --backend chroma-http
  toolkit chroma up --format memgpt     # for MemGPT 0.3.x (archival_storage uri 127.0.0.1:8000)
""",
    up_help="""Start the Chroma server and wait on its heartbeat; idempotent.

Without --port (and TOOLKIT_CHROMA_PORT): where the toolkit's server runs, else 8000, else a free
port when something else holds 8000. When the toolkit's server already runs on another port or
data path, this refuses (stop it with `toolkit chroma down` first); when it fails, only the process
it started is stopped.

\b
Examples:
  toolkit chroma up                  # where ours runs, else 8000 (a free port if 8000 is not ours)
  toolkit chroma up --format memgpt  # chromadb 0.5: what MemGPT 0.3.x's HttpClient talks to
  toolkit chroma up --port 8001 --path /srv/chroma --json
""",
    down_help="Stop the Chroma server the toolkit started in this checkout, on whichever port it runs (data kept).",
    status_help="""Is the Chroma server running, and of which format? Exit 0 whether it runs or not
("running" in --json); non-zero only when it cannot tell.

Without --port: the toolkit's server where it runs (a server this checkout did not start at the
default port is named, not counted). With --port: that port (naming where the toolkit's server
runs when that is elsewhere).
""",
    logs_help="The Chroma server log's tail (one log per checkout, whatever the port).",
    server=lambda settings, port: chroma_server(settings, port=port),
    start=start,
    up_options=(
        Option("--path", "path", "Data directory [default: ./.toolkit/chroma-server].", kind="dir"),
        Option("--format", "fmt", "memgpt (= 0.5: chromadb 0.5, what MemGPT 0.3.x reads), current (= 1), 0.4, "
                                  "0.5 or 1 [default: what --path holds, else memgpt when MemGPT is installed or "
                                  "configured, else current].", metavar="FORMAT"),
    ),
    describe=describe_status,
    chosen=chosen_address,
    extra="chroma",
    client_env=lambda server: {"TOOLKIT_CHROMA_HOST": server.host, "TOOLKIT_CHROMA_PORT": str(server.port)},
)
