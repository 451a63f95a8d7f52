"""A helper server's pid file, and whether the process it names is ours (room: services/).

The pid file (``<state_dir>/<name>.pid``, JSON, 0600) records the pid and where the server listens and
on which data. A pid counts as ours only when that process is alive, its command line holds the
service's marker, its working directory is this state dir and (when recorded) its ``--path`` is the
recorded one: a pid file copied from another checkout, or a recycled pid, never names someone else's
server. Light on purpose: settings ask it where the toolkit's server of this checkout runs, so that
server's port becomes the default (``TOOLKIT_CHROMA_PORT`` unset).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit import perms

# what names each service's server process in its command line
MARKERS = {"chroma": "chromadb.cli.cli", "s3": "moto.server"}


@dataclass(frozen=True)
class Record:
    """What a pid file says: the pid, and where the server listens and on which data. A plain-integer
    pid file (an older toolkit's) gives the pid only: the other fields are None."""

    pid: int
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fmt: str | None = None
    health_path: str | None = None

    @property
    def legacy(self) -> bool:
        return self.host is None or self.port is None


def path_of(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.pid"


def read(path: Path) -> Record | None:
    """The record in ``path``; None for none, or anything that is not one."""
    try:
        text = perms.read_bounded(path, 4096).strip()  # never through a symlink, never a FIFO
    except OSError:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, int) and not isinstance(data, bool):
        return Record(data) if data > 0 else None
    if not isinstance(data, dict):
        return None
    pid, port = data.get("pid"), data.get("port")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None

    def text_of(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    good_port = isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
    return Record(pid, text_of("host"), port if good_port else None, text_of("path"), text_of("format"),
                  text_of("health_path"))


def write(path: Path, record: Record) -> None:
    data = {"pid": record.pid, "host": record.host, "port": record.port, "path": record.path,
            "format": record.fmt, "health_path": record.health_path}
    perms.replace_private(path, json.dumps(data) + "\n")


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] if raw else None


def is_ours(record: Record, state_dir: Path, marker: str) -> bool:
    """Is the process ``record`` names a server this state dir started (see the module's docstring)?"""
    from toolkit import proc

    args = cmdline(record.pid)
    if args is None or marker not in " ".join(args) or not proc.pid_alive(record.pid):
        return False
    try:
        # the servers run in the state dir: a server of another checkout (its pid file copied here) does not
        if not os.path.samestat(os.stat(f"/proc/{record.pid}/cwd"), os.stat(state_dir)):
            return False
    except OSError:  # gone, or another user's
        return False
    if record.path is not None:
        given = args[args.index("--path") + 1] if "--path" in args[:-1] else None
        return given == record.path
    return True


def running(state_dir: Path, name: str) -> Record | None:
    """The record of the toolkit's live ``name`` server of this state dir, else None. Changes nothing."""
    record = read(path_of(state_dir, name))
    return record if record is not None and is_ours(record, state_dir, MARKERS[name]) else None
