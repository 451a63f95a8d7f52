"""`toolkit configure`: prompts (CliRunner input), flags, the smoke check, the switch-away warning."""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.backend_support import passages
from tests.support import memgpt_reads, run_toolkit, without_section
from toolkit import memgpt_config
from toolkit.backends import DEFAULT_TABLE, StoreLocation, open_store
from toolkit.cli import cli
from toolkit.errors import UsageError
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


def test_failed_check_writes_nothing(config: Path) -> None:
    from toolkit.ports import free_port

    done = run_toolkit("configure", "--backend", "chroma", "--uri", f"127.0.0.1:{free_port()}", "--no-input")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "--no-check" in done.stderr
    assert not config.exists()


def _local(path: Path):  # type: ignore[no-untyped-def]
    from toolkit.backends import StoreLocation

    return StoreLocation("local", str(path), DEFAULT_TABLE)


# -- repairing what MemGPT cannot use: an unknown type, a duplicate section or key --------------------

def _assert_repaired(config: Path, original: str, backend: str) -> None:
    text = config.read_text()
    assert memgpt_reads(config)["archival_storage"]["type"] == backend and text.count("[archival_storage]") == 1
    assert without_section(text, "archival_storage") == without_section(original, "archival_storage")
    backups = list(config.parent.glob("config.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == original


@pytest.mark.parametrize("bad", ["foo", ""])
def test_unknown_type_is_repaired(config: Path, bad: str) -> None:
    config.parent.mkdir(parents=True)
    original = FOREIGN.format(path="/old").replace("type = chroma", f"type = {bad}")
    config.write_text(original)

    done = run_toolkit("configure", "--backend", "local", "--no-input")

    assert done.returncode == 0, done.stderr
    assert f"unknown archival storage type {bad!r}" in done.stderr and "local check passed" in done.stdout
    _assert_repaired(config, original, "local")
    assert memgpt_config.read(config) == ArchivalStorage("local", str(config.parent / "archival"), "")


def test_unknown_type_is_repaired_interactively(config: Path) -> None:
    config.parent.mkdir(parents=True)
    original = FOREIGN.format(path="/old").replace("type = chroma", "type = foo")
    config.write_text(original)

    result = invoke("--no-check", input="lancedb\n\n")

    assert result.exit_code == 0, result.output
    _assert_repaired(config, original, "lancedb")


DUPLICATE_SECTION = FOREIGN.format(path="/old/chroma") + "\n[archival_storage]\ntype = postgres\nuri = x\n"
DUPLICATE_KEY = FOREIGN.format(path="/old/chroma").replace("type = chroma\n", "type = chroma\ntype = local\n")


@pytest.mark.parametrize("original", [DUPLICATE_SECTION, DUPLICATE_KEY], ids=["section", "key"])
def test_duplicate_is_repaired(config: Path, original: str) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(original)

    done = run_toolkit("configure", "--backend", "local", "--no-input")

    assert done.returncode == 0, done.stderr
    assert "twice" in done.stderr and "local check passed" in done.stdout
    _assert_repaired(config, original, "local")
    # and a second run finds nothing to repair
    again = run_toolkit("configure", "--backend", "lancedb", "--no-input", "--no-check")
    assert again.returncode == 0 and "warning" not in again.stderr
    assert memgpt_reads(config)["archival_storage"]["type"] == "lancedb"


@pytest.mark.parametrize("original, what", [(DUPLICATE_SECTION, "[archival_storage] twice (again on line 16)"),
                                            (DUPLICATE_KEY, "'type' twice in [archival_storage]")],
                         ids=["section", "key"])
def test_readers_name_the_duplicate(config: Path, original: str, what: str) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(original)

    smoke = run_toolkit("smoke", "-n", "2", "--dim", "4")
    assert smoke.returncode == 2 and smoke.stdout == ""
    line = smoke.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert str(config) in line and what in line and "toolkit configure --backend" in line

    doctor = run_toolkit("doctor")  # doctor reports it as its failing archival line
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    failing = [row for row in doctor.stdout.splitlines() if row.startswith("FAIL archival")]
    assert len(failing) == 1 and str(config) in failing[0] and what in failing[0]
    assert "toolkit configure --backend" in failing[0]
    assert config.read_text() == original


@pytest.mark.parametrize("data", [b"\xff\xfe[\x00a\x00]\x00\n", b"\x7fELF\x02\x01\x01\x00\x00\x00"])
def test_binary_config_is_one_line_error(config: Path, data: bytes) -> None:
    config.parent.mkdir(parents=True)
    config.write_bytes(data)
    for args in (("configure", "--backend", "local", "--no-input"), ("smoke", "-n", "2", "--dim", "4")):
        done = run_toolkit(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and str(config) in done.stderr, (args, done.stderr)
    doctor = run_toolkit("doctor")
    failing = [row for row in doctor.stdout.splitlines() if row.startswith("FAIL archival")]
    assert "Traceback" not in doctor.stderr and len(failing) == 1 and str(config) in failing[0]
    assert config.read_bytes() == data


# -- what the outside review of the backend registry found --------------------------------------------

def test_the_migrate_command_names_stores_as_they_are_not_by_words_read_again_elsewhere(config: Path,
                                                                                         tmp_path: Path) -> None:
    # `--from lancedb` would be read again from wherever the printed command runs: another project's store
    project = tmp_path / "other-project"
    project.mkdir()
    lance = project / ".lancedb"
    with closing(open_store(StoreLocation("lancedb", str(lance), DEFAULT_TABLE))) as store:
        store.insert(passages(4, 8))
    config.parent.mkdir(parents=True)
    config.write_text(f"[archival_storage]\ntype = lancedb\nuri = {lance}\n")
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "configure", "--backend", "local", "--no-input",
                                      "--no-check"])
    assert result.exit_code == 0, result.output
    assert f"toolkit migrate --from lancedb://{lance} --to local://{Path.home() / '.memgpt' / 'archival'}" \
           in result.output


def test_lancedb_s3_is_configured_on_s3_only(config: Path) -> None:
    with pytest.raises(UsageError, match="needs an s3:// URI"):
        invoke("--backend", "lancedb-s3", "--no-input", "--no-check")
    assert not config.exists()
    assert invoke("--backend", "lancedb-s3", "--uri", "s3://b/p", "--no-input", "--no-check").exit_code == 0
    assert memgpt_config.read(config) == ArchivalStorage("lancedb", "", "s3://b/p")
    # only --backend keeps where it is configured, also under the name of the s3 backend
    assert invoke("--backend", "lancedb-s3", "--no-input", "--no-check").exit_code == 0
    assert memgpt_config.read(config) == ArchivalStorage("lancedb", "", "s3://b/p")


@pytest.mark.parametrize("args, section", [
    (("--backend", "lancedb", "--uri", "/x/ld?format=legacy"), ArchivalStorage("lancedb", "", "/x/ld")),
    (("--backend", "chroma", "--path", "/x/cd?format=0.5"), ArchivalStorage("chroma", "/x/cd", "")),
    (("--backend", "chroma-http", "--uri", "h:1?format=0.5"), ArchivalStorage("chroma", "", "h:1")),
])
def test_a_format_given_with_the_location_is_not_written_into_memgpts_config(config: Path, args: tuple[str, ...],
                                                                           section: ArchivalStorage) -> None:
    assert invoke(*args, "--no-input", "--no-check").exit_code == 0
    assert memgpt_config.read(config) == section
