"""The backend registry keeps its promise: a backend is one module and one line in BACKENDS, and nothing
outside toolkit/backends/ decides anything by a backend's name."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests import memory_backend
from tests.backend_support import passages
from tests.support import REPO
from toolkit import migrate, smoke, specs
from toolkit.backends import BACKENDS, Backend, open_store
from toolkit.errors import UsageError
from toolkit.settings import Settings, resolve


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return resolve({}, environ={}, project_dir=isolated)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(BACKENDS, "memory", memory_backend)  # the one line
    yield
    memory_backend.TABLES.clear()


def _members() -> set[str]:
    return {name for name in vars(Backend) if not name.startswith("_")}


def test_every_registered_module_is_a_whole_backend_under_its_own_name() -> None:
    members = _members()
    assert {"NAME", "SCHEMES", "open_store", "parse", "to_memgpt", "endpoint"} <= members
    for name, module in BACKENDS.items():
        missing = sorted(m for m in members if not hasattr(module, m))
        assert not missing, f"{name} lacks {missing}"
        assert module.NAME == name
    assert not [m for m in members if not hasattr(memory_backend, m)]


def test_one_registry_line_makes_a_backend_smoke_checkable(registered: None, settings: Settings) -> None:
    chosen = smoke.targets(settings, "memory")
    assert [(t.backend, t.problem) for t in chosen] == [("memory", None)]
    [result] = smoke.run(chosen, n=40, dim=8)
    assert result.ok, result.detail
    assert "memory" in [t.backend for t in smoke.targets(settings, "all")]
    assert not memory_backend.TABLES  # its temporary table was dropped


def test_one_registry_line_makes_a_backend_one_the_archival_store_fixture_serves(registered: None,
                                                                                  tmp_path: Path) -> None:
    from toolkit.testing.stores import Stores

    stores = Stores("0123456789ab", "main", tmp_path)
    first, second = stores.take("memory"), stores.take("memory")
    assert first.table != second.table and first.count() == second.count() == 0
    first.insert(first.passages(3))
    assert (first.count(), second.count()) == (3, 0)
    stores.give_back(first)
    stores.give_back(second)
    assert not memory_backend.TABLES  # both dropped
    assert stores.close() == []  # no helper server was needed


def test_one_registry_line_makes_a_backend_a_migration_source_and_destination(registered: None, settings: Settings,
                                                                              tmp_path: Path) -> None:
    from contextlib import closing

    source = specs.parse(f"local://{tmp_path / 'src'}", settings)
    with closing(open_store(source.store("t_reg"))) as store:
        store.insert(passages(50, 8))
    into_memory = migrate.migrate(source, specs.parse("memory://one", settings), table="t_reg", batch=7)
    assert into_memory.verified and into_memory.rows == 50
    back = migrate.migrate(specs.parse("memory://one", settings), specs.parse(f"lancedb://{tmp_path / 'l'}", settings),
                           table="t_reg")
    assert back.verified and back.checksum == into_memory.checksum


def test_one_registry_line_reaches_the_migrate_command(registered: None, isolated: Path, tmp_path: Path) -> None:
    from contextlib import closing

    from toolkit.cli import cli

    with closing(open_store(specs.parse("memory://two", resolve({}, environ={})).store("t_cli"))) as store:
        store.insert(passages(30, 8))
    done = CliRunner().invoke(cli, ["migrate", "--from", "memory://two", "--to", f"local://{tmp_path / 'dst'}",
                                    "--table", "t_cli", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["verified"] is True
    bad = CliRunner().invoke(cli, ["migrate", "--from", "memory://", "--to", "local"])
    assert isinstance(bad.exception, UsageError) and bad.exception.hint == "use memory://NAME"  # its own words


# -- nothing outside toolkit/backends/ branches on a backend's name ----------------------------------

# comparisons with these words that are about something else than a backend
NOT_A_BACKEND = {
    ("toolkit/settings.py", "postgres"): "the superuser role's name, refused as the application role",
    ("toolkit/__init__.py", "postgres"): "the function toolkit.postgres(), imported lazily",
    ("toolkit/urls.py", "postgres"): "the URL scheme postgres://, which libpq accepts",
    ("toolkit/services/registry.py", "chroma"): "the Chroma server's service name (`toolkit chroma up`)",
    ("toolkit/services/pidfile.py", "chroma"): "the Chroma server's service name, keying its process marker",
    ("toolkit/extras.py", "chroma"): "the pip extra toolkit[chroma] (the backends name theirs in EXTRA)",
    ("toolkit/extras.py", "lancedb"): "the pip extra toolkit[lancedb] (the backends name theirs in EXTRA)",
    ("toolkit/extras.py", "parquet"): "the pip extra toolkit[parquet] (the backends name theirs in EXTRA)",
}


def _branches_on_names(path: Path, names: set[str], root: Path = REPO) -> list[str]:
    """``rel/path.py:LINE: 'word'`` for each comparison, dict key or match case in ``path`` that uses one of
    ``names`` (paths relative to ``root``), except those NOT_A_BACKEND explains."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            words = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
        elif isinstance(node, (ast.Dict, ast.Match)):
            keys = node.keys if isinstance(node, ast.Dict) else [c.pattern for c in node.cases]
            words = {c.value for k in keys if k is not None for c in ast.walk(k) if isinstance(c, ast.Constant)}
        else:
            continue
        rel = str(path.relative_to(root))
        for word in sorted(w for w in words if w in names and (rel, w) not in NOT_A_BACKEND):
            found.append(f"{rel}:{node.lineno}: {word!r}")
    return found


def test_no_module_outside_backends_branches_on_a_backend_name() -> None:
    names = set(BACKENDS) | {b.WORD for b in BACKENDS.values() if b.WORD} \
        | {b.MEMGPT_TYPE for b in BACKENDS.values() if b.MEMGPT_TYPE}
    offenders = [hit for path in sorted((REPO / "toolkit").rglob("*.py"))
                 if "backends" not in path.relative_to(REPO / "toolkit").parts
                 for hit in _branches_on_names(path, names)]
    assert offenders == []


def test_the_name_check_finds_a_branch(tmp_path: Path) -> None:
    sample = tmp_path / "toolkit" / "sample.py"  # never inside the package: a killed run would leave it there
    sample.parent.mkdir()
    sample.write_text('def f(b):\n    return 1 if b in ("chroma", "x") else {"lancedb": 2}.get(b)\n')
    hits = _branches_on_names(sample, {"chroma", "lancedb"}, root=tmp_path)
    assert hits == ["toolkit/sample.py:2: 'chroma'", "toolkit/sample.py:2: 'lancedb'"]
