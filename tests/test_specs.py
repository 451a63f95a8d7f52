"""SPEC grammar: every form parses to the right backend and location; bad ones are one-line UsageErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit import specs
from toolkit.backends import chroma
from toolkit.errors import UsageError
from toolkit.memgpt_config import ArchivalStorage
from toolkit.settings import resolve
from toolkit.specs import Spec


@pytest.fixture
def settings(isolated: Path):
    return resolve({"s3_endpoint": "http://127.0.0.1:9000", "s3_allow_http": True, "s3_region": "us-east-1"})


@pytest.mark.parametrize("text, backend, location", [
    ("postgresql://u:p@db:5432/x", "postgres", "postgresql://u:p@db:5432/x"),
    ("postgresql+pg8000://u:p@localhost:8888/memgpt", "postgres", "postgresql://u:p@localhost:8888/memgpt"),
    ("postgresql+psycopg://u@h/x", "postgres", "postgresql://u@h:5432/x"),
    ("chroma:///data/chroma", "chroma", "/data/chroma"),
    ("chroma+http://localhost:8001", "chroma-http", "localhost:8001"),
    ("chroma+http://10.0.0.1", "chroma-http", "10.0.0.1:{chroma_port}"),
    ("lancedb:///data/lance", "lancedb", "/data/lance"),
    ("s3://bucket/memgpt/", "lancedb-s3", "s3://bucket/memgpt"),
    ("local:///data/archival", "local", "/data/archival"),
])
def test_grammar(settings, text: str, backend: str, location: str) -> None:
    spec = specs.parse(text, settings)
    assert (spec.backend, spec.location) == (backend, location.format(chroma_port=settings.chroma_port))
    assert specs.parse(spec.render(), settings) == spec  # render round-trips


def test_relative_paths_and_defaults(settings, isolated: Path) -> None:
    assert specs.parse("chroma://data/c", settings).location == str(isolated / "data" / "c")
    assert specs.parse("lancedb", settings).location == str(isolated / ".lancedb")
    assert specs.parse("local", settings).location == str(Path.home() / ".memgpt" / "archival")
    assert specs.parse("chroma+http", settings).location == f"127.0.0.1:{settings.chroma_port}"
    assert specs.parse("postgres", settings).backend == "postgres"


def test_s3_options_from_settings(settings) -> None:
    spec = specs.parse("s3://b/p", settings)
    assert spec.store("t").options == {"aws_endpoint": "http://127.0.0.1:9000", "aws_region": "us-east-1",
                                       "allow_http": "true"}


@pytest.mark.parametrize("text", ["", "nope", "foo://x", "chroma://", "chroma:///", "chroma+http://h:99999",
                                  "chroma+http://h:p", "s3://", "postgresql://h", "mysql://u:p@h/db"])
def test_bad_specs(settings, text: str) -> None:
    with pytest.raises(UsageError) as info:
        specs.parse(text, settings)
    line = info.value.one_line()
    assert "\n" not in line and "secret" not in line


def test_password_redacted_in_str(settings) -> None:
    spec = specs.parse("postgresql://memgpt:secret@h:1/db", settings)
    assert "secret" not in str(spec) and "secret" in spec.render()


def test_identity_ignores_spelling(settings) -> None:
    a = specs.parse("postgresql+pg8000://u:p@localhost:8888/memgpt", settings)
    b = specs.parse("postgresql://u:p@127.0.0.1:8888/memgpt", settings)
    assert a.identity == b.identity
    assert specs.parse("chroma://x/../y", settings).identity == specs.parse("chroma://y", settings).identity


@pytest.mark.parametrize("spec, section", [
    (Spec("postgres", "postgresql://u:p@h:1/d"), ArchivalStorage("postgres", "", "postgresql+pg8000://u:p@h:1/d")),
    (Spec("chroma", "/data/c"), ArchivalStorage("chroma", "/data/c", "")),
    (Spec("chroma-http", "localhost:8000"), ArchivalStorage("chroma", "", "localhost:8000")),
    (Spec("lancedb", "/data/l"), ArchivalStorage("lancedb", "", "/data/l")),
    (Spec("lancedb-s3", "s3://b/p"), ArchivalStorage("lancedb", "", "s3://b/p")),
    (Spec("local", "/data/a"), ArchivalStorage("local", "/data/a", "")),
])
def test_memgpt_mapping_round_trips(settings, spec: Spec, section: ArchivalStorage) -> None:
    assert specs.to_memgpt(spec) == section
    assert specs.from_memgpt(section, settings) == spec


def test_memgpt_reads_like_memgpt(settings) -> None:
    # a path makes MemGPT choose the persistent client even when a uri is set
    assert specs.from_memgpt(ArchivalStorage("chroma", "/p", "h:1"), settings) == Spec("chroma", "/p")
    # no path key at all: MemGPT's default ~/.memgpt/chroma
    assert specs.from_memgpt(ArchivalStorage("chroma"), settings).location == str(chroma.default_dir())
    assert specs.from_memgpt(ArchivalStorage("lancedb"), settings).location.endswith(".lancedb")
    with pytest.raises(UsageError):
        specs.from_memgpt(ArchivalStorage("faiss"), settings)


def test_postgres_shorthand_that_names_itself_is_refused(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGVECTOR_TEST_DB_URL", "postgres")
    with pytest.raises(UsageError, match="not a Postgres URL"):
        specs.parse("postgres", settings)


@pytest.mark.parametrize("text", ["local:///data/dst?fmt=legacy", "local:///data/dst?", "chroma:///c?format=0.5&x=1"])
def test_a_query_is_the_toolkits_or_refused(settings, text: str) -> None:
    # only a Postgres URL keeps its query (libpq's parameters); a local path never swallows one
    with pytest.raises(UsageError):
        specs.parse(text, settings)


def test_the_postgres_word_reads_the_exported_url_as_any_spec(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGVECTOR_TEST_DB_URL", " postgresql://u:pw@h:5/db \r")
    assert specs.parse("postgres", settings) == specs.parse("postgresql://u:pw@h:5/db", settings)
    monkeypatch.setenv("PGVECTOR_TEST_DB_URL", "postgresql://u:pw@h:5/db?format=x")
    with pytest.raises(UsageError, match="does not apply"):
        specs.parse("postgres", settings)
    for other in ("chroma:///x", "s3://b/p", "postgres"):  # never names another store, nor itself
        monkeypatch.setenv("PGVECTOR_TEST_DB_URL", other)
        with pytest.raises(UsageError, match="not a Postgres URL"):
            specs.parse("postgres", settings)
