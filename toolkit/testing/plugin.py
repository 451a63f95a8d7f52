"""pytest plugin: a fresh pgvector database for every test (installed with toolkit; ``-p no:toolkit`` turns it off).

    def test_archival_search(pgvector_db):
        with pgvector_db.connect() as conn:        # psycopg, to a database of the test's own
            conn.execute("CREATE TABLE t (id int, e vector(3))")
        run_my_code(pgvector_db.url)                # postgresql+pg8000://..., as MemGPT reads it

Fixtures: ``pgvector_server`` (session), ``pgvector_db``, ``pgvector_env`` (with PGVECTOR_TEST_DB_URL set),
``toolkit_load`` (session: callables that load the template), ``toolkit_settings`` (session: where the server
is, resolved as ``toolkit up`` resolves it); ``archival_store`` and ``archival_backend`` (``archival.py``: an empty
table of its own per test in one archival backend). The server's settings are those of the directory pytest runs in
(its .env and the record of its last ``toolkit up``), read with the environment pytest started with.

Only pytest is imported here: a run that uses none of these fixtures pays nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from toolkit.settings import Settings
    from toolkit.testing.databases import Databases, Load, TestDatabase
    from toolkit.testing.server import Server

# the archival_store fixture and its hooks: a part of this plugin, so `-p no:toolkit` turns it off too
pytest_plugins = ("toolkit.testing.archival",)

_ENVIRON = pytest.StashKey[dict]()  # the environment as pytest started (before any test changed it)
_KEPT = pytest.StashKey[list]()  # names of databases --toolkit-keep kept, for the summary
_LOADS = pytest.StashKey[list]()  # the SQL files to load into the template
_AHEAD = pytest.StashKey[int]()
_PREVIOUS_SIGTERM = pytest.StashKey[Any]()  # the SIGTERM handler before unwind_on_sigterm replaced it
_RUN = pytest.StashKey[str]()  # this process's run id (databases and archival tables alike)
T = TypeVar("T")
ENGINES = ("auto", "docker", "embedded", "external")  # settings.ENGINES, which pytest's startup may not import


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("toolkit", "toolkit: a fresh pgvector database per test")
    group.addoption("--toolkit-engine", choices=ENGINES, default=None,
                    help="where the test server runs (default: as `toolkit up` would choose: TOOLKIT_ENGINE, .env, "
                         "the engine of the last `toolkit up` here, else auto)")
    group.addoption("--toolkit-url", default=None, metavar="URL",
                    help="use the running server at URL (engine external; or TOOLKIT_PG_URL)")
    group.addoption("--toolkit-project-dir", default=None, metavar="DIR",
                    help="the project whose server the tests use (its .env and .toolkit/; default: where pytest runs)")
    group.addoption("--toolkit-load", action="append", default=[], metavar="FILE.sql",
                    help="SQL run once into the template every test database is cloned from (repeatable)")
    group.addoption("--toolkit-keep", action="store_true", default=None,
                    help="keep each test's database after the test, for debugging (their names are listed at the end)")
    group.addoption("--toolkit-ahead", type=int, default=None, metavar="N",
                    help="databases each test process prepares ahead of the tests (default 2; 0: in the test's time)")
    parser.addini("toolkit_load", "SQL files loaded into the test template (paths relative to the ini file)",
                  type="paths", default=[])
    parser.addini("toolkit_keep", "keep each test's database after the test", type="bool", default=False)
    parser.addini("toolkit_engine", f"where the test server runs: {' | '.join(ENGINES)}", default="")
    parser.addini("toolkit_ahead", "databases each test process prepares ahead of the tests", default="2")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ENVIRON] = dict(os.environ)
    config.stash[_KEPT] = []
    # bad options end the run before any test, in one line (exit 4), as pytest's own do
    config.stash[_LOADS] = _load_files(config)
    ahead = _option(config, "ahead")
    try:
        config.stash[_AHEAD] = int(ahead)
    except ValueError:
        config.stash[_AHEAD] = -1
    if config.stash[_AHEAD] < 0:
        raise pytest.UsageError(f"toolkit: toolkit_ahead must be a whole number, 0 or more, not {ahead!r}")
    url = config.getoption("toolkit_url")
    if url:
        _url_checked(url)
    project = config.getoption("toolkit_project_dir")
    if project and not (config.invocation_params.dir / project).is_dir():  # a typo would start a server there
        raise pytest.UsageError(f"toolkit: --toolkit-project-dir {project} is not a directory")


def _option(config: pytest.Config, name: str) -> Any:
    given = config.getoption("toolkit_" + name)
    return given if given not in (None, []) else config.getini("toolkit_" + name)


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def toolkit_settings(pytestconfig: pytest.Config) -> Settings:
    """Where the test server is: flags (--toolkit-*) > environment > .env > the last `toolkit up` > defaults,
    as the `toolkit` command resolves them in the project directory. Override it in a conftest.py to choose."""
    from toolkit.settings import resolve

    flags = {"engine": _option(pytestconfig, "engine") or None, "external_url": pytestconfig.getoption("toolkit_url")}
    if flags["external_url"] and not flags["engine"]:
        flags["engine"] = "external"
    project = pytestconfig.getoption("toolkit_project_dir") or pytestconfig.invocation_params.dir
    return _failing_cleanly(lambda: resolve(flags, environ=pytestconfig.stash[_ENVIRON], project_dir=Path(project)))


@pytest.fixture(scope="session")
def pgvector_server(toolkit_settings: Settings, pytestconfig: pytest.Config) -> Iterator[Server]:
    """A running Postgres+pgvector: started when it is not running, and stopped at the end only if a test run
    started it (the last test process to finish stops it; a server you started with `toolkit up` stays)."""
    from toolkit.testing import server as servers

    unwind_on_sigterm(pytestconfig)
    server = _failing_cleanly(lambda: servers.acquire(toolkit_settings))
    try:
        yield server
    finally:
        servers.release(server)


@pytest.fixture(scope="session")
def toolkit_load() -> list[Load]:
    """Callables run once, in order, on the template every test database is cloned from, each given a psycopg
    connection as the owner (after the --toolkit-load SQL files). Override it to seed the schema:

        @pytest.fixture(scope="session")
        def toolkit_load():
            return [lambda conn: conn.execute("CREATE TABLE docs (id int, e vector(3))")]
    """
    return []


@pytest.fixture(scope="session")
def _toolkit_databases(pgvector_server: Server, toolkit_load: list[Load], pytestconfig: pytest.Config) -> Iterator[Databases]:
    from dataclasses import replace

    from toolkit.testing.databases import Databases, sql_file

    config = pytestconfig
    files = [sql_file(p) for p in config.stash[_LOADS]]
    ahead = config.stash[_AHEAD]
    databases = Databases(pgvector_server.admin, pgvector_server.url, _run_id(config), _worker_id(config),
                          loads=[*files, *toolkit_load], ahead=ahead, keep=bool(_option(config, "keep")))
    _failing_cleanly(databases.open)
    try:
        yield databases
    finally:
        config.stash[_KEPT].extend(replace(pgvector_server.url, database=name).redacted("plain")
                                   for name in databases.close())


@pytest.fixture
def pgvector_db(_toolkit_databases: Databases) -> Iterator[TestDatabase]:
    """A new database for this test, owned by the application role (not a superuser), with the vector extension
    and whatever the loads put in the template; dropped after the test (kept with --toolkit-keep).
    Attributes: url (postgresql+pg8000://), libpq_url (postgresql://), name; connect() gives a psycopg connection."""
    db = _failing_cleanly(_toolkit_databases.take)
    try:
        yield db
    finally:
        _failing_cleanly(lambda: _toolkit_databases.give_back(db))


@pytest.fixture
def pgvector_env(pgvector_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> TestDatabase:
    """``pgvector_db``, with PGVECTOR_TEST_DB_URL set to its URL for the test (code that reads the variable)."""
    monkeypatch.setenv("PGVECTOR_TEST_DB_URL", pgvector_db.url)
    return pgvector_db


# --- reporting -------------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown (runner's sessionfinish) kept them
def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["toolkit_kept"] = [*session.config.stash[_KEPT]]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    kept = getattr(node, "workeroutput", {}).get("toolkit_kept", [])
    node.config.stash[_KEPT].extend(kept)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.section("toolkit: databases kept")
        terminalreporter.line(f"{len(kept)} kept (--toolkit-keep), owned by the application role:")
        for url in sorted(kept):
            terminalreporter.line(f"  {url}")
        terminalreporter.line("drop one with: toolkit psql -c 'DROP DATABASE \"NAME\"'")


# --- helpers ---------------------------------------------------------------------------------------------


def unwind_on_sigterm(config: pytest.Config) -> None:
    """From the first server this run starts or shares until pytest ends: SIGTERM (how CI cancels a job, how
    Docker stops one) unwinds like Ctrl-C, so teardown stops what the run started and drops its databases.
    Left alone when the suite or another plugin has a handler of its own, and outside the main thread."""
    import signal
    import threading

    if _PREVIOUS_SIGTERM in config.stash or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def terminated(signum: int, frame: Any) -> None:
        from toolkit.errors import Terminated

        raise Terminated("SIGTERM")

    config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, terminated)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PREVIOUS_SIGTERM in config.stash:
        import signal

        signal.signal(signal.SIGTERM, config.stash[_PREVIOUS_SIGTERM])


def _load_files(config: pytest.Config) -> list[Path]:
    given = [Path(p) if Path(p).is_absolute() else config.invocation_params.dir / p
             for p in config.getoption("toolkit_load")]
    files = given or [Path(p) for p in config.getini("toolkit_load")]
    for path in files:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise pytest.UsageError(f"toolkit: the load file {path} {problem} (--toolkit-load / toolkit_load)")
    return files


def _url_checked(url: str) -> None:
    """A --toolkit-url that is no database URL ends the run before any test (the message hides its password)."""
    from toolkit.errors import ToolkitError
    from toolkit.urls import parse

    try:
        parse(url)
    except ToolkitError as exc:
        raise pytest.UsageError(f"toolkit: --toolkit-url: {exc.one_line()}") from None


def _run_id(config: pytest.Config) -> str:
    """Shared by the xdist workers of a run (the controller's, handed to them), new for every run; one per
    process, whoever asks. Not xdist's testrunuid: --testrunuid sets it, the same for runs that must not share."""
    if _RUN not in config.stash:
        workerinput = getattr(config, "workerinput", None)
        if workerinput and workerinput.get("toolkit_run"):
            config.stash[_RUN] = str(workerinput["toolkit_run"])
        else:
            from toolkit.testing.databases import new_run

            config.stash[_RUN] = new_run()
    return config.stash[_RUN]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist's controller starting a worker: the worker's run is the controller's."""
    node.workerinput["toolkit_run"] = _run_id(node.config)


def _worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def _failing_cleanly(call: Callable[[], T]) -> T:
    """``call()``; a toolkit error fails the test in one line (what, why, how to fix), without a traceback."""
    from toolkit.errors import ToolkitError

    try:
        return call()
    except ToolkitError as exc:
        message = f"toolkit: {exc.one_line()}" + (f"\n{exc.detail}" if exc.detail else "")
    pytest.fail(message, pytrace=False)  # outside the except: no "during handling of the above exception"
