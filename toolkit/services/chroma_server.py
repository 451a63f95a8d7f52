"""The Chroma server the toolkit runs (room: services/): ``chroma run`` from the installed chromadb.

Data in ``state_dir/chroma-server`` (not ``settings.chroma_dir``: the persistent backend's); pid file
and log in ``settings.state_dir``; readiness on ``/api/v2/heartbeat``. ``toolkit chroma up|down|status|logs``
are thin wrappers over this.
"""

from __future__ import annotations

import sys
from pathlib import Path

from toolkit.services.background import BackgroundServer
from toolkit.settings import Settings

HEARTBEAT = "/api/v2/heartbeat"


def data_dir(settings: Settings) -> Path:
    """The server's own directory: never the persistent backend's (two writers on one sqlite file corrupt it)."""
    return settings.state_dir / "chroma-server"


def chroma_server(settings: Settings, *, host: str | None = None, port: int | None = None,
                  path: Path | None = None) -> BackgroundServer:
    host = host or settings.chroma_host
    port = port or settings.chroma_port
    # the chromadb console script is `chroma`; calling its app through this interpreter needs no PATH
    argv = (sys.executable, "-c", "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()",
            "run", "--path", str(path or data_dir(settings)), "--host", host, "--port", str(port))
    return BackgroundServer(name="chroma", argv=argv, host=host, port=port, health_path=HEARTBEAT,
                            state_dir=settings.state_dir, marker="chromadb.cli.cli", start_hint="toolkit chroma up")
