"""One owner per volume, nothing destroyed before its replacement is proven: the Docker engine and the
compose stack against a real engine (issue 16). Skips without an engine, except under CI=true."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import docker_engine, sql
from tests.support import run_toolkit, spawn_toolkit, wait_until
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
    procs = [spawn_toolkit("up", "--engine", "docker", env=_env(dsettings)) for _ in range(5)]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, errors
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


def test_auto_keeps_to_embedded_data_after_a_docker_purge(dsettings: Settings, embedded_down_after: Path) -> None:
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


def test_a_docker_volume_removed_outside_the_toolkit_gives_the_embedded_data_back(
        dsettings: Settings, docker_api: Any, embedded_down_after: Path) -> None:
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
