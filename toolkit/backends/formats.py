"""On-disk formats (room: backends/): which one to write when nothing on disk says so.

Each backend module owns its formats (``FORMATS``: name -> who reads it, empty for one format;
``ALIASES``: ``memgpt`` and ``current`` -> a name) and its detection. This module holds what is shared: the names ``memgpt`` (the
formats MemGPT 0.3.x's pinned clients read: chromadb 0.5, Lance legacy files) and ``current`` (today's
clients), and the default when a location holds no data yet: the MemGPT found in this environment or
named by its config file, else current. The format already on disk always comes first; the stores
apply that rule, since only they can read their disk.
"""

from __future__ import annotations

import configparser
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from toolkit import backends

MEMGPT = "memgpt"
CURRENT = "current"
AUTO = "auto"


@dataclass(frozen=True)
class Default:
    format: str  # memgpt | current
    why: str  # for status lines: "MemGPT 0.3.25 config at ~/.memgpt/config"


def default(setting: str, memgpt_config: Path) -> Default:
    """What ``auto`` means where nothing is on disk yet: ``setting`` is auto, memgpt or current."""
    if setting != AUTO:
        return Default(setting, f"TOOLKIT_ARCHIVAL_FORMAT={setting}")
    version = _installed("pymemgpt")
    if version and version.split(".")[0] == "0":
        return Default(MEMGPT, f"pymemgpt {version} is installed here")
    configured = _configured_version(memgpt_config)
    if configured is not None:
        return Default(MEMGPT, f"MemGPT {configured or '(version not stated)'} config at {memgpt_config}")
    return Default(CURRENT, "no MemGPT installed here or configured")


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _configured_version(path: Path) -> str | None:
    """MemGPT's config file names the version that wrote it (``[version] memgpt_version``); "" when it
    does not; None when there is no MemGPT 0.x config at all."""
    if not path.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return ""  # unreadable: still MemGPT's file; configure/smoke report the error itself
    version = parser.get("version", "memgpt_version", fallback="").strip()
    if version and not version.startswith("0."):
        return None  # a MemGPT/Letta 1.x+ wrote it: today's clients
    return version


def normalize(backend: str, text: str | None) -> str | None:
    """An explicit format for ``backend`` in the backend's own words (``memgpt`` -> ``0.5`` for chroma),
    None for auto; raises UsageError naming the choices."""
    from toolkit.errors import UsageError

    if text is None or text.strip().lower() in ("", AUTO):
        return None
    word = text.strip().lower()
    kind = backends.backend(backend)
    if not kind.FORMATS:
        if word in (MEMGPT, CURRENT):
            return None  # one format: any reader of MemGPT's reads it
        raise UsageError(f"the {backend} backend has one format; --format {text!r} does not apply",
                         hint="drop --format, or use auto, memgpt or current")
    if word in kind.ALIASES:
        return kind.ALIASES[word]
    if word in kind.FORMATS:
        return word
    choices = ", ".join([AUTO, *kind.ALIASES, *kind.FORMATS])
    raise UsageError(f"unknown {backend} format {text!r}", hint=f"choose one of {choices}")


def has_formats(backend: str) -> bool:
    """Does ``backend`` store data in more than one format (and so take ``--format``)?"""
    return bool(backends.backend(backend).FORMATS)
