"""MemGPT config: [archival_storage] rewritten in place, everything else byte for byte."""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

import pytest

from toolkit import memgpt_config
from toolkit.errors import ConfigError
from toolkit.memgpt_config import ArchivalStorage

# a config as MemGPT writes it, plus hand edits: comments, odd spacing, a multi-line value
FOREIGN = """\
# my MemGPT setup
[defaults]
preset = memgpt_chat
persona=sam_pov
human   :   basic

[model]
model = gpt-4
model_endpoint = https://api.openai.com/v1
context_window = 8192

[archival_storage]
# chosen by hand
type = chroma
path = /home/me/.memgpt/chroma
extra = keep me
uri = old:1
  continued

[recall_storage]
type = sqlite
path = /home/me/.memgpt

[client]
anon_clientid = 00000000-0000-0000-0000-000000000000
"""


def _sections(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {s: dict(parser[s]) for s in parser.sections()}


def _without_section(text: str, name: str) -> str:
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skip = line.strip() == f"[{name}]"
        if not skip:
            out.append(line)
    return "".join(out)


def test_http_clears_path_and_keeps_everything_else(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(FOREIGN)
    os.chmod(config, 0o640)

    backup = memgpt_config.write(config, ArchivalStorage("chroma", "", "localhost:8000"))

    text = config.read_text()
    assert _without_section(text, "archival_storage") == _without_section(FOREIGN, "archival_storage")
    section = _sections(text)["archival_storage"]
    assert section == {"type": "chroma", "path": "", "uri": "localhost:8000", "extra": "keep me"}
    assert "# chosen by hand\n" in text
    assert backup is not None and backup.read_text() == FOREIGN
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert memgpt_config.read(config) == ArchivalStorage("chroma", "", "localhost:8000")
    # MemGPT: `if config.archival_storage_path:` -> persistent; empty means HTTP over uri
    assert not memgpt_config.read(config).path  # type: ignore[union-attr]


def test_same_values_write_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(FOREIGN)
    storage = ArchivalStorage("postgres", "", "postgresql+pg8000://u:p@localhost:8888/db")
    assert memgpt_config.write(config, storage) is not None
    assert memgpt_config.write(config, storage) is None
    assert len(list(tmp_path.glob("config.*.bak"))) == 1


def test_missing_section_appended_and_new_file_private(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[model]\nmodel = gpt-4")  # no trailing newline
    memgpt_config.write(config, ArchivalStorage("lancedb", "", "./.lancedb"))
    assert config.read_text() == ("[model]\nmodel = gpt-4\n\n"
                                  "[archival_storage]\ntype = lancedb\npath = \nuri = ./.lancedb\n")

    fresh = tmp_path / "sub" / "config"
    assert memgpt_config.read(fresh) is None
    assert memgpt_config.write(fresh, ArchivalStorage("local", "/data/archival")) is None
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert memgpt_config.read(fresh) == ArchivalStorage("local", "/data/archival", "")


def test_missing_keys_inserted_before_blank_lines_crlf_kept(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_bytes(b"[archival_storage]\r\ntype = local\r\n\r\n[other]\r\na = 1\r\n")
    memgpt_config.write(config, ArchivalStorage("postgres", "", "postgresql://x@h/d"))
    assert config.read_bytes() == (b"[archival_storage]\r\ntype = postgres\r\npath = \r\nuri = postgresql://x@h/d\r\n"
                                   b"\r\n[other]\r\na = 1\r\n")


def test_symlinked_config_updates_target(tmp_path: Path) -> None:
    real = tmp_path / "real-config"
    real.write_text(FOREIGN)
    link = tmp_path / "config"
    link.symlink_to(real)
    memgpt_config.write(link, ArchivalStorage("local", "/x"))
    assert link.is_symlink()
    assert memgpt_config.read(real) == ArchivalStorage("local", "/x", "")


def test_unreadable_config_is_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[archival_storage\ntype = x\n")
    with pytest.raises(ConfigError) as info:
        memgpt_config.read(config)
    assert "\n" not in info.value.one_line()
