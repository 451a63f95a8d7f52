"""Docker engine against a real engine (no mocks): lifecycle, failures, labels, the offline image, compose.

Every test uses its own container and volume names, a free port and the offline image built once per
session; everything created is removed. Without an engine these tests skip with the reason, except
under CI=true, where a missing engine is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import OFFLINE, cleanup, docker_engine, sql, unique_names, wait_healthy
from tests.support import IN_CI, run_toolkit, wait_until
from toolkit.errors import EngineUnavailableError, NotReadyError, PortInUseError, ToolkitError
from toolkit.ports import free_port
from toolkit.settings import Settings, resolve

pytestmark = pytest.mark.docker


def test_up_is_ready_for_pg8000_psycopg_and_sqlalchemy(dsettings: Settings) -> None:
    import psycopg
    import sqlalchemy

    endpoint = docker_engine(dsettings).up()
    assert endpoint.url.render().startswith("postgresql+pg8000://memgpt:memgpt@localhost:")
    assert endpoint.port == dsettings.db.port
    # MemGPT's way: SQLAlchemy over pg8000, the extension already there without creating it
    engine = sqlalchemy.create_engine(endpoint.url.with_address(host="127.0.0.1").render())
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT extname FROM pg_extension WHERE extname='vector'")).scalar() == "vector"
        assert conn.execute(sqlalchemy.text("SELECT '[1,2]'::vector <-> '[1,3]'")).scalar() == 1.0
        assert conn.execute(sqlalchemy.text("SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles "
                                            "WHERE rolname = current_user")).scalar() is False
    engine.dispose()
    with psycopg.connect(dsettings.db.url(host="127.0.0.1").libpq) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("memgpt", "memgpt")
    # published on 127.0.0.1 only, labelled with project and version
    from toolkit.engines.docker import client

    container = client().containers.get(dsettings.container)
    assert container.ports["5432/tcp"][0]["HostIp"] == "127.0.0.1"
    assert container.labels["com.toolkit.project"] == str(dsettings.project_dir)
    assert container.labels["com.toolkit.version"]


def test_bootstrap_quotes_hostile_names_and_gives_another_role_its_own(dsettings: Settings) -> None:
    """bootstrap's statements run by psql in the container: names needing quotes on the first start (the
    init script), then another role and database on the same volume (docker exec), as the embedded engine."""
    import psycopg

    first = replace(dsettings, db=replace(dsettings.db, user="o'bri\"en", password="pa's \"wo\\rd;-- $HOME `id`",
                                             database="my db"))
    docker_engine(first).up()
    with psycopg.connect(first.db.url(host="127.0.0.1").libpq) as conn:
        assert conn.execute("SELECT current_user, current_database(), rolsuper FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == ("o'bri\"en", "my db", False)
    second = replace(dsettings, db=replace(dsettings.db, user="agent2", password="agent2-pw", database="agent2"))
    docker_engine(second).up()  # same volume: the role is missing (scram says "password"), bootstrap creates it
    with psycopg.connect(second.db.url(host="127.0.0.1").libpq) as conn:
        assert conn.execute("SELECT current_user, extname FROM pg_extension WHERE extname = 'vector'").fetchone() \
            == ("agent2", "vector")
    wrong = replace(second, db=replace(second.db, password="not-the-one"))
    with pytest.raises(NotReadyError, match="password authentication failed"):
        docker_engine(wrong).up()  # a wrong password stays one: nothing is created or changed


def test_up_is_idempotent(dsettings: Settings, docker_api: Any) -> None:
    engine = docker_engine(dsettings)
    engine.up()
    first = engine.status().extra["id"]
    started_at = docker_api.containers.get(dsettings.container).attrs["State"]["StartedAt"]
    docker_engine(dsettings).up()
    assert docker_engine(dsettings).status().extra["id"] == first
    # the same container, not restarted either
    assert docker_api.containers.get(dsettings.container).attrs["State"]["StartedAt"] == started_at
    assert docker_engine(dsettings).status().running


def test_data_survives_down_up_and_purge_deletes_it(dsettings: Settings, docker_api: Any) -> None:
    engine = docker_engine(dsettings)
    engine.up()
    sql(dsettings, "CREATE TABLE kept (v vector(2)); INSERT INTO kept VALUES ('[1,2]')")
    engine.down()
    assert not engine.status().running
    engine.up()
    assert sql(dsettings, "SELECT count(*) FROM kept") == [(1,)]
    engine.down(purge=True)
    assert not docker_api.volumes.list(filters={"name": dsettings.volume})
    engine.up()
    assert sql(dsettings, "SELECT to_regclass('kept')") == [(None,)]


def test_killed_container_recovers_on_up(dsettings: Settings, docker_api: Any) -> None:
    engine = docker_engine(dsettings)
    engine.up()
    sql(dsettings, "CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (7)")
    docker_api.containers.get(dsettings.container).kill()
    assert not docker_engine(dsettings).status().running
    docker_engine(dsettings).up()
    assert sql(dsettings, "SELECT id FROM survivor") == [(7,)]


def test_port_held_by_a_process_names_it(dsettings: Settings) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", dsettings.db.port))
        holder.listen()
        with pytest.raises(PortInUseError) as err:
            docker_engine(dsettings).up()
    message = err.value.one_line()
    assert f"port {dsettings.db.port}" in message and "python" in message and "--port" in message


def test_port_held_by_another_container_names_it(dsettings: Settings, made: dict[str, list[str]]) -> None:
    other, volume = unique_names()
    made["containers"].append(other)
    made["volumes"].append(volume)
    docker_engine(replace(dsettings, container=other, volume=volume)).up()
    with pytest.raises(PortInUseError) as err:
        docker_engine(dsettings).up()
    assert f"container {other}" in err.value.one_line() and f"docker stop {other}" in err.value.one_line()


def test_crashing_container_fails_fast_with_its_logs(dsettings: Settings, docker_api: Any) -> None:
    # an image whose server cannot start: the wait must end at once, not at the timeout
    tag = f"toolkit-test/crash:{uuid.uuid4().hex[:8]}"
    _build(docker_api, f'FROM {OFFLINE}\nCMD ["postgres", "-c", "no_such_setting=1"]\n', tag)
    try:
        with pytest.raises(NotReadyError) as err:
            docker_engine(replace(dsettings, image=tag, timeout=60.0)).up()
        # told that it exited, not "not ready after 60s": the wait ended on the exit, not on the timeout
        assert "exited with code" in err.value.message
        assert "no_such_setting" in (err.value.detail or "")
        # no --rm: the failed container is still there to inspect
        assert docker_api.containers.get(dsettings.container).status == "exited"
    finally:
        cleanup(docker_api, [dsettings.container], [])
        docker_api.images.remove(tag, force=True)


def test_down_all_removes_only_this_projects_labelled_containers(dsettings: Settings, docker_api: Any,
                                                                 made: dict[str, list[str]]) -> None:
    second, volume2 = unique_names()
    stranger, _ = unique_names()
    made["containers"] += [second, stranger]
    made["volumes"].append(volume2)
    docker_engine(dsettings).up()
    docker_engine(replace(dsettings, container=second, volume=volume2, db=replace(dsettings.db, port=free_port()))).up()
    docker_api.containers.run(OFFLINE, ["sleep", "300"], entrypoint=[], name=stranger, detach=True)
    result = run_toolkit("down", "--all", "--purge", "--yes", "--engine", "docker")
    assert result.returncode == 0, result.stderr
    names = {c.name for c in docker_api.containers.list(all=True)}
    assert dsettings.container not in names and second not in names
    assert stranger in names
    assert not docker_api.volumes.list(filters={"name": dsettings.volume})


@pytest.fixture(scope="session")
def registry(docker_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1, which dockerd reaches over plain HTTP."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-registry is missing (bash .ci/docker.sh start installs it)")
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    (root / "config.yml").write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                                     f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with open(root / "log", "wb") as log:
        server = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log, stderr=log)
    def log_tail() -> str:
        return f"its log ends:\n{(root / 'log').read_text()[-2000:]}"

    def listening() -> bool:
        if server.poll() is not None:
            pytest.fail(f"docker-registry exited with code {server.returncode} before it listened; {log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, 30, f"docker-registry to listen on 127.0.0.1:{port}", detail=log_tail)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _push(docker_api: Any, image: Any, ref: str) -> None:
    repository, tag = ref.rsplit(":", 1)
    image.tag(repository, tag)
    for event in docker_api.images.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    docker_api.images.remove(ref)  # gone from here: only the registry has it now


def test_missing_image_is_pulled_with_progress(docker_api: Any, registry: str, capfd: pytest.CaptureFixture[str]) -> None:
    """Progress goes to the caller's callback (the command renders it); the library prints nothing."""
    import io
    import tarfile

    from toolkit.engines.docker import pull

    # a small image of its own (random content: no layer of it is here yet), so bytes really move
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        payload = os.urandom(2_000_000)
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    ref = f"{registry}/toolkit-test/pull-{uuid.uuid4().hex[:8]}:1"
    import json

    answer = docker_api.api.import_image_from_data(buffer.getvalue())  # one JSON line, as a string
    local = docker_api.images.get(json.loads(answer.strip().splitlines()[-1])["status"])
    try:
        _push(docker_api, local, ref)  # untagging its only name deleted the image here
        with pytest.raises(Exception, match="No such image"):
            docker_api.images.get(local.id)
        heard: list[tuple[str, bool]] = []
        pull(docker_api, ref, progress=lambda line, live=False: heard.append((line, live)))
        assert docker_api.images.get(ref)
        assert (f"pulling {ref}: 1 layers done, 2.0/2.0 MB", False) in heard and heard[-1] == (f"pulled {ref}", False)
        assert capfd.readouterr() == ("", "")
    finally:
        for name in (ref, local.id):
            try:
                docker_api.images.remove(name, force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def test_up_pulls_a_missing_image_and_runs_it(dsettings: Settings, docker_api: Any, registry: str) -> None:
    ref = f"{registry}/toolkit-test/pgvector-{uuid.uuid4().hex[:8]}:pg18"
    _push(docker_api, docker_api.images.get(OFFLINE), ref)
    try:
        settings = replace(dsettings, image=ref)
        docker_engine(settings).up()
        assert sql(settings, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == [("vector",)]
    finally:
        docker_engine(replace(dsettings, image=ref)).down(purge=True)
        docker_api.images.remove(ref, force=True)


def test_pull_failure_points_to_the_offline_image(dsettings: Settings) -> None:
    with pytest.raises(EngineUnavailableError) as err:
        docker_engine(replace(dsettings, image=f"toolkit-test/absent-{uuid.uuid4().hex[:8]}:1")).up()
    assert "pulling it failed" in err.value.message and "toolkit image build" in err.value.one_line()


def test_another_projects_container_and_volume_are_left_alone(dsettings: Settings, docker_api: Any,
                                                             tmp_path: Path) -> None:
    """The default names are the same in every checkout: a second project must not take over the first's."""
    docker_engine(dsettings).up()
    other = replace(dsettings, project_dir=tmp_path / "other-checkout")
    for attempt in (lambda: docker_engine(other).up(), lambda: docker_engine(other).down(purge=True)):
        with pytest.raises(ToolkitError, match="belongs to the toolkit project at"):
            attempt()
    assert docker_api.containers.get(dsettings.container).status == "running"
    assert docker_api.volumes.get(dsettings.volume)
    docker_engine(dsettings).down(purge=True)


def test_auto_falls_back_to_embedded_when_the_image_cannot_be_had(dsettings: Settings, docker_api: Any) -> None:
    from toolkit import api

    settings = replace(dsettings, engine="auto", image=f"toolkit-test/absent-{uuid.uuid4().hex[:8]}:1")
    result = api.up(settings, export=False)
    try:
        assert result.engine == "embedded"
        assert result.note and "pulling it failed" in result.note and "toolkit image build" in result.note
        assert not docker_api.containers.list(all=True, filters={"name": settings.container})
        assert api.status(settings)["engine"] == "embedded"  # and it keeps to it from now on
    finally:
        api.down(settings, purge=True)


def test_unreachable_engine_gives_one_line_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    from toolkit import engines
    from toolkit.engines.docker import docker_available

    monkeypatch.setenv("DOCKER_HOST", f"unix://{isolated}/no.sock")
    assert "does not exist" in (docker_available() or "")
    engine, note = engines.select(resolve({}, environ={}, project_dir=isolated), starting=True)
    assert engine.name == "embedded" and note and "does not exist" in note
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    assert "connection refused" in (docker_available() or "")
    with pytest.raises(EngineUnavailableError):
        docker_engine(resolve({"engine": "docker"}, environ={}, project_dir=isolated)).up()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/var/run/docker.sock").exists(), reason="needs root and the socket")
def test_permission_denied_on_the_socket_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker  # noqa: F401 - imported before dropping privileges: nobody may not read the venv
    import docker.context  # noqa: F401

    from toolkit.engines.docker import docker_available

    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    if os.stat("/var/run/docker.sock").st_mode & 0o006 == 0o006:
        pytest.skip("the socket is world-accessible here")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody, as a user outside the docker group
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, str(docker_available()).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        reason = pipe.read()
    assert reason.startswith("permission denied on /var/run/docker.sock"), reason


def test_cli_up_status_logs_psql_down(dsettings: Settings) -> None:
    env = {"TOOLKIT_PG_IMAGE": dsettings.image, "TOOLKIT_PG_CONTAINER": dsettings.container,
           "TOOLKIT_PG_VOLUME": dsettings.volume, "TOOLKIT_PG_PORT": str(dsettings.db.port)}
    up = run_toolkit("up", "--engine", "docker", env=env)
    assert up.returncode == 0, up.stderr
    assert "postgres ready (docker)" in up.stdout and "memgpt:***@" in up.stdout
    assert "memgpt:memgpt" in (dsettings.project_dir / ".env").read_text()
    status = run_toolkit("status", "--engine", "docker", env=env)
    assert f"container {dsettings.container}" in status.stdout and "running" in status.stdout
    assert "ready to accept connections" in run_toolkit("logs", "--engine", "docker", env=env).stdout
    psql = run_toolkit("psql", "--engine", "docker", "-c", "SELECT extversion FROM pg_extension WHERE extname='vector'",
                       env=env)
    assert psql.returncode == 0 and "0.8" in psql.stdout, psql.stderr
    # no local psql: the container's own, through docker exec
    if shutil.which("docker"):
        bare = Path(dsettings.project_dir) / "bin"
        bare.mkdir()
        (bare / "docker").symlink_to(shutil.which("docker"))  # type: ignore[arg-type]
        exec_psql = run_toolkit("psql", "--engine", "docker", "-c", "SELECT current_user", env={**env, "PATH": str(bare)})
        assert exec_psql.returncode == 0 and "memgpt" in exec_psql.stdout, exec_psql.stderr
    down = run_toolkit("down", "--engine", "docker", env=env)
    assert down.returncode == 0 and "data kept" in down.stdout


def test_up_build_uses_db_dockerfile(dsettings: Settings, docker_api: Any) -> None:
    from toolkit.engines.docker import build_for_up

    tag = f"toolkit-test/pg-test:{uuid.uuid4().hex[:8]}"
    built = build_for_up(dsettings, base=OFFLINE, tag=tag)
    assert built.image == tag
    try:
        docker_engine(built).up()
        _check_seed_semantics(dsettings, docker_api)
    finally:
        cleanup(docker_api, [dsettings.container], [])
        docker_api.images.remove(tag, force=True)


def _check_seed_semantics(dsettings: Settings, docker_api: Any) -> None:
    # db/init.sql's role has the seed's semantics: not a superuser, cannot create databases or roles
    assert sql(dsettings, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname='memgpt'") == \
        [(False, False, False)]
    assert sql(dsettings, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname='memgpt'") == [("memgpt",)]
    health = docker_api.containers.get(dsettings.container).attrs["Config"].get("Healthcheck", {})
    assert "pg_isready" in " ".join(health.get("Test", []))


def test_offline_image_is_small_and_healthy(offline_image: str, docker_api: Any, made: dict[str, list[str]]) -> None:
    image = docker_api.images.get(offline_image)
    assert image.attrs["Size"] < 40e6
    assert "pg_isready" in " ".join(image.attrs["Config"]["Healthcheck"]["Test"])
    name, _ = unique_names()
    made["containers"].append(name)
    container = docker_api.containers.run(offline_image, name=name, detach=True,
                                          environment={"POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "app"})
    wait_healthy(container, 60)
    code, out = container.exec_run(["psql", "-U", "postgres", "-d", "app", "-Atc", "SELECT current_database()"])
    assert code == 0 and out.decode().strip() == "app"
    assert container.attrs["Config"]["User"] == "999:999"


def test_compose_file_validates_and_postgres_starts_healthy(compose: Any) -> None:
    import psycopg

    port = free_port()
    container = compose(TOOLKIT_PG_PORT=str(port), TOOLKIT_CHROMA_PORT=str(free_port()))
    settings = resolve({"db.port": port}, environ={})
    assert sql(settings, "SELECT extname FROM pg_extension") == [("plpgsql",), ("vector",)]
    assert container.ports["5432/tcp"][0]["HostIp"] == "127.0.0.1"
    # no well-known superuser password on any path: the default in the file was removed at the first start
    for password in ("removed-at-first-start", "postgres"):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres", connect_timeout=5)
    assert sql(settings, "SELECT rolname FROM pg_roles WHERE rolsuper") == [("postgres",)]


def _build(api: Any, dockerfile: str, tag: str) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    buf.seek(0)
    api.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)


def test_not_our_container_is_left_alone(dsettings: Settings, docker_api: Any) -> None:
    docker_api.containers.create(OFFLINE, ["sleep", "1"], entrypoint=[], name=dsettings.container)
    with pytest.raises(ToolkitError) as err:
        docker_engine(dsettings).up()
    assert "not created by the toolkit" in err.value.message
