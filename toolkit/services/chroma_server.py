"""The Chroma server the toolkit runs (room: services/): ``chroma run`` from the chromadb of a format.

Format ``1``: the chromadb imported here. Format ``0.5`` (``0.4``): chromadb 0.5 (0.4) from its isolated
environment (``backends/compat``): the server MemGPT 0.3.x's ``HttpClient`` talks to. Readiness on
``/api/v2/heartbeat``, which chromadb 1.x and 0.5.23 both serve (1.x refuses every ``/api/v1`` path);
0.4 has only ``/api/v1/heartbeat``. Data in ``state_dir/chroma-server`` (``-0.5`` for the
older formats: the two cannot share a directory; never ``settings.chroma_dir``, the persistent
backend's); pid file and log in ``settings.state_dir``. ``toolkit chroma up|down|status|logs`` are thin
wrappers over this.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from toolkit.services.background import BackgroundServer
from toolkit.settings import Settings

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
    host = host or settings.chroma_host
    port = port or settings.chroma_port
    python = sys.executable
    if fmt != "1":
        from toolkit.backends.compat import envs

        python = str(envs.python(envs.CHROMA[fmt], settings.clients_path, progress=progress))
    # the chromadb console script is `chroma`; calling its app through this interpreter needs no PATH
    data = str(path or data_dir(settings, fmt))
    argv = (python, "-c", _RUN, "run", "--path", data, "--host", host, "--port", str(port))
    return BackgroundServer(name="chroma", argv=argv, host=host, port=port, health_path=HEARTBEAT[fmt],
                            state_dir=settings.state_dir, marker="chromadb.cli.cli", start_hint="toolkit chroma up",
                            data_path=data, fmt=fmt)
