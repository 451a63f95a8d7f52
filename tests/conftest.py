"""Test harness: every test runs in a fresh project dir with a fake HOME, free ports, and no TOOLKIT_*
variables from the developer's shell, so no test can touch the user's .env, ~/.memgpt, or port 8888.

Session fixtures start real servers (an embedded Postgres+pgvector here; a Chroma server and moto's S3
server in ``tests/backend_support.py``, loaded as a plugin) once and stop them at the end. Test modules
use them by naming them; helpers that are not fixtures are in ``tests/support.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# helpers this module uses; test modules import them from tests.support
from tests.support import CLIENTS, run_toolkit
from toolkit.ports import free_port
from toolkit.settings import Settings, resolve
from toolkit.testing.server import Server
from toolkit.urls import PgUrl

# the session servers of the backend suites (chroma_http, s3) and the Docker fixtures (docker_api, dsettings,
# compose, ...): fixtures for every module, no imports
pytest_plugins = ("tests.backend_support", "tests.docker_support")

UV_CACHE = os.environ.get("UV_CACHE_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the CLIs the tests start and signal: a suite started in the background of a
    non-interactive shell (`make test &`) inherits SIGINT ignored, and every process it starts would too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# variables the toolkit reads; cleared so the developer's own shell cannot leak into a test
_READ_VARS = ("PGVECTOR_TEST_DB_URL", "MEMGPT_CONFIG_PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def _timezone_unchanged() -> Iterator[None]:
    """A test that changes the local timezone (TZ and ``time.tzset()``) must put both back: a leak makes
    every later test that renders local time depend on the order tests run in."""
    before = (os.environ.get("TZ"), time.tzname, time.timezone)
    yield
    after = (os.environ.get("TZ"), time.tzname, time.timezone)
    assert after == before, f"the test left the timezone changed (TZ, tzname, timezone): {before} -> {after}"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir as cwd, HOME elsewhere in tmp, TOOLKIT_PG_PORT / TOOLKIT_CHROMA_PORT set to free ports."""
    project = tmp_path / "project"
    home = tmp_path / "home"
    project.mkdir()
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("TOOLKIT_") or name in _READ_VARS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MEMGPT_CONFIG_PATH", str(home / ".memgpt" / "config"))
    monkeypatch.setenv("TOOLKIT_PG_PORT", str(free_port()))
    monkeypatch.setenv("TOOLKIT_CHROMA_PORT", str(free_port()))
    monkeypatch.setenv("TOOLKIT_CLIENTS_DIR", str(CLIENTS))
    monkeypatch.setenv("UV_CACHE_DIR", UV_CACHE)
    monkeypatch.chdir(project)
    return project


@pytest.fixture
def embedded_down_after(isolated: Path) -> Iterator[Path]:
    """The isolated project, whose embedded server (if a test started one) is stopped and purged afterwards,
    even when the test fails: no postmaster outlives its test."""
    yield isolated
    run_toolkit("down", "--purge", "--yes", "--engine", "embedded", cwd=isolated)


@pytest.fixture(scope="session")
def toolkit_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The toolkit plugin's server for this suite (it overrides the plugin's own, which would use this checkout's
    server): an embedded Postgres+pgvector on a free port in a temp state dir, purged at the end."""
    from toolkit import api

    root = tmp_path_factory.mktemp("pg-session")
    settings = resolve({"engine": "embedded", "db.port": free_port(), "timeout": 120.0}, environ={}, project_dir=root)
    yield settings
    api.down(settings, purge=True)  # after pgvector_server stopped it


@pytest.fixture(scope="session")
def pg_settings(pgvector_server: Server) -> Settings:
    """The session server's settings (the plugin's pgvector_server, started once for the session)."""
    return pgvector_server.settings


@pytest.fixture(scope="session")
def pg_admin(pgvector_server: Server) -> PgUrl:
    """The session server's superuser (postgres) on its maintenance database, over 127.0.0.1."""
    return pgvector_server.admin.url.with_address(host="127.0.0.1")


@pytest.fixture(scope="session")
def pg_url(pg_settings: Settings) -> str:
    """libpq URL (postgresql://memgpt:memgpt@127.0.0.1:PORT/memgpt) of the session server."""
    return pg_settings.db.url(host="127.0.0.1").libpq


@pytest.fixture(scope="session")
def pg_url_pg8000(pg_settings: Settings) -> str:
    return pg_settings.db.url(host="127.0.0.1").render("pg8000")
