"""What the last ``toolkit up`` of a state dir used: its engine and port.

``engines.select`` keeps to that engine (a Docker daemon that appears later never starts a second
database beside the data), and settings take that port as the default, so ``env``, ``psql``,
``status`` and ``down`` follow the server that runs after ``toolkit up --port N``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit import perms
from toolkit.errors import ConfigError

RECORD = "engine"  # <state_dir>/engine: JSON; older toolkits wrote the engine's name alone


def last_up(state_dir: Path) -> dict[str, Any]:
    """``{"engine": str, "port": int}`` as far as the record holds them; {} for no record or a damaged one."""
    try:
        text = (state_dir / RECORD).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("{"):
        return {"engine": text} if text.isidentifier() else {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    record: dict[str, Any] = {}
    if isinstance(data.get("engine"), str):
        record["engine"] = data["engine"]
    port = data.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        record["port"] = port
    return record


def check_recordable(state_dir: Path) -> None:
    """Before starting anything: the record can be written (a directory in its place cannot)."""
    path = state_dir / RECORD
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; the toolkit keeps a small record of its own there",
                          hint="move that directory away, then run the command again")


def record_up(state_dir: Path, engine: str, port: int) -> None:
    wanted = {"engine": engine, "port": port}
    if last_up(state_dir) == wanted:
        return  # a warm `up` writes nothing
    path = state_dir / RECORD
    try:
        perms.replace_private(path, json.dumps(wanted) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot record the engine in {path}: {exc.strerror or exc}",
                          hint="remove what is there (the toolkit's own record), then run the command again") from None


def forget(state_dir: Path) -> None:
    path = state_dir / RECORD
    if path.is_dir() and not path.is_symlink():
        return  # not ours to delete; record_up says so
    path.unlink(missing_ok=True)


EXPORTS = "exported"  # <state_dir>/exported: JSON, the settings a toolkit command last wrote into .env


def exported(state_dir: Path) -> dict[str, str]:
    """The settings the toolkit wrote into .env (``toolkit s3 up``'s endpoint), by variable; {} for none.
    A .env value equal to one of them is the toolkit's choice, not the user's."""
    try:
        data = json.loads(perms.read_bounded(state_dir / EXPORTS, 64 * 1024))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def record_exported(state_dir: Path, values: dict[str, str]) -> None:
    """Remember ``values`` as written into .env by the toolkit (beside what it wrote before)."""
    merged = {**exported(state_dir), **values}
    if merged != exported(state_dir):
        perms.replace_private(state_dir / EXPORTS, json.dumps(merged, sort_keys=True) + "\n")
