"""A shared machine: at its default ports (8000, 9000) the toolkit uses only a helper server it started in
this checkout. Whatever else answers there (another user's server, another checkout's) gets no request
from smoke; `up` starts this checkout's own server on a free port and says so, and smoke, status, down
and logs follow it there. A port the user gives that something else holds is an error (exit 3). Status
commands exit 0 whether the server runs or not.

The default ports are held by listeners these tests own (waiting until they are free), so the tests never
meet a real user's server nor each other; the conftest's TOOLKIT_CHROMA_PORT is cleared for them."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import alive, processes, run_toolkit, wait_until
from toolkit.ports import free_port

DEFAULTS = {"TOOLKIT_CHROMA_PORT": ""}  # empty is unset: the toolkit's own default, 8000
SMALL = ("-n", "5", "--dim", "8")
COLLECTIONS = "/api/v2/tenants/default_tenant/databases/default_database/collections"


class Listener:
    """An HTTP server of the test's own on ``port`` that answers 200 to everything (it passes for a
    healthy Chroma or S3 server) and records every request it gets, as (method, path)."""

    def __init__(self, port: int) -> None:
        requests: list[tuple[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = port
        self.requests = requests
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _hold(port: int) -> Listener:
    """A listener on ``port``, once the port is free (another run of these tests may hold it a while)."""
    held: list[Listener] = []

    def bound() -> bool:
        try:
            held.append(Listener(port))
        except OSError:
            return False
        return True

    wait_until(bound, 600, f"port {port} to be free for the test's own listener", interval=0.5)
    return held[0]


@pytest.fixture
def default_ports() -> Iterator[dict[str, Listener]]:
    """The default ports of the Chroma (8000) and S3 (9000) servers, held by the test's listeners."""
    chroma = _hold(8000)
    try:
        s3 = _hold(9000)
        try:
            yield {"chroma": chroma, "s3": s3}
        finally:
            s3.close()
    finally:
        chroma.close()


@pytest.fixture(autouse=True)
def _no_server_left(tmp_path: Path) -> Iterator[None]:
    yield
    for marker in ("chromadb.cli.cli", "moto.server"):
        for pid in processes(marker, under=tmp_path):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _tk(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return run_toolkit(*args, cwd=cwd, env={**DEFAULTS, **(env or {})})


def _json(*args: str, cwd: Path | None = None) -> Any:
    done = _tk(*args, "--json", cwd=cwd)
    assert done.returncode in (0, 1, 6), done.stdout + done.stderr
    return json.loads(done.stdout)


def test_a_foreign_server_on_the_default_port_gets_nothing_and_smoke_passes_on_its_own(
        isolated: Path, default_ports: dict[str, Listener]) -> None:
    foreign = default_ports["chroma"]
    before = _tk("smoke", "--backend", "chroma-http", *SMALL)
    assert before.returncode == 6, before.stdout + before.stderr
    assert "not started by this checkout, so it is not used" in before.stdout and "toolkit chroma up" in before.stdout
    assert foreign.requests == []  # not even a probe: smoke only knocks (TCP) at a server it will not use
    status = _tk("chroma", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("chroma: stopped (what answers at http://127.0.0.1:8000")
    assert _json("chroma", "status")["running"] is False

    up = _tk("chroma", "up", "--format", "current")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "port 8000 is in use by" in up.stdout and "a server not started in this checkout" in up.stdout
        pid = json.loads((isolated / ".toolkit" / "chroma.pid").read_text())["pid"]
        port = json.loads((isolated / ".toolkit" / "chroma.pid").read_text())["port"]
        assert port != 8000 and f"listening on {port} instead" in up.stdout
        probed = list(foreign.requests)
        assert foreign.writes() == []

        smoked = _json("smoke", "--backend", "chroma-http", *SMALL)
        assert smoked["ok"], smoked
        assert f" 127.0.0.1:{port} " in smoked["results"][0]["location"], smoked
        state = _json("chroma", "status")
        assert state["running"] and state["pid"] == pid and state["url"] == f"http://127.0.0.1:{port}"
        assert _tk("chroma", "up", "--format", "current").returncode == 0  # idempotent where it runs
        assert foreign.requests == probed and foreign.writes() == []  # smoke, status, up again: nothing there
    finally:
        down = _tk("chroma", "down")
    assert down.stdout.strip() == f"chroma: stopped (was at http://127.0.0.1:{port})"
    assert not alive(pid)


def test_an_explicit_port_something_else_holds_is_an_error(isolated: Path) -> None:
    foreign = Listener(free_port())
    try:
        for name in ("chroma", "s3"):
            up = _tk(name, "up", "--port", str(foreign.port), "--format" if name == "chroma" else "--no-export",
                     *(["current"] if name == "chroma" else []), "--timeout", "5")
            assert up.returncode == 3, up.stdout + up.stderr
            assert f"port {foreign.port} on 127.0.0.1 is already in use by pid {os.getpid()}" in up.stderr, up.stderr
            assert "Traceback" not in up.stderr
        # the environment is the user's choice too
        up = run_toolkit("chroma", "up", "--format", "current", "--timeout", "5",
                         env={"TOOLKIT_CHROMA_PORT": str(foreign.port)})
        assert up.returncode == 3, up.stdout + up.stderr
        assert foreign.writes() == [] and not (isolated / ".toolkit" / "chroma.pid").exists()
        # a server at an address the user chose is theirs to use: smoke goes there
        smoked = run_toolkit("smoke", "--backend", "chroma-http", *SMALL, env={"TOOLKIT_CHROMA_PORT": str(foreign.port)})
        assert smoked.returncode == 6 and foreign.requests, smoked.stdout + smoked.stderr
    finally:
        foreign.close()


def test_another_projects_chroma_server_on_the_default_port_is_left_alone(
        isolated: Path, tmp_path: Path, default_ports: dict[str, Listener]) -> None:
    """A real Chroma server another project started on 8000 (which it chose explicitly): this project's
    smoke reports its own server as not running, then `chroma up` starts one on a free port, and the
    other's collections, process and pid file stay as they were."""
    import urllib.request

    other = tmp_path / "other-project"
    other.mkdir()
    default_ports["chroma"].close()  # hand 8000 to the other project's real server
    theirs = _tk("chroma", "up", "--format", "current", "--port", "8000", "--json", cwd=other)
    try:
        assert theirs.returncode == 0, theirs.stdout + theirs.stderr
        their_pid = json.loads(theirs.stdout)["pid"]

        def collections() -> list[str]:
            with urllib.request.urlopen(f"http://127.0.0.1:8000{COLLECTIONS}", timeout=10) as answer:
                return sorted(c["name"] for c in json.load(answer))

        listed = collections()
        before = _tk("smoke", "--backend", "chroma-http", *SMALL)
        assert before.returncode == 6 and "not started by this checkout, so it is not used" in before.stdout, before.stdout
        up = _tk("chroma", "up", "--format", "current")
        assert up.returncode == 0 and "port 8000 is in use by" in up.stdout, up.stdout + up.stderr
        smoked = _json("smoke", "--backend", "chroma-http", *SMALL)
        assert smoked["ok"] and " 127.0.0.1:8000 " not in smoked["results"][0]["location"], smoked
        assert collections() == listed
        assert _tk("chroma", "down").stdout.startswith("chroma: stopped (was at")
        assert alive(their_pid) and (other / ".toolkit" / "chroma.pid").is_file()
        assert _json("chroma", "status", cwd=other)["pid"] == their_pid
    finally:
        _tk("chroma", "down", cwd=other)


def test_up_on_a_port_then_smoke_status_and_logs_follow_it(isolated: Path) -> None:
    port = free_port()
    up = _tk("chroma", "up", "--format", "current", "--port", str(port))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        smoked = _json("smoke", "--backend", "chroma-http", *SMALL)  # no port given: where it was started
        assert smoked["ok"] and f" 127.0.0.1:{port} " in smoked["results"][0]["location"], smoked
        status = _tk("chroma", "status")
        assert status.returncode == 0 and status.stdout.startswith(f"chroma: running at http://127.0.0.1:{port} (pid")
        assert _tk("chroma", "up", "--format", "current").returncode == 0  # no port: the one it runs on
        assert _tk("chroma", "logs").stdout.strip()
    finally:
        down = _tk("chroma", "down")
    assert down.stdout.strip() == f"chroma: stopped (was at http://127.0.0.1:{port})"
    stopped = _tk("chroma", "status")  # the port record went with it: the default again
    assert stopped.returncode == 0 and stopped.stdout.startswith("chroma: stopped"), stopped.stdout


def test_two_checkouts_each_run_make_smoke_on_their_own_servers(
        tmp_path: Path, default_ports: dict[str, Listener]) -> None:
    """`make smoke` (chroma up, s3 up, smoke) with no flags in two checkouts at once; then one checkout's
    .env names an S3 port the other's server holds now: it is not used, and `s3 up` moves away from it."""
    checkouts = [tmp_path / "one", tmp_path / "two"]
    servers: dict[Path, dict[str, int]] = {}
    try:
        for checkout in checkouts:
            checkout.mkdir()
            for name in ("chroma", "s3"):
                up = _tk(name, "up", *(["--format", "current"] if name == "chroma" else []), cwd=checkout)
                assert up.returncode == 0, up.stdout + up.stderr
            servers[checkout] = {name: json.loads((checkout / ".toolkit" / f"{name}.pid").read_text())["port"]
                                 for name in ("chroma", "s3")}
            assert f"TOOLKIT_S3_ENDPOINT='http://127.0.0.1:{servers[checkout]['s3']}'" in (checkout / ".env").read_text()
        ports = [p for ports in servers.values() for p in ports.values()]
        assert len(set(ports)) == 4 and not {8000, 9000} & set(ports), servers
        for checkout in checkouts:
            for backend in ("chroma-http", "lancedb-s3"):
                smoked = _json("smoke", "--backend", backend, *SMALL, cwd=checkout)
                assert smoked["ok"], smoked
        assert all(listener.writes() == [] for listener in default_ports.values())

        # one's S3 server stops; the other's takes its port: one's .env (written by `s3 up`) names it now
        one, two = checkouts
        freed = servers[one]["s3"]
        assert _tk("s3", "down", cwd=one).returncode == 0 and _tk("s3", "down", cwd=two).returncode == 0
        moved = _tk("s3", "up", "--port", str(freed), "--no-export", cwd=two)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        stale = _tk("smoke", "--backend", "lancedb-s3", *SMALL, cwd=one)
        assert stale.returncode == 6 and "not started by this checkout, so it is not used" in stale.stdout, stale.stdout
        status = _tk("s3", "status", cwd=one)
        assert status.returncode == 0 and status.stdout.startswith("s3: stopped (what answers at"), status.stdout
        again = _tk("s3", "up", cwd=one)
        assert again.returncode == 0 and f"port {freed} is in use by" in again.stdout, again.stdout + again.stderr
        assert f"TOOLKIT_S3_ENDPOINT='http://127.0.0.1:{freed}'" not in (one / ".env").read_text()
        assert _json("smoke", "--backend", "lancedb-s3", *SMALL, cwd=one)["ok"]
    finally:
        for checkout in checkouts:
            for name in ("chroma", "s3"):
                _tk(name, "down", cwd=checkout)


@pytest.mark.parametrize("name", ["chroma", "s3"])
def test_service_status_exits_0_running_or_not(isolated: Path, name: str) -> None:
    stopped = run_toolkit(name, "status")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.strip() == f"{name}: stopped (start it with `toolkit {name} up`)"
    assert json.loads(run_toolkit(name, "status", "--json").stdout)["running"] is False
    # it cannot tell: an error, not "stopped"
    (isolated / ".env").mkdir()
    broken = run_toolkit(name, "status")
    assert broken.returncode == 2 and "is a directory" in broken.stderr, broken.stdout + broken.stderr


def test_toolkit_status_exits_0_when_stopped(isolated: Path) -> None:
    stopped = run_toolkit("status", "--engine", "embedded")
    assert stopped.returncode == 0 and "postgres not running" in stopped.stdout, stopped.stdout + stopped.stderr
    assert json.loads(run_toolkit("status", "--engine", "embedded", "--json").stdout)["running"] is False
