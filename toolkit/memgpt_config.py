"""MemGPT's config file (INI, ``~/.memgpt/config``): read and rewrite its ``[archival_storage]`` section.

configparser would reformat the whole file on write, so writing is a line-level edit of that one
section: every other section, key, comment and blank line stays byte for byte. The write is atomic
(temp file + rename, same mode) and the previous file is kept as a timestamped backup beside it.

MemGPT reads ``type``, ``path`` and ``uri``; a key that is absent falls back to MemGPT's default, and
its default ``path`` is ``~/.memgpt/chroma``, which makes Chroma pick the persistent client over the
HTTP one. So we always write all three keys, an unused one as an empty value.
"""

from __future__ import annotations

import configparser
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from toolkit.errors import ConfigError

SECTION = "archival_storage"
KEYS = ("type", "path", "uri")

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")
_KEY = re.compile(r"^(?P<key>[^=:\s][^=:]*?)\s*[=:]")


@dataclass(frozen=True)
class ArchivalStorage:
    """The three keys of ``[archival_storage]``; "" means written but empty (unused)."""

    type: str
    path: str = ""
    uri: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "path": self.path, "uri": self.uri}


def read(config_path: Path) -> ArchivalStorage | None:
    """The ``[archival_storage]`` section, or None when the file or the section is missing."""
    if not config_path.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(config_path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read MemGPT config {config_path}: {exc}".splitlines()[0],
                          hint="fix the file or point MEMGPT_CONFIG_PATH elsewhere") from None
    if not parser.has_section(SECTION) or not parser.has_option(SECTION, "type"):
        return None
    section = parser[SECTION]
    return ArchivalStorage(section.get("type", "").strip(), section.get("path", "").strip(),
                           section.get("uri", "").strip())


def render(original: str, storage: ArchivalStorage) -> str:
    """``original`` with only the ``[archival_storage]`` keys type/path/uri set to ``storage``."""
    newline = "\r\n" if "\r\n" in original else "\n"
    lines = original.splitlines(keepends=True)
    values = storage.as_dict()

    start = next((i for i, line in enumerate(lines)
                  if (m := _HEADER.match(line)) and m["name"].strip() == SECTION), None)
    if start is None:
        text = original
        if text and not text.endswith(("\n", "\r")):
            text += newline
        if text.strip():
            text += newline
        return text + f"[{SECTION}]{newline}" + "".join(f"{k} = {values[k]}{newline}" for k in KEYS)

    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    body, written = [], set()
    i = start + 1
    while i < end:
        line = lines[i]
        m = _KEY.match(line)
        key = m["key"].strip().lower() if m and not line.lstrip().startswith(("#", ";")) else None
        if key in values:
            i += 1  # drop the old value's continuation lines (indented, non-empty)
            while i < end and lines[i][:1] in (" ", "\t") and lines[i].strip():
                i += 1
            if key not in written:
                eol = line[len(line.rstrip("\r\n")):] or newline
                body.append(f"{key} = {values[key]}{eol}")
                written.add(key)
            continue
        body.append(line)
        i += 1
    missing = [f"{k} = {values[k]}{newline}" for k in KEYS if k not in written]
    if missing:
        # after the section's last non-blank line, so blank lines between sections stay where they were
        last = max((j for j, line in enumerate(body) if line.strip()), default=-1) + 1
        if last and not body[last - 1].endswith(("\n", "\r")):
            body[last - 1] += newline
        body[last:last] = missing
    return "".join(lines[: start + 1]) + "".join(body) + "".join(lines[end:])


def write(config_path: Path, storage: ArchivalStorage) -> Path | None:
    """Set ``[archival_storage]`` atomically; return the backup's path (None: no previous file or no change)."""
    target = Path(os.path.realpath(config_path))
    try:
        original_bytes = target.read_bytes() if target.exists() else None
    except OSError as exc:
        raise ConfigError(f"cannot read MemGPT config {target}: {exc.strerror}", hint="check its permissions") from None
    try:
        original = original_bytes.decode("utf-8") if original_bytes is not None else ""
    except UnicodeDecodeError:
        raise ConfigError(f"MemGPT config {target} is not UTF-8 text", hint="fix or move the file") from None
    updated = render(original, storage)
    if original_bytes is not None and updated == original:
        return None

    backup = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o7777 if original_bytes is not None else 0o600  # the uri may hold a password
        if original_bytes is not None:
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
            backup = target.with_name(f"{target.name}.{stamp}.bak")
            _atomic_write(backup, original_bytes, mode)
        _atomic_write(target, updated.encode("utf-8"), mode)
    except OSError as exc:
        raise ConfigError(f"cannot write MemGPT config {target}: {exc.strerror}",
                          hint="check the directory's permissions or set MEMGPT_CONFIG_PATH") from None
    return backup


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
