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
import io
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from toolkit import perms
from toolkit.errors import ConfigError
from toolkit.urls import redact

SECTION = "archival_storage"
KEYS = ("type", "path", "uri")
REPAIR_HINT = ("MemGPT cannot read it either; `toolkit configure --backend B` repairs it, "
               "B one of local, postgres, chroma, lancedb")

# configparser's own patterns, matched on the stripped line: a section name is everything between the first
# "[" and the last "]"; a key is everything before the first "=" or ":"
_SECTION = re.compile(r"\[(?P<name>.+)\]")
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # universal newlines, as open() reads the file


class DuplicateSection(ConfigError):
    """``[archival_storage]`` twice, or a key twice in it: MemGPT cannot read the file; ``write`` repairs it."""


@dataclass(frozen=True)
class ArchivalStorage:
    """The three keys of ``[archival_storage]``; "" means written but empty (unused)."""

    type: str
    path: str = ""
    uri: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "path": self.path, "uri": self.uri}


def read(config_path: Path) -> ArchivalStorage | None:
    """The ``[archival_storage]`` section, or None when the file or the section is missing.

    A file MemGPT cannot read raises ConfigError: DuplicateSection when rewriting the section repairs it."""
    if not config_path.is_file():
        return None
    parser = _parse(config_path, _text(config_path, _bytes(config_path)))
    if not parser.has_section(SECTION) or not parser.has_option(SECTION, "type"):
        return None
    section = parser[SECTION]
    return ArchivalStorage(section.get("type", "").strip(), section.get("path", "").strip(),
                           section.get("uri", "").strip())


def _bytes(config_path: Path) -> bytes:
    try:
        return config_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read MemGPT config {config_path}: {exc.strerror}",
                          hint="check its permissions") from None


def _text(config_path: Path, data: bytes) -> str:
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise ConfigError(f"MemGPT config {config_path} is not UTF-8 text (binary, or another encoding)",
                          hint="fix or move the file, or point MEMGPT_CONFIG_PATH elsewhere")
    return text


def _parse(config_path: Path, text: str) -> configparser.ConfigParser:
    """``text`` parsed as MemGPT parses it: strict, so a repeated section or key is an error."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_file(io.StringIO(text, newline=None), source=str(config_path))
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        what = (f"key {exc.option!r} twice in [{exc.section}]" if isinstance(exc, configparser.DuplicateOptionError)
                else f"[{exc.section}] twice")
        message = f"MemGPT config {config_path} has {what} (again on line {exc.lineno})"
        if exc.section == SECTION:
            _parse(config_path, _blank_section(text))  # what rewriting the section does not repair comes first
            raise DuplicateSection(message, hint=REPAIR_HINT) from None
        raise ConfigError(message, hint="MemGPT cannot read it either; remove the repeated one by hand") from None
    except configparser.Error as exc:
        raise ConfigError(f"cannot read MemGPT config {config_path}: {exc}".splitlines()[0],
                          hint="fix the file or point MEMGPT_CONFIG_PATH elsewhere") from None
    return parser


@dataclass(frozen=True)
class _Line:
    text: str
    kind: str  # header, option, continuation (of the last option's value), other (blank, comment, unparsable)
    name: str = ""  # header: the section; option and continuation: the key, lower case


def _classify(text: str) -> list[_Line]:
    """The lines of ``text`` as configparser's reader (MemGPT's) sees them; see ``RawConfigParser._read``."""
    out: list[_Line] = []
    key, indent_level, in_section = "", 0, False
    for line in _LINE.findall(text):
        value = line.strip()
        if not value or value.startswith(("#", ";")):  # blank lines and comments do not end a value
            out.append(_Line(line, "other"))
            continue
        indent = len(line) - len(line.lstrip())
        if in_section and key and indent > indent_level:
            out.append(_Line(line, "continuation", key))
            continue
        indent_level = indent
        if match := _SECTION.match(value):
            in_section, key = True, ""
            out.append(_Line(line, "header", match["name"]))
        elif in_section and (match := _OPTION.match(value)):
            key = match["key"].rstrip().lower()
            out.append(_Line(line, "option", key))
        else:
            out.append(_Line(line, "other"))
    return out


def _blank_section(text: str) -> str:
    """``text`` as MemGPT would read it if the ``[archival_storage]`` copies had no keys (each renamed, so
    none repeats): what render does not repair (a line that is not ``key = value``), same line numbers."""
    out, inside = [], False
    for n, line in enumerate(_classify(text)):
        if line.kind == "header":
            inside = line.name == SECTION
            out.append(f"[\0{n}]\n" if inside else line.text)  # a NUL: no name in a file read() accepted
        else:
            out.append("\n" if inside and line.kind in ("option", "continuation") else line.text)
    return "".join(out)


def render(original: str, storage: ArchivalStorage) -> str:
    """``original`` with only ``[archival_storage]`` changed: keys type/path/uri set to ``storage``.

    A repeated section is merged into the first (its other keys and comments moved there), a repeated key
    dropped with its value's continuation lines: MemGPT's strict reader accepts neither."""
    newline = "\r\n" if "\r\n" in original else "\n"
    lines = _classify(original)
    values = storage.as_dict()

    starts = [i for i, line in enumerate(lines) if line.kind == "header" and line.name == SECTION]
    if not starts:
        text = original
        if text and not text.endswith(("\n", "\r")):
            text += newline
        if text.strip():
            text += newline
        return text + f"[{SECTION}]{newline}" + "".join(f"{k} = {values[k]}{newline}" for k in KEYS)

    ends = [next((i for i in range(start + 1, len(lines)) if lines[i].kind == "header"), len(lines))
            for start in starts]
    seen: set[str] = set()
    body = _rewrite(lines[starts[0] + 1: ends[0]], values, seen, merged=False)
    moved = [text for start, end in zip(starts[1:], ends[1:], strict=True)
             for text in _rewrite(lines[start + 1: end], values, seen, merged=True) if text.strip()]
    added = [f"{k} = {values[k]}{newline}" for k in KEYS if k not in seen] + moved
    head = [line.text for line in lines[: starts[0] + 1]]
    if added:
        # after the section's last non-blank line, so blank lines between sections stay where they were
        last = max((j for j, text in enumerate(body) if text.strip()), default=-1) + 1
        before = body if last else head  # the header, when the section is empty
        if not before[last - 1].endswith(("\n", "\r")):
            before[last - 1] += newline
        body[last:last] = [text if text.endswith(("\n", "\r")) else text + newline for text in added]

    out = head + body
    for end, following in zip(ends, starts[1:] + [len(lines)], strict=True):
        out += [line.text for line in lines[end:following]]  # the other sections between, byte for byte
    return "".join(out)


def _rewrite(lines: list[_Line], values: dict[str, str], seen: set[str], *, merged: bool) -> list[str]:
    """One copy of the section's body: type/path/uri set once, a key already ``seen`` dropped with its value's
    continuation lines. ``merged``: a later copy, whose type/path/uri go and whose other keys move unindented."""
    out: list[str] = []
    dropping = False
    for line in lines:
        if line.kind == "continuation":
            if not dropping:
                out.append(line.text)
            continue
        if line.kind != "option":
            out.append(line.text)
            continue
        dropping = line.name in seen or (merged and line.name in values)
        if dropping:
            continue
        seen.add(line.name)
        if line.name in values:
            indent = line.text[: len(line.text) - len(line.text.lstrip())]  # an indented key stays a key
            eol = line.text[len(line.text.rstrip("\r\n")):]
            out.append(f"{indent}{line.name} = {values[line.name]}{eol}")
            dropping = True  # the old value's continuation lines go
        else:
            out.append(line.text.lstrip() if merged else line.text)
    return out


def write(config_path: Path, storage: ArchivalStorage) -> Path | None:
    """Set ``[archival_storage]`` atomically; return the backup's path (None: no previous file or no change)."""
    target = Path(os.path.realpath(config_path))
    if any(char in value for value in storage.as_dict().values() for char in "\r\n"):
        raise ConfigError(f"cannot write a line break into MemGPT config {target}",
                          hint="give the path or URI on one line")
    found = perms.check_replaceable(target, "MemGPT config")
    original_bytes = _bytes(target) if found is not None else None
    original = _text(target, original_bytes) if original_bytes is not None else ""
    updated = render(original, storage)
    if original_bytes is not None and updated == original:
        return None
    _check(target, original, updated)

    backup = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(found.st_mode) if found is not None else 0o600
        if redact(updated) != updated:  # a password in it now (a Postgres uri): for its owner's eyes only
            mode &= 0o700
        if original_bytes is not None:
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
            backup = target.with_name(f"{target.name}.{stamp}.bak")
            perms.replace_file(backup, original_bytes, 0o600)  # a copy kept for its owner, nobody else
        perms.replace_file(target, updated.encode("utf-8"), mode)
    except OSError as exc:
        raise ConfigError(f"cannot write MemGPT config {target}: {exc.strerror}",
                          hint="check the directory's permissions or set MEMGPT_CONFIG_PATH") from None
    return backup


def preflight(config_path: Path) -> None:
    """Raise now what ``write`` would raise for this file (not a regular file, not readable text, broken
    outside [archival_storage]): a migration checks this before copying anything, not after."""
    target = Path(os.path.realpath(config_path))
    if perms.check_replaceable(target, "MemGPT config") is None:
        return
    try:
        _parse(target, _text(target, _bytes(target)))
    except DuplicateSection:
        pass  # write repairs it


def _check(target: Path, original: str, updated: str) -> None:
    """Raise what would still keep MemGPT from reading ``updated``: render repairs [archival_storage] only."""
    try:
        _parse(target, original)  # first: its errors carry the file's own line numbers
    except DuplicateSection:
        pass
    _parse(target, updated)


