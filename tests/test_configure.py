"""`toolkit configure`: prompts (CliRunner input), flags, the smoke check, the switch-away warning."""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.backend_support import passages
from toolkit import memgpt_config
from toolkit.backends import DEFAULT_TABLE, open_store
from toolkit.cli import cli
from toolkit.memgpt_config import ArchivalStorage

FOREIGN = """\
[defaults]
preset = memgpt_chat
persona = sam_pov

[archival_storage]
type = chroma
path = {path}

[recall_storage]
type = sqlite
path = /somewhere/.memgpt

[client]
anon_clientid = 00000000-0000-0000-0000-000000000000
"""


@pytest.fixture
def config() -> Path:
    return Path(os.environ["MEMGPT_CONFIG_PATH"])


def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["configure", *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_prompts_chroma_http_clears_path_and_keeps_foreign_sections(config: Path) -> None:
    config.parent.mkdir(parents=True)
    original = FOREIGN.format(path="/old/chroma")
    config.write_text(original)

    result = invoke("--no-check", input="chroma\nhttp\nlocalhost:8123\n")

    assert result.exit_code == 0, result.output
    assert "Select storage backend for archival data" in result.output
    assert "Select chroma backend" in result.output
    assert memgpt_config.read(config) == ArchivalStorage("chroma", "", "localhost:8123")
    text = config.read_text()
    head, _, tail = original.partition("[archival_storage]")
    assert text.startswith(head) and text.endswith(tail.split("\n\n", 1)[1])
    backups = list(config.parent.glob("config.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == original


def test_prompt_postgres_defaults_to_provisioned_url(config: Path, isolated: Path) -> None:
    url = "postgresql+pg8000://memgpt:s3cret@localhost:7777/memgpt"
    (isolated / ".env").write_text(f"PGVECTOR_TEST_DB_URL={url}\n")

    result = invoke("--no-check", input="postgres\n\n")

    assert result.exit_code == 0, result.output
    assert memgpt_config.read(config) == ArchivalStorage("postgres", "", url)
    assert "s3cret" not in result.output and "memgpt:***@localhost:7777" in result.output


def test_prompt_lancedb_empty_means_dot_lancedb(config: Path, isolated: Path) -> None:
    result = invoke("--no-check", input="lancedb\n\n")
    assert result.exit_code == 0, result.output
    assert memgpt_config.read(config) == ArchivalStorage("lancedb", "", str(isolated / ".lancedb"))


def test_flags_without_input(config: Path, tmp_path: Path) -> None:
    result = invoke("--backend", "chroma", "--path", str(tmp_path / "c"), "--no-input", "--no-check")
    assert result.exit_code == 0, result.output
    assert memgpt_config.read(config) == ArchivalStorage("chroma", str(tmp_path / "c"), "")
    result = invoke("--backend", "chroma-http", "--no-input", "--no-check")
    section = memgpt_config.read(config)
    assert section is not None and section.type == "chroma" and section.path == "" and section.uri.startswith("127.")


def test_chroma_path_and_uri_together_is_refused(config: Path) -> None:
    from toolkit.errors import UsageError

    with pytest.raises(UsageError, match="not both"):
        invoke("--backend", "chroma", "--path", "/x", "--uri", "h:1", "--no-input", "--no-check")
    assert not config.exists()


def test_switching_away_warns_with_count_and_migrate_command(config: Path, tmp_path: Path) -> None:
    old = tmp_path / "archival"
    with closing(open_store(_local(old))) as store:
        store.insert(passages(30, 8))
    config.parent.mkdir(parents=True)
    config.write_text(f"[archival_storage]\ntype = local\npath = {old}\n")

    result = invoke("--backend", "lancedb", "--uri", str(tmp_path / "lance"), "--no-input", "--no-check")

    assert result.exit_code == 0, result.output
    assert f"local://{old} holds 30 archival passages" in result.output
    assert f"toolkit migrate --from local://{old} --to lancedb://{tmp_path / 'lance'} --switch" in result.output
    assert memgpt_config.read(config) == ArchivalStorage("lancedb", "", str(tmp_path / "lance"))


def test_runs_the_smoke_check(config: Path, tmp_path: Path) -> None:
    result = invoke("--backend", "local", "--path", str(tmp_path / "archival"), "--no-input")
    assert result.exit_code == 0, result.output
    assert "local check passed" in result.output
    assert memgpt_config.read(config) == ArchivalStorage("local", str(tmp_path / "archival"), "")
    assert not any((tmp_path / "archival").glob("*/manifest.json"))  # the check leaves nothing behind


def test_failed_check_writes_nothing(config: Path, toolkit_cli) -> None:
    from toolkit.ports import free_port

    done = toolkit_cli("configure", "--backend", "chroma", "--uri", f"127.0.0.1:{free_port()}", "--no-input")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "--no-check" in done.stderr
    assert not config.exists()


def _local(path: Path):  # type: ignore[no-untyped-def]
    from toolkit.backends import StoreLocation

    return StoreLocation("local", str(path), DEFAULT_TABLE)
