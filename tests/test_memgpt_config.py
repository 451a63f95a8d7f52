"""MemGPT config: [archival_storage] rewritten in place, everything else byte for byte."""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

import pytest

from tests.support import memgpt_reads, without_section
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


def test_http_clears_path_and_keeps_everything_else(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(FOREIGN)
    os.chmod(config, 0o640)

    backup = memgpt_config.write(config, ArchivalStorage("chroma", "", "localhost:8000"))

    text = config.read_text()
    assert without_section(text, "archival_storage") == without_section(FOREIGN, "archival_storage")
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


# -- what MemGPT 0.3.x itself cannot read: repaired by write, named by read ---------------------------

DUPLICATED = FOREIGN.replace("[client]\n", """\
[archival_storage]
# added by a second `memgpt configure`
type = local
path = /home/me/.memgpt/archival
other = from the copy

[client]
""")


def test_duplicate_section_becomes_one(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(DUPLICATED)
    with pytest.raises(configparser.DuplicateSectionError):
        configparser.ConfigParser().read(config)

    backup = memgpt_config.write(config, ArchivalStorage("lancedb", "", "/data/lance"))

    text = config.read_text()
    assert text.count("[archival_storage]") == 1
    assert without_section(text, "archival_storage") == without_section(DUPLICATED, "archival_storage")
    section = memgpt_reads(config)["archival_storage"]
    assert dict(section) == {"type": "lancedb", "path": "", "uri": "/data/lance", "extra": "keep me",
                             "other": "from the copy"}
    assert backup is not None and backup.read_text() == DUPLICATED
    assert memgpt_config.read(config) == ArchivalStorage("lancedb", "", "/data/lance")


def test_duplicate_keys_become_one(tmp_path: Path) -> None:
    config = tmp_path / "config"
    original = ("[defaults]\npreset = memgpt_chat\n\n[archival_storage]\ntype = local\nTYPE = chroma\n"
                "path = /a\npath = /b\n  continued\nextra = 1\nextra = 2\n\n[client]\nid = 1\n")
    config.write_text(original)

    memgpt_config.write(config, ArchivalStorage("chroma", "/c", ""))

    assert config.read_text() == ("[defaults]\npreset = memgpt_chat\n\n[archival_storage]\ntype = chroma\n"
                                  "path = /c\nextra = 1\nuri = \n\n[client]\nid = 1\n")
    assert memgpt_reads(config)["archival_storage"]["type"] == "chroma"


def test_keys_are_found_as_configparser_finds_them(tmp_path: Path) -> None:
    # indented keys are keys; an indented line after a key (even past a blank line) continues its value;
    # `[ archival_storage ]` is another section to configparser
    config = tmp_path / "config"
    original = ("[ archival_storage ]\ntype = x\n\n[archival_storage]\n  type = foo\n  extra = 1\n"
                "  uri = a\n\n    b\n")
    config.write_text(original)

    memgpt_config.write(config, ArchivalStorage("local", "/l"))

    parsed = memgpt_reads(config)
    assert dict(parsed["archival_storage"]) == {"type": "local", "path": "/l", "uri": "", "extra": "1"}
    assert dict(parsed[" archival_storage "]) == {"type": "x"}


def test_read_names_a_duplicate_and_the_repair(tmp_path: Path) -> None:
    config = tmp_path / "config"
    for text, what in ((DUPLICATED, "[archival_storage] twice (again on line 24)"),
                       ("[archival_storage]\ntype = local\ntype = chroma\n", "'type' twice in [archival_storage]")):
        config.write_text(text)
        with pytest.raises(ConfigError) as info:
            memgpt_config.read(config)
        line = info.value.one_line()
        assert "\n" not in line and str(config) in line and what in line
        assert "toolkit configure --backend" in line and info.value.exit_code == 2


def test_duplicate_elsewhere_is_not_repaired(tmp_path: Path) -> None:
    config = tmp_path / "config"
    original = FOREIGN + "\n[model]\nmodel = gpt-3.5\n"
    config.write_text(original)
    with pytest.raises(ConfigError, match=r"\[model\] twice") as info:
        memgpt_config.read(config)
    assert "toolkit configure" not in info.value.one_line()
    with pytest.raises(ConfigError, match=r"\[model\] twice"):
        memgpt_config.write(config, ArchivalStorage("local", "/x"))
    assert config.read_text() == original and not list(tmp_path.glob("config.*.bak"))


@pytest.mark.parametrize("data", [b"\xff\xfe[\x00a\x00]\x00", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00",
                                  b"[archival_storage]\ntype = local\x00\x00\n"])
def test_binary_or_not_utf8_is_one_line_error(tmp_path: Path, data: bytes) -> None:
    config = tmp_path / "config"
    config.write_bytes(data)
    for call in (lambda: memgpt_config.read(config), lambda: memgpt_config.write(config, ArchivalStorage("local"))):
        with pytest.raises(ConfigError) as info:
            call()
        assert "\n" not in info.value.one_line() and str(config) in info.value.one_line()
    assert config.read_bytes() == data


def test_line_break_in_a_value_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(FOREIGN)
    with pytest.raises(ConfigError, match="line break"):
        memgpt_config.write(config, ArchivalStorage("local", "/x\n[defaults]\npreset = evil"))
    assert config.read_text() == FOREIGN


def test_duplicate_elsewhere_is_named_before_the_repairable_one(tmp_path: Path) -> None:
    config = tmp_path / "config"
    original = "[archival_storage]\ntype = local\n\n[archival_storage]\ntype = chroma\n\n[model]\na = 1\na = 2\n"
    config.write_text(original)
    with pytest.raises(ConfigError, match=r"key 'a' twice in \[model\] \(again on line 9\)") as info:
        memgpt_config.read(config)
    assert not isinstance(info.value, memgpt_config.DuplicateSection)
    with pytest.raises(ConfigError, match=r"key 'a' twice in \[model\] \(again on line 9\)"):
        memgpt_config.write(config, ArchivalStorage("local", "/x"))
    assert config.read_text() == original


def test_empty_section_at_end_without_newline(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[model]\nmodel = gpt-4\n\n[archival_storage]")
    memgpt_config.write(config, ArchivalStorage("local", "/x"))
    assert config.read_text() == "[model]\nmodel = gpt-4\n\n[archival_storage]\ntype = local\npath = /x\nuri = \n"
    assert memgpt_reads(config)["archival_storage"]["type"] == "local"
