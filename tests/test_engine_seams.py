"""The seams between api, engines and their helpers: the URL comes from the engine that started the
server, one port-in-use error, one connect host, one wheel locator, doctor asks the engines, the library
never prints, a Docker daemon that hangs or fails every request is one line in seconds. Fakes stand in
for engines (and a Unix socket for dockerd) only where the point is who asks whom."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_toolkit
from toolkit import api, engines
from toolkit.engines.base import Endpoint, EngineStatus, Progress, quiet
from toolkit.errors import PortInUseError
from toolkit.ports import check_free, connect_host, free_port, in_use_error
from toolkit.settings import Settings, resolve
from toolkit.urls import PgUrl, parse


class FakeEngine:
    """An engine whose server answers somewhere the settings do not say (a port it picked itself)."""

    name = "fake"
    calls: list[str] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def up(self, *, progress: Progress = quiet) -> Endpoint:
        FakeEngine.calls.append("up")
        progress("starting the fake server")
        return self.endpoint()

    def endpoint(self) -> Endpoint:
        return Endpoint(PgUrl("fake_role", "s3cret/:@", "fake-host", 6543, "fake db"))

    def choose_free(self) -> list[Any]:
        return []

    def down(self, *, purge: bool = False) -> None:
        FakeEngine.calls.append("down")

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, True, "fake", {"port": self.settings.db.port})

    def logs(self, tail: int = 100) -> str:
        return ""

    def psql_argv(self, url: str) -> list[str]:
        return ["psql", url]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> Settings:
    monkeypatch.setitem(engines.ENGINES, "fake", f"{__name__}:FakeEngine")
    monkeypatch.setattr("toolkit.settings.ENGINES", ("auto", "docker", "embedded", "external", "fake"))
    FakeEngine.calls = []
    return resolve({"engine": "fake"}, environ={}, project_dir=isolated)


def test_up_uses_the_url_the_engine_hands_back(fake: Settings) -> None:
    heard: list[str] = []
    result = api.up(fake, progress=lambda line, live=False: heard.append(line))
    expected = "postgresql+pg8000://fake_role:s3cret%2F%3A%40@fake-host:6543/fake%20db"
    assert result.url.render() == expected  # not the settings' memgpt@localhost
    from dotenv import dotenv_values

    assert dotenv_values(fake.env_file) == {"PGVECTOR_TEST_DB_URL": expected}
    assert heard == ["starting the fake server"]  # progress reaches the caller
    assert api.env_values(fake) == {"PGVECTOR_TEST_DB_URL": expected}  # env asks the engine too
    # status: where the engine says its server runs
    assert api.status(fake)["url"] == f"postgresql+pg8000://fake_role:***@fake-host:{fake.db.port}/fake%20db"


def test_library_context_yields_the_engines_url(fake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeEngine, "status", lambda self: EngineStatus("fake", False))
    with api.postgres(engine="fake", project_dir=str(fake.project_dir)) as db:
        assert db.url.startswith("postgresql+pg8000://fake_role:") and "@fake-host:6543/" in db.url
        assert FakeEngine.calls == ["up"]
    assert FakeEngine.calls == ["up", "down"]  # it was stopped: stopped on exit


def test_psql_url_carries_no_password() -> None:
    url = parse("postgresql://us%40er:p%40ss%3Aw%2Ford@db.example:5433/my%20db?sslmode=require")
    assert url.render("plain", password=False) == "postgresql://us%40er@db.example:5433/my%20db?sslmode=require"
    assert "p%40ss" in url.render("plain")
    assert url.with_address(host="127.0.0.1").render() == "postgresql+pg8000://us%40er:p%40ss%3Aw%2Ford@127.0.0.1:5433/my%20db"


@pytest.mark.parametrize("bind,host", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("*", "127.0.0.1"),
                                       ("::", "::1"), ("::1", "::1"), ("127.0.0.1, ::1", "127.0.0.1"),
                                       ("192.168.1.5", "192.168.1.5")])
def test_connect_host(bind: str, host: str) -> None:
    assert connect_host(bind) == host


def test_one_port_in_use_error_names_the_holder() -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(PortInUseError) as caught:
            check_free("127.0.0.1", port)
        # then the holder's name in parentheses, as far as the OS lets us see it
        assert caught.value.message.startswith(f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()} (")
        assert "--port N" in (caught.value.hint or "") and "stop that process" in (caught.value.hint or "")
    # an engine that knows better names it, with its own way out
    named = in_use_error("127.0.0.1", port, holder=lambda p: ("container db-1", "`docker stop db-1`"))
    assert named.message == f"port {port} on 127.0.0.1 is already in use by container db-1"
    assert "`docker stop db-1`" in (named.hint or "")


def test_one_wheel_locator(tmp_path: Path) -> None:
    from toolkit.engines import wheel

    assert wheel.missing(wheel.install_dir()) == []
    assert wheel.missing(tmp_path) == list(wheel.REQUIRED)
    (tmp_path / "lib" / "postgresql").mkdir(parents=True)
    (tmp_path / "lib" / "postgresql" / "vector.so").touch()  # where distribution packages put it
    assert "lib/vector.so" not in wheel.missing(tmp_path)


def test_doctor_asks_the_engine_who_holds_the_port(fake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.doctor import run_checks

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", fake.db.port))
        squatter.listen()
        port = {c.name: c for c in run_checks(fake)}["port"]
        assert port.ok and "held by the toolkit's own server (fake)" in port.detail
        monkeypatch.setattr(FakeEngine, "status", lambda self: EngineStatus("fake", False))
        port = {c.name: c for c in run_checks(fake)}["port"]
        assert not port.ok and f"is held by pid {os.getpid()}" in port.detail


def test_docker_engine_reports_through_progress_not_stderr(capfd: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    """A replacement of the container is announced to the caller, never printed by the library."""
    from toolkit.engines.docker import DockerEngine

    engine = DockerEngine(resolve({"engine": "docker"}, environ={}, project_dir=isolated))
    heard: list[str] = []
    engine._progress = lambda line, live=False: heard.append(line)

    class Old:
        name, status, ports, attrs = "memgpt-db-test", "exited", {}, {"Mounts": []}

    class Stop(Exception):
        pass

    def stop_after_announcing(*args: Any, **kwargs: Any) -> None:
        raise Stop

    monkeypatch.setattr(engine, "_ensure_image", lambda: None)
    monkeypatch.setattr(engine, "_check_volume_free", lambda old=None: None)
    monkeypatch.setattr(engine, "_check_port", lambda: None)
    monkeypatch.setattr(engine, "_create", stop_after_announcing)
    monkeypatch.setattr(engine, "_put_back", lambda old, running: None)
    Old.rename = lambda self, name: None  # type: ignore[attr-defined]
    with pytest.raises(Stop):
        engine._replace(Old())
    assert heard == ["recreating container memgpt-db-test for the new settings (data kept)"]
    assert capfd.readouterr() == ("", "")


# -- a Docker daemon that misbehaves (no Docker needed: a Unix socket plays the daemon) --------------

@pytest.fixture
def hung_docker(isolated: Path) -> Iterator[tuple[Path, list[socket.socket]]]:
    """A Unix socket that accepts connections and never answers, as a hung dockerd: (its path, the
    connections it accepted so far)."""
    path = isolated / "hung.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(50)
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # the socket was shut down: the test is over
            pass

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield path, accepted
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the pending accept
        server.close()
        acceptor.join(timeout=10)
        for conn in accepted:
            conn.close()


def test_a_daemon_that_never_answers_fails_in_seconds(hung_docker: tuple[Path, list[socket.socket]]) -> None:
    """A socket that accepts and never answers (a hung dockerd): the ping's timeout, not a minute."""
    path, _ = hung_docker
    # the subprocess timeout guards against the hang: the old code waited 60 s, then named 3 s
    done = run_toolkit("up", "--engine", "docker", env={"DOCKER_HOST": f"unix://{path}"}, timeout=45)
    assert done.returncode == 4, done.stderr
    assert "did not answer within 3s" in done.stderr


def test_a_daemon_failing_requests_is_one_line_not_an_internal_error(isolated: Path) -> None:
    """It answers the version ping, then 500 to everything: exit 4 (the engine cannot run), not 70."""
    import json
    import socketserver
    from http.server import BaseHTTPRequestHandler

    class Daemon(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            ok = self.path.endswith("/version")
            body = json.dumps({"ApiVersion": "1.41", "Version": "20.10"} if ok else {"message": "boom"}).encode()
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = do_GET  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> Any:  # BaseHTTPRequestHandler wants a (host, port) client address
            conn, _ = self.socket.accept()
            return conn, ("local", 0)

    path = isolated / "failing.sock"
    server = Server(str(path), Daemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for argv in (["up", "--engine", "docker"], ["status", "--engine", "docker"], ["down", "--engine", "docker"]):
            done = run_toolkit(*argv, env={"DOCKER_HOST": f"unix://{path}"}, timeout=60)
            assert done.returncode == 4, (argv, done.stderr)
            assert "failed a request: boom" in done.stderr and "internal error" not in done.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_a_silent_daemon_is_pinged_once_per_command(embedded_down_after: Path,
                                                   hung_docker: tuple[Path, list[socket.socket]]) -> None:
    """Embedded data and a Docker record: asking whether the volume still exists and then using the
    engine must not pay the ping's timeout twice."""
    from toolkit import state

    assert run_toolkit("up", "--engine", "embedded").returncode == 0
    assert run_toolkit("down").returncode == 0
    state.record_up(embedded_down_after / ".toolkit", "docker", int(os.environ["TOOLKIT_PG_PORT"]))
    path, accepted = hung_docker
    done = run_toolkit("status", env={"DOCKER_HOST": f"unix://{path}"}, timeout=45)
    assert done.returncode in (1, 4), done.stderr
    assert "did not answer within 3s" in done.stderr
    assert len(accepted) == 1
