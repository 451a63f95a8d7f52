"""The usual answers to the ``Backend`` Protocol (room: backends/), for the modules that give them.

A backend module assigns what fits it (``endpoint = _kind.no_endpoint``), as pre-commit's languages take
``lang_base``'s defaults, and writes its own function where it differs. Also the SPEC pieces several
backends parse alike: a directory, a ``host:port``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.backends.base import Scratch, Spec, StoreLocation
    from toolkit.settings import Settings


def no_endpoint(location: StoreLocation) -> tuple[str, int] | None:
    """No server of its own to look for."""
    return None


def not_known_empty(spec: Spec) -> bool:
    """Only opening the store could tell (a server, a bucket)."""
    return False


def directory_missing(spec: Spec) -> bool:
    return not Path(spec.location).exists()


def unguarded(location: StoreLocation) -> StoreLocation:
    """Any client of today reads what the toolkit writes there."""
    return location


def one_format(spec: Spec) -> str:
    return "one format"


def path_identity(spec: Spec) -> tuple[str, ...]:
    return (spec.backend, os.path.realpath(spec.location))


def with_format(text: str, spec: Spec) -> str:
    """``text`` and the SPEC's explicit format: ``chroma:///p?format=0.5``."""
    return text + (f"?format={spec.format}" if spec.format else "")


def directory(rest: str, raw: str, settings: Settings) -> str:
    """The directory of a ``SCHEME://rest`` SPEC: absolute, ``~`` expanded, relative to the project."""
    if not rest or rest == "/":
        raise UsageError(f"no directory in {raw!r}", hint="use e.g. chroma:///abs/path or chroma://relative/path")
    path = Path(rest).expanduser()
    return str(path if path.is_absolute() else settings.project_dir / path)


def host_port(rest: str, raw: str, *, default_port: int) -> str:
    """``host:port`` of a ``SCHEME://rest`` SPEC; a missing port is ``default_port``."""
    hostport = rest.rstrip("/")
    if not hostport or "/" in hostport or "@" in hostport:
        raise UsageError(f"expected HOST:PORT in {raw!r}", hint="use chroma+http://127.0.0.1:8000")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"bad HOST:PORT {hostport!r} in {raw!r}", hint="use chroma+http://127.0.0.1:8000")
    return f"{host}:{int(port)}"


def scratch_directory(name: str) -> Callable[[Scratch], Spec]:
    """``scratch_spec`` of a backend that keeps its data in a directory: a directory of the test's own."""
    from toolkit.backends.base import Spec

    def scratch_spec(scratch: Scratch) -> Spec:
        return Spec(name, str(scratch.directory()))

    return scratch_spec
