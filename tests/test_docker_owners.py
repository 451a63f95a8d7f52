"""One owner per volume, nothing destroyed before its replacement is proven: the Docker engine and the
compose stack against a real engine (issue 16). Skips without an engine, except under CI=true."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import docker_engine, sql
from tests.support import run_toolkit, wait_until
from toolkit.errors import ImageUnavailableError, InUseError, NotReadyError, ToolkitError
from toolkit.ports import free_port
from toolkit.settings import Settings

pytestmark = pytest.mark.docker


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"TOOLKIT_PG_IMAGE": settings.image, "TOOLKIT_PG_CONTAINER": settings.container,
            "TOOLKIT_PG_VOLUME": settings.volume, "TOOLKIT_PG_PORT": str(settings.db.port), **extra}


def _insert(settings: Settings, rows: range) -> int:
    """Insert ``rows`` one transaction each; the count acknowledged (committed) before an error."""
    import psycopg

    done = 0
    try:
        with psycopg.connect(settings.db.url(host="127.0.0.1").libpq, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS w (id int PRIMARY KEY, pad text)")
            for i in rows:
                conn.execute("INSERT INTO w VALUES (%s, repeat('x', 200))", (i,))
                done += 1
    except psycopg.Error:
        pass
    return done


def test_compose_and_toolkit_side_by_side_lose_no_rows(dsettings: Settings, compose: Any) -> None:
    """The issue's case: `toolkit up` and compose, with the user's TOOLKIT_PG_VOLUME in the environment
    compose sees. compose keeps to its own volume: every acknowledged row survives, the index agrees."""
    docker_engine(dsettings).up()
    acked: list[int] = []
    writer = threading.Thread(target=lambda: acked.append(_insert(dsettings, range(4000))))
    writer.start()
    theirs = compose(TOOLKIT_PG_PORT=str(free_port()), TOOLKIT_PG_VOLUME=dsettings.volume)
    writer.join()
    mounts = {m["Name"] for m in theirs.attrs["Mounts"] if m["Type"] == "volume"}
    assert dsettings.volume not in mounts
    # restart ours (a clean stop, then recovery from its own files only) and count
    docker_engine(dsettings).down()
    docker_engine(dsettings).up()
    assert acked == [4000]
    assert sql(dsettings, "SELECT count(*) FROM w") == [(4000,)]
    sql(dsettings, "SET enable_seqscan = off")
    assert sql(dsettings, "SELECT count(*) FROM (SELECT id FROM w ORDER BY id) s") == [(4000,)]
    assert sql(dsettings, "SELECT count(*) FROM w WHERE id BETWEEN 0 AND 3999") == [(4000,)]


def test_a_volume_a_running_container_mounts_is_never_mounted_again(dsettings: Settings, compose: Any,
                                                                      docker_api: Any) -> None:
    """The reverse order, with the user pointing both at one volume: compose runs on it, `up` refuses."""
    theirs = compose(TOOLKIT_PG_PORT=str(free_port()), TOOLKIT_COMPOSE_PG_VOLUME=dsettings.volume)
    done = run_toolkit("up", "--engine", "docker", env=_env(dsettings))
    assert done.returncode == 3, done.stderr
    assert f"volume {dsettings.volume} is mounted by the running container {theirs.name}" in done.stderr
    assert "compose project" in done.stderr and "Traceback" not in done.stderr
    assert not docker_api.containers.list(all=True, filters={"name": f"^/{dsettings.container}$"})
    # and a stopped container of ours on it is not started beside theirs either
    theirs.stop()
    docker_engine(dsettings).up()
    docker_api.containers.get(dsettings.container).stop()
    theirs.start()
    with pytest.raises(InUseError):
        docker_engine(dsettings).up()
    assert docker_api.containers.get(dsettings.container).status == "exited"


def test_a_volume_created_meanwhile_by_another_checkout_is_refused(dsettings: Settings, docker_api: Any,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's create returns an existing volume silently: the labels of what came back decide. The
    interleaving (B creates between A's lookup and A's create) is forced; the engine is real."""
    from docker.errors import NotFound
    from docker.models.volumes import VolumeCollection

    from toolkit.engines.docker import labels

    engine = docker_engine(dsettings)

    def get_then_lose_the_race(self: Any, name: str) -> Any:
        monkeypatch.undo()
        other = replace(dsettings, project_dir=tmp_path / "checkout-b")
        docker_api.volumes.create(name, labels=labels(other))
        raise NotFound("no such volume")

    monkeypatch.setattr(VolumeCollection, "get", get_then_lose_the_race)
    with pytest.raises(ToolkitError, match="belongs to the toolkit project at .*checkout-b"):
        engine.up()
    assert not docker_api.containers.list(all=True, filters={"name": f"^/{dsettings.container}$"})


def test_a_container_created_meanwhile_by_another_checkout_is_one_line(dsettings: Settings, docker_api: Any,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       made: dict[str, list[str]]) -> None:
    """409 Conflict on create: the name was taken a moment ago. One line naming the owner, never an internal error."""
    from docker.models.containers import ContainerCollection

    engine = docker_engine(dsettings)
    other = docker_engine(replace(dsettings, project_dir=tmp_path / "checkout-b", volume=dsettings.volume + "_b",
                            db=replace(dsettings.db, port=free_port())))
    made["volumes"].append(dsettings.volume + "_b")
    real_create = ContainerCollection.create

    def create_after_the_other(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()
        other._create()  # checkout B wins the name
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", create_after_the_other)
    with pytest.raises(ToolkitError, match="belongs to the toolkit project at .*checkout-b"):
        engine.up()


def test_five_concurrent_ups_in_one_checkout(dsettings: Settings, docker_api: Any) -> None:
    env = {**os.environ, **_env(dsettings)}
    procs = [subprocess.Popen([sys.executable, "-m", "toolkit", "up", "--engine", "docker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0] * 5, results
    assert len(docker_api.containers.list(all=True, filters={"name": f"^/{dsettings.container}$"})) == 1
    done = run_toolkit("down", "--all", "--purge", "--yes", env=_env(dsettings))
    assert done.returncode == 0, done.stderr


def _holding(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_port_held_elsewhere_leaves_the_running_container_alone(dsettings: Settings, docker_api: Any) -> None:
    docker_engine(dsettings).up()
    before = docker_api.containers.get(dsettings.container).id
    port = free_port()
    with _holding(port):
        done = run_toolkit("up", "--engine", "docker", "--port", str(port), env=_env(dsettings))
    assert done.returncode == 3, done.stderr
    after = docker_api.containers.get(dsettings.container)
    assert (after.id, after.status) == (before, "running")
    assert sql(dsettings, "SELECT 1") == [(1,)]


def test_an_image_that_cannot_be_had_leaves_the_running_container_alone(dsettings: Settings,
                                                                         docker_api: Any) -> None:
    """A shell without TOOLKIT_PG_IMAGE asks for an image that cannot be pulled here."""
    assert run_toolkit("up", "--engine", "docker", env=_env(dsettings)).returncode == 0
    before = docker_api.containers.get(dsettings.container).id
    done = run_toolkit("up", env={**_env(dsettings), "TOOLKIT_PG_IMAGE": f"127.0.0.1:9/absent-{uuid.uuid4().hex[:6]}:1"})
    assert done.returncode == 4, done.stderr
    assert "pulling it failed" in done.stderr
    after = docker_api.containers.get(dsettings.container)
    assert (after.id, after.status) == (before, "running")
    with pytest.raises(ImageUnavailableError):
        docker_engine(replace(dsettings, image="127.0.0.1:9/absent:1")).up()
    assert docker_api.containers.get(dsettings.container).id == before


def test_a_replacement_that_cannot_get_ready_puts_the_old_container_back(dsettings: Settings,
                                                                          docker_api: Any) -> None:
    """New settings the volume refuses (the role exists with another password): the old container, as it was."""
    docker_engine(dsettings).up()
    before = docker_api.containers.get(dsettings.container).id
    changed = replace(dsettings, timeout=15.0, db=replace(dsettings.db, password="another-secret", port=free_port()))
    with pytest.raises(NotReadyError):
        docker_engine(changed).up()
    names = {c.name for c in docker_api.containers.list(all=True, filters={"name": dsettings.container})}
    assert names == {dsettings.container}
    after = docker_api.containers.get(dsettings.container)
    assert (after.id, after.status) == (before, "running")
    docker_engine(dsettings).up()  # as it was: same settings, nothing to recreate
    assert docker_api.containers.get(dsettings.container).id == before


def test_an_interrupted_replacement_is_finished_by_the_next_up(dsettings: Settings, docker_api: Any) -> None:
    from toolkit.engines.docker import ASIDE

    docker_engine(dsettings).up()
    sql(dsettings, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    container = docker_api.containers.get(dsettings.container)
    container.stop()
    container.rename(dsettings.container + ASIDE)  # killed after the old one was put aside
    docker_engine(dsettings).up()
    assert docker_api.containers.get(dsettings.container).id == container.id
    assert not docker_api.containers.list(all=True, filters={"name": dsettings.container + ASIDE})
    assert sql(dsettings, "SELECT x FROM kept") == [(7,)]


def test_a_paused_container_is_resumed_not_blamed_for_its_port(dsettings: Settings, docker_api: Any) -> None:
    docker_engine(dsettings).up()
    docker_api.containers.get(dsettings.container).pause()
    done = run_toolkit("up", "--engine", "docker", env=_env(dsettings))
    assert done.returncode == 0, done.stderr
    assert docker_api.containers.get(dsettings.container).status == "running"


def test_down_all_stops_cleanly(dsettings: Settings, docker_api: Any) -> None:
    """A clean stop leaves a shutdown checkpoint: the next start needs no crash recovery."""
    docker_engine(dsettings).up()
    sql(dsettings, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
    done = run_toolkit("down", "--all", env=_env(dsettings))
    assert done.returncode == 0, done.stderr
    docker_engine(dsettings).up()
    log = docker_api.containers.get(dsettings.container).logs().decode()
    assert "not properly shut down" not in log and "automatic recovery" not in log, log
    assert sql(dsettings, "SELECT x FROM kept") == [(1,)]


def test_auto_keeps_to_embedded_data_after_a_docker_purge(dsettings: Settings) -> None:
    env = _env(dsettings)
    assert run_toolkit("up", "--engine", "embedded", env=env).returncode == 0
    assert run_toolkit("psql", "-c", "CREATE TABLE kept (x int)", env=env).returncode == 0
    assert run_toolkit("down", env=env).returncode == 0
    refused = run_toolkit("up", "--engine", "docker", env=env)
    assert refused.returncode == 2 and "on the embedded engine" in refused.stderr and "--switch-engine" in refused.stderr
    switched = run_toolkit("up", "--engine", "docker", "--switch-engine", env=env)
    assert switched.returncode == 0 and "(docker)" in switched.stdout, switched.stderr
    assert run_toolkit("down", "--purge", "--yes", env=env).returncode == 0
    again = run_toolkit("up", env=env)
    assert again.returncode == 0 and "(embedded)" in again.stdout, again.stderr
    assert sql(dsettings, "SELECT count(*) FROM kept") == [(0,)]
    run_toolkit("down", "--purge", "--yes", env=env)


def test_a_daemon_that_never_answers_fails_in_seconds(isolated: Path) -> None:
    """A socket that accepts and never answers (a hung dockerd): the ping's timeout, not a minute."""
    path = isolated / "hung.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(50)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: [held.append(server.accept()[0]) for _ in range(50)], daemon=True)
    accepting.start()
    try:
        # the subprocess timeout guards against the hang: the old code waited 60 s, then named 3 s
        done = run_toolkit("up", "--engine", "docker", env={"DOCKER_HOST": f"unix://{path}"}, timeout=45)
    finally:
        server.close()
    assert done.returncode == 4, done.stderr
    assert "did not answer within 3s" in done.stderr


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, cls: Any, method: str) -> None:
    """``cls.method`` does its real work, then Ctrl-C arrives (as if during the request's return)."""
    real = getattr(cls, method)

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, method, interrupted)


@pytest.mark.parametrize("where", ["create", "stop"])
def test_ctrl_c_during_a_replacement_leaves_the_old_container_serving(dsettings: Settings, docker_api: Any,
                                                                      monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Ctrl-C after the daemon created the new container (the SDK call never returned it), or while the
    old one was stopping: the old container, under its name, running, and nothing else."""
    from docker.models.containers import Container, ContainerCollection

    docker_engine(dsettings).up()
    sql(dsettings, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (3)")
    before = docker_api.containers.get(dsettings.container).id
    _interrupt_after(monkeypatch, ContainerCollection if where == "create" else Container, where)
    with pytest.raises(KeyboardInterrupt):
        docker_engine(replace(dsettings, db=replace(dsettings.db, port=free_port()))).up()
    found = docker_api.containers.list(all=True, filters={"name": dsettings.container})
    assert [(c.id, c.name, c.status) for c in found] == [(before, dsettings.container, "running")]
    docker_engine(dsettings).up()
    assert sql(dsettings, "SELECT x FROM kept") == [(3,)]


def test_another_volume_name_never_silently_replaces_the_data(dsettings: Settings, docker_api: Any,
                                                               made: dict[str, list[str]]) -> None:
    docker_engine(dsettings).up()
    sql(dsettings, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (5)")
    before = docker_api.containers.get(dsettings.container).id
    moved = replace(dsettings, volume=dsettings.volume + "_new")
    made["volumes"].append(moved.volume)
    with pytest.raises(ToolkitError, match=f"serves volume {dsettings.volume}") as err:
        docker_engine(moved).up()
    assert err.value.exit_code == 2 and "--switch-engine" in err.value.one_line()
    assert docker_api.containers.get(dsettings.container).id == before
    assert sql(dsettings, "SELECT x FROM kept") == [(5,)]
    docker_engine(replace(moved, switch_engine=True)).up()  # asked for: an empty database, the old volume kept
    assert sql(dsettings, "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'") == [(0,)]
    assert docker_api.volumes.get(dsettings.volume)


def test_a_docker_volume_removed_outside_the_toolkit_gives_the_embedded_data_back(dsettings: Settings,
                                                                                  docker_api: Any) -> None:
    env = _env(dsettings)
    assert run_toolkit("up", "--engine", "embedded", env=env).returncode == 0
    assert run_toolkit("psql", "-c", "CREATE TABLE emb (x int)", env=env).returncode == 0
    assert run_toolkit("down", env=env).returncode == 0
    assert run_toolkit("up", "--engine", "docker", "--switch-engine", env=env).returncode == 0
    assert run_toolkit("down", env=env).returncode == 0
    docker_api.volumes.get(dsettings.volume).remove()  # `docker volume rm`, outside the toolkit
    again = run_toolkit("up", env=env)
    assert again.returncode == 0 and "(embedded)" in again.stdout, again.stderr
    assert sql(dsettings, "SELECT count(*) FROM emb") == [(0,)]
    run_toolkit("down", "--purge", "--yes", env=env)


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


def test_a_stop_the_daemon_finishes_after_ctrl_c_does_not_stop_the_restored_container(
        dsettings: Settings, docker_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the SDK waits for the old container's stop: the daemon goes on stopping it. Putting
    it back must wait for that stop, or the stop lands after the restart."""
    from docker.models.containers import Container

    docker_engine(dsettings).up()
    # dirty buffers make the shutdown checkpoint (so the stop) take longer than putting the container back
    sql(dsettings, "CREATE TABLE big AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 400000) g")
    before = docker_api.containers.get(dsettings.container).id
    real_stop = Container.stop
    requests: list[threading.Thread] = []

    def abandoned(self: Any, **kwargs: Any) -> None:
        monkeypatch.undo()
        request = threading.Thread(target=real_stop, args=(self,), kwargs=kwargs)  # the request goes on
        request.start()
        requests.append(request)
        time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(Container, "stop", abandoned)
    with pytest.raises(KeyboardInterrupt):
        docker_engine(replace(dsettings, db=replace(dsettings.db, port=free_port()))).up()
    # the late stop has landed when its request returns (the daemon answers once the container stopped)
    [request] = requests
    request.join(timeout=60)
    assert not request.is_alive(), "the abandoned stop request did not return within 60 s"
    after = docker_api.containers.get(dsettings.container)
    assert (after.id, after.status) == (before, "running")
    # put back means started, not ready: the server in it may still be starting up
    wait_until(lambda: _answers(dsettings), 60, f"the restored container {dsettings.container} to accept connections")


def _answers(settings: Settings) -> bool:
    import psycopg

    try:
        return bool(sql(settings, "SELECT 1") == [(1,)])
    except psycopg.OperationalError:
        return False


def test_purge_with_another_volume_named_is_refused_and_status_names_the_mounted_one(
        dsettings: Settings, docker_api: Any) -> None:
    env = _env(dsettings)
    assert run_toolkit("up", "--engine", "docker", env=env).returncode == 0
    other = {**env, "TOOLKIT_PG_VOLUME": dsettings.volume + "_other"}
    status = run_toolkit("status", "--json", env=other)
    assert json.loads(status.stdout)["volume"] == dsettings.volume
    purge = run_toolkit("down", "--purge", "--yes", env=other)
    assert purge.returncode == 2 and f"serves volume {dsettings.volume}" in purge.stderr, purge.stderr
    assert docker_api.containers.get(dsettings.container).status == "running"
    assert docker_api.volumes.get(dsettings.volume)
    assert run_toolkit("down", "--purge", "--yes", env=env).returncode == 0


def test_a_silent_daemon_is_pinged_once_per_command(down_after_embedded: Path) -> None:
    """Embedded data and a Docker record: asking whether the volume still exists and then using the
    engine must not pay the ping's timeout twice."""
    from toolkit import state

    state.record_up(down_after_embedded / ".toolkit", "docker", int(os.environ["TOOLKIT_PG_PORT"]))
    path = down_after_embedded / "silent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(50)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(server.accept()[0]) for _ in range(50)], daemon=True).start()
    try:
        done = run_toolkit("status", env={"DOCKER_HOST": f"unix://{path}"}, timeout=45)
    finally:
        server.close()
    assert done.returncode in (1, 4), done.stderr
    assert "did not answer within 3s" in done.stderr
    assert len(accepted) == 1


@pytest.fixture
def down_after_embedded(isolated: Path) -> Iterator[Path]:
    assert run_toolkit("up", "--engine", "embedded").returncode == 0
    assert run_toolkit("down").returncode == 0
    yield isolated
    run_toolkit("down", "--engine", "embedded", "--purge", "--yes")
