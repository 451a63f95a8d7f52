"""What the last ``toolkit up`` of a state dir used: its engine, port, Docker names and database parameters,
and which of them it chose itself (a default, or a value of its own when the default was held by another).

``engines.select`` keeps to that engine (a Docker daemon that appears later never starts a second
database beside the data), and settings take the recorded values below flags, environment and ``.env``,
so ``env``, ``psql``, ``status``, ``down``, ``logs`` and ``smoke`` follow the server that ``toolkit up``
started, in any shell, however its settings were given.

The record may hold the application role's password (when it is not the default): the state dir already
holds the embedded superuser's, and the record is written 0600 in one step. ``.env``'s URL is not read
back instead: ``up --no-export`` writes none, and it is the user's file (edited, pointed elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from toolkit import perms
from toolkit.errors import ConfigError

RECORD = "engine"  # <state_dir>/engine: JSON; older toolkits wrote the engine's name alone
# values a record may hold besides engine and port (strings), and "chosen": the keys up chose itself
VALUES = ("user", "password", "database", "host", "container", "volume", "image")


def last_up(state_dir: Path) -> dict[str, Any]:
    """``{"engine": str, "port": int, <VALUES>: str, "chosen": [key]}`` as far as the record holds them;
    {} for no record or a damaged one."""
    try:  # bounded, never through a symlink, never blocking on a FIFO: every command reads it
        text = perms.read_bounded(state_dir / RECORD, 64 * 1024).strip()
    except OSError:
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
    for key in VALUES:
        if isinstance(data.get(key), str) and data[key]:
            record[key] = data[key]
    chosen = data.get("chosen")
    if isinstance(chosen, list):
        record["chosen"] = [key for key in chosen if isinstance(key, str) and key in record]
    return record


def check_recordable(state_dir: Path) -> None:
    """Before starting anything: the record can be written (a directory in its place cannot)."""
    path = state_dir / RECORD
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; the toolkit keeps a small record of its own there",
                          hint="move that directory away, then run the command again")


def record_up(state_dir: Path, engine: str, port: int, values: Mapping[str, str] | None = None,
              chosen: Iterable[str] = ()) -> None:
    """Record what ``up`` used; ``chosen``: the keys whose values were not given (a default, or chosen
    because the default was held), which a later ``up`` may choose again."""
    wanted: dict[str, Any] = {"engine": engine, "port": port}
    wanted.update({k: v for k, v in (values or {}).items() if k in VALUES and v})
    picked = sorted(k for k in set(chosen) if k in wanted)
    if picked:
        wanted["chosen"] = picked
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
    current = exported(state_dir)
    merged = {**current, **values}
    if merged != current:
        perms.replace_private(state_dir / EXPORTS, json.dumps(merged, sort_keys=True) + "\n")


STARTED_BY_TESTS = "started-by-tests"  # <state_dir>/started-by-tests: a test run started the server


def mark_started_by_tests(state_dir: Path) -> None:
    """A test run started the server: the last test process to leave stops it (toolkit.testing.server)."""
    perms.replace_private(state_dir / STARTED_BY_TESTS, "1\n")


def started_by_tests(state_dir: Path) -> bool:
    return (state_dir / STARTED_BY_TESTS).is_file()


def unmark_started_by_tests(state_dir: Path) -> None:
    """No test run stops the server: ``toolkit up`` by hand made it the user's, or it is stopped already."""
    path = state_dir / STARTED_BY_TESTS
    if path.is_file() or path.is_symlink():
        path.unlink(missing_ok=True)
