"""The helper servers the toolkit runs (room: services/), by name: one line per service.

Each service module exports one ``Service`` (``services/base.py``); ``commands/servers.py`` builds one
command group per entry. Light at import, like the modules it names.
"""

from __future__ import annotations

from toolkit.services import chroma_server, s3_server
from toolkit.services.base import Service

SERVICES: dict[str, Service] = {
    "chroma": chroma_server.SERVICE,
    "s3": s3_server.SERVICE,
}
