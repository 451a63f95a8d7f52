"""The Chroma server the toolkit runs (room: services/): ``chroma run`` from the installed chromadb.

Data in ``settings.chroma_dir``; pid file and log in ``settings.state_dir``; readiness on
``/api/v2/heartbeat``. ``toolkit chroma up|down|status|logs`` are thin wrappers over this.
"""

from __future__ import annotations

import sys

from toolkit.services.background import BackgroundServer
from toolkit.settings import Settings

HEARTBEAT = "/api/v2/heartbeat"


def chroma_server(settings: Settings, *, host: str | None = None, port: int | None = None) -> BackgroundServer:
    host = host or settings.chroma_host
    port = port or settings.chroma_port
    # the chromadb console script is `chroma`; calling its app through this interpreter needs no PATH
    argv = (sys.executable, "-c", "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()",
            "run", "--path", str(settings.chroma_dir), "--host", host, "--port", str(port))
    return BackgroundServer(name="chroma", argv=argv, host=host, port=port, health_path=HEARTBEAT,
                            state_dir=settings.state_dir, marker="chromadb.cli.cli", start_hint="toolkit chroma up")
