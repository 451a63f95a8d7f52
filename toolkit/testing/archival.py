"""pytest plugin part: an empty archival table per test, in the backends a test is run over (loaded by
``toolkit.testing.plugin``, so ``-p no:toolkit`` turns it off too).

    @pytest.mark.archival_backends("local", "postgres", "lancedb")
    def test_search(archival_store):
        archival_store.insert(archival_store.passages(10, dim=8))
        assert archival_store.count() == 10

A test that uses ``archival_store`` runs once per backend (ids: the backend names): those its marker names, else
those of ``--toolkit-backends a,b`` (or the ini option ``toolkit_backends``), else ``local``. Given both, the
marker's backends that the option does not name are deselected. A backend whose extra is not installed is
skipped, naming the pip command; chroma-http and lancedb-s3 get a Chroma server and a moto S3 server, started
for the run when a test first needs them and stopped at its end.

Only pytest is imported here: a run that uses none of these fixtures pays nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from toolkit.testing.stores import Stores, TestStore

MARKER = "archival_backends"
BACKENDS = ("local", "postgres", "chroma", "chroma-http", "lancedb", "lancedb-s3", "parquet")  # for help: backends.BACKENDS' keys
_STOPPED = pytest.StashKey[list]()  # helper servers this process stopped, for the summary


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("toolkit")
    group.addoption("--toolkit-backends", default=None, metavar="A,B",
                    help="archival backends the tests using archival_store run over (comma-separated, or all; "
                         "default: a test's archival_backends marker, else local)")
    parser.addini("toolkit_backends", "archival backends the tests using archival_store run over (comma-separated)",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*names): run a test using archival_store over these archival "
                                       f"backends ({', '.join(BACKENDS)})")
    config.stash[_STOPPED] = []
    _selected(config)  # a bad --toolkit-backends is a usage error before anything runs


def _selected(config: pytest.Config) -> list[str] | None:
    """The backends --toolkit-backends (else the ini option) names; None when neither does."""
    given = config.getoption("toolkit_backends")
    where = "--toolkit-backends"
    if not given:
        given, where = config.getini("toolkit_backends"), "toolkit_backends (ini)"
    if not given or not str(given).strip():
        return None
    names = [name.strip() for name in str(given).split(",") if name.strip()]
    known = _known()
    if names == ["all"]:
        return known
    problem = _unknown(names, known)
    if problem:
        raise pytest.UsageError(f"toolkit: {where} {problem}; choose from {', '.join(known)} (or all)")
    return list(dict.fromkeys(names))


def _known() -> list[str]:
    from toolkit.backends import BACKENDS

    return list(BACKENDS)


def _unknown(names: list[str], known: list[str]) -> str:
    """What is wrong with ``names`` ("" when nothing is)."""
    unknown = [name for name in names if name not in known]
    return f"names unknown archival backend{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}" \
        if unknown else ""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "archival_store" not in metafunc.fixturenames:
        return
    if any("archival_backend" in _argnames(m) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test parametrizes archival_backend itself: its own values win
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        names = _selected(metafunc.config) or _default()
    else:
        known = _known()
        names = [str(name) for name in marker.args]
        problem = _unknown(names, known) or ("names no backend" if not names else "")
        if problem:  # a collection error of one line
            pytest.fail(f"toolkit: @pytest.mark.{MARKER}{tuple(names)!r} {problem}; choose from {', '.join(known)}",
                        pytrace=False)
        names = list(dict.fromkeys(names))
    metafunc.parametrize("archival_backend", names, ids=names, indirect=True)


def _argnames(parametrize: pytest.Mark) -> list[str]:
    names = parametrize.args[0] if parametrize.args else parametrize.kwargs.get("argnames", ())
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def _default() -> list[str]:
    from toolkit.testing.stores import DEFAULT_BACKENDS

    return list(DEFAULT_BACKENDS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A marked test's backends that --toolkit-backends (or the ini option) does not name are deselected."""
    selected = _selected(config)
    if selected is None:
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("archival_backend")
        (dropped if backend is not None and backend not in selected else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def archival_backend(request: pytest.FixtureRequest) -> str:
    """The archival backend this test runs on (a parameter: the marker, --toolkit-backends, else local)."""
    return str(getattr(request, "param", None) or _default()[0])


@pytest.fixture(scope="session")
def _toolkit_stores(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stores]:
    from toolkit.testing.plugin import _run_id, _worker_id, unwind_on_sigterm
    from toolkit.testing.stores import Stores

    config = pytestconfig
    unwind_on_sigterm(config)
    basetemp = tmp_path_factory.getbasetemp()
    # the run's own directory, which its xdist workers share: the controller's basetemp
    run_dir = (basetemp.parent if getattr(config, "workerinput", None) else basetemp) / "toolkit-servers"
    stores = Stores(_run_id(config), _worker_id(config), run_dir)
    try:
        yield stores
    finally:
        config.stash[_STOPPED].extend(stores.close())


@pytest.fixture
def archival_store(archival_backend: str, request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStore]:
    """An empty table of its own in one archival backend (``archival_backend``), dropped after the test.

    The toolkit's store for it: insert, query, count, get, scan, delete (the store's own methods); ``backend``,
    ``table``, ``spec`` (``uri``: its SPEC), ``location`` (for ``toolkit.backends.open_store``); ``passages(n,
    dim=, seed=)`` makes passages with seeded NumPy embeddings. postgres: in a database of the test's own
    (``pgvector_db``: ``database``); local, chroma, lancedb: in a directory of the test's own; chroma-http,
    lancedb-s3: in the run's Chroma / moto S3 server. Skipped when the backend's extra is not installed."""
    from toolkit.testing.plugin import _failing_cleanly
    from toolkit.testing.stores import missing

    reason = _failing_cleanly(lambda: missing(archival_backend))
    if reason is not None:
        pytest.skip(f"toolkit: {reason}")
    stores: Stores = request.getfixturevalue("_toolkit_stores")
    test_store = _failing_cleanly(lambda: stores.take(
        archival_backend, directory=lambda: tmp_path_factory.mktemp(f"archival-{archival_backend}", numbered=True),
        database=lambda: request.getfixturevalue("pgvector_db")))
    try:
        yield test_store
    finally:
        _failing_cleanly(lambda: stores.give_back(test_store))


# --- reporting -------------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown (runner's sessionfinish) stopped them
def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["toolkit_servers_stopped"] = [*session.config.stash.get(_STOPPED, [])]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    node.config.stash[_STOPPED].extend(getattr(node, "workeroutput", {}).get("toolkit_servers_stopped", []))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    stopped = config.stash.get(_STOPPED, [])
    if stopped and config.getoption("verbose") > 0:
        terminalreporter.line(f"toolkit: stopped the test run's {' and '.join(sorted(set(stopped)))} server"
                              f"{'s' if len(set(stopped)) > 1 else ''}")
