"""Two checkouts of the project on one machine (issue 15): both `toolkit up` with no flags, each takes
names and a port of its own where the other holds the defaults, and says so; every later command, in a
new shell with nothing set, uses what `up` used, however it was given.

The seed's defaults (port 8888, container memgpt-db-test, volume memgpt_db_test) are every checkout's
and the user's: these tests run the CLI with defaults of their own (``run_toolkit_with_defaults``), a
free port and unique names, so they can neither collide with each other nor take the user's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import unique_names
from tests.support import (
    env_url,
    fresh_env,
    run_toolkit,
    run_toolkit_with_defaults,
    spawn_toolkit_with_defaults,
    wait_until,
)
from toolkit.ports import free_port

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # engine auto: embedded, without a ping's wait


def _printed_url(done: Any) -> str:
    assert done.returncode == 0, done.stderr
    return str(done.stdout.strip().split("=", 1)[1].strip("'"))


@pytest.fixture
def checkouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Two project dirs; whatever their servers, stopped and purged afterwards."""
    monkeypatch.delenv("TOOLKIT_PG_PORT")
    projects = (tmp_path / "checkout-a", tmp_path / "checkout-b")
    for project in projects:
        project.mkdir()
    yield projects
    for project in projects:
        run_toolkit("down", "--purge", "--yes", cwd=project, env=fresh_env(**NO_DOCKER))


def test_two_checkouts_both_serve_with_no_flags(checkouts: tuple[Path, Path]) -> None:
    a, b = checkouts
    default = free_port()  # stands for 8888
    defaults = {"db.port": default}
    first = run_toolkit_with_defaults(defaults, "up", cwd=a, env=fresh_env(**NO_DOCKER))
    assert first.returncode == 0, first.stderr
    assert f"@localhost:{default}/memgpt" in first.stdout and "held by" not in first.stderr  # the first keeps the default

    second = run_toolkit_with_defaults(defaults, "up", "--json", cwd=b, env=fresh_env(**NO_DOCKER))
    assert second.returncode == 0, second.stderr
    said = re.search(rf"port {default} is held by (.+); this project uses port (\d+)", second.stderr)
    assert said, second.stderr
    assert f"the toolkit's embedded server with data in {a}" in said.group(1)  # the holder: checkout a's server
    own = int(said.group(2))
    assert own != default
    result = json.loads(second.stdout)
    assert result["chosen"] == [{"setting": "db.port", "value": own, "instead_of": default, "held_by": said.group(1),
                                 "line": said.group(0)}]
    assert f"@localhost:{own}/memgpt" in result["url"]

    # each, in a new shell with nothing set (and the real defaults), prints its own URL and passes smoke
    for project, port in ((a, default), (b, own)):
        url = _printed_url(run_toolkit("env", cwd=project, env=fresh_env()))
        assert f"@localhost:{port}/memgpt" in url and url == env_url(project)
        status = run_toolkit("status", "--json", cwd=project, env=fresh_env())
        assert json.loads(status.stdout)["running"] is True, status.stderr
        (project / ".env").rename(project / "env.kept")  # smoke must find the server through the settings alone
        smoke = run_toolkit("smoke", "--backend", "postgres", cwd=project, env=fresh_env(), timeout=300)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        (project / "env.kept").rename(project / ".env")

    # a port given explicitly is never replaced: taken, it fails naming the holder
    third = a.parent / "checkout-c"
    third.mkdir()
    taken = run_toolkit("up", "--port", str(default), cwd=third, env=fresh_env(**NO_DOCKER))
    assert taken.returncode == 3 and f"port {default} on 127.0.0.1 is already in use by" in taken.stderr, taken.stderr

    # down of one leaves the other serving
    assert run_toolkit("down", cwd=a, env=fresh_env()).returncode == 0
    assert json.loads(run_toolkit("status", "--json", cwd=a, env=fresh_env()).stdout)["running"] is False
    psql = run_toolkit("psql", "-c", "SHOW port", cwd=b, env=fresh_env())
    assert psql.returncode == 0 and str(own) in psql.stdout, psql.stderr

    # b keeps its port from now on (the same server, the same URL), even with the default free again
    again = run_toolkit_with_defaults(defaults, "up", cwd=b, env=fresh_env(**NO_DOCKER))
    assert again.returncode == 0 and f":{own}/" in again.stdout and "held by" not in again.stderr, again.stderr


def test_two_checkouts_starting_at_once_both_serve(checkouts: tuple[Path, Path]) -> None:
    """Both find the default port free and race for it: the loser chooses a port of its own and starts again."""
    from concurrent.futures import ThreadPoolExecutor

    default = free_port()
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            ups = list(pool.map(lambda p: run_toolkit_with_defaults({"db.port": default}, "up", "--engine", "embedded",
                                                                    cwd=p, env=fresh_env()), checkouts))
        assert [u.returncode for u in ups] == [0, 0], [u.stderr for u in ups]
        urls = [_printed_url(run_toolkit("env", cwd=p, env=fresh_env())) for p in checkouts]
        assert len(set(urls)) == 2 and any(f":{default}/" in url for url in urls), urls
        for project in checkouts:
            assert run_toolkit("down", "--purge", "--yes", cwd=project, env=fresh_env()).returncode == 0


def test_a_port_chosen_again_is_the_same_for_the_same_project(checkouts: tuple[Path, Path]) -> None:
    """A stable choice: after `down --purge` (the record is forgotten), the project derives the same port."""
    import socket

    a, b = checkouts
    default = free_port()
    with socket.socket() as listener:  # a server of anyone's on the default port
        listener.bind(("127.0.0.1", default))
        listener.listen()
        ports = []
        for _ in range(2):
            up = run_toolkit_with_defaults({"db.port": default}, "up", "--engine", "embedded", cwd=b, env=fresh_env())
            assert up.returncode == 0, up.stderr
            ports.append(int(re.findall(r"this project uses port (\d+)", up.stderr)[0]))
            assert run_toolkit("down", "--purge", "--yes", cwd=b, env=fresh_env()).returncode == 0
            assert not (b / ".toolkit" / "engine").exists()  # purge forgets what up chose
    assert ports[0] == ports[1] != default


def test_settings_given_only_to_up_are_what_later_commands_use(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLKIT_PG_PORT")
    port = free_port()
    only_there = {"TOOLKIT_PG_PASSWORD": "x y/z", "TOOLKIT_PG_USER": "alice", "TOOLKIT_PG_DATABASE": "db1",
                  "TOOLKIT_PG_PORT": str(port)}
    try:
        up = run_toolkit("up", "--engine", "embedded", "--no-export", env=fresh_env(**only_there))
        assert up.returncode == 0, up.stderr
        assert not (isolated / ".env").exists()
        record = isolated / ".toolkit" / "engine"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600  # it holds the password
        url = _printed_url(run_toolkit("env", env=fresh_env()))
        assert url == f"postgresql+pg8000://alice:x%20y%2Fz@localhost:{port}/db1"
        psql = run_toolkit("psql", "-c", "SELECT current_user || '@' || current_database()", env=fresh_env())
        assert psql.returncode == 0 and "alice@db1" in psql.stdout, psql.stderr
        status = run_toolkit("status", env=fresh_env())
        assert status.returncode == 0 and "postgres running" in status.stdout
        assert "x y/z" not in status.stdout + up.stdout + up.stderr  # the recorded password is still a secret
        smoke = run_toolkit("smoke", "--backend", "postgres", env=fresh_env(), timeout=300)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        # precedence: flags > environment > .env > the record > defaults
        (isolated / ".env").write_text("TOOLKIT_PG_DATABASE=from_dotenv\n")
        assert "/from_dotenv" in _printed_url(run_toolkit("env", env=fresh_env()))
        assert "/from_env" in _printed_url(run_toolkit("env", env=fresh_env(TOOLKIT_PG_DATABASE="from_env")))
        assert "/from_flag" in _printed_url(run_toolkit("env", "--database", "from_flag", env=fresh_env()))
        (isolated / ".env").unlink()
        assert run_toolkit("down", env=fresh_env()).returncode == 0
        assert not json.loads(run_toolkit("status", "--json", env=fresh_env()).stdout)["running"]
        # a later `up` in a new shell starts the same server again: same role, password, port
        again = run_toolkit("up", env=fresh_env())
        assert again.returncode == 0 and f"alice:***@localhost:{port}/db1" in again.stdout, again.stderr
    finally:
        run_toolkit("down", "--purge", "--yes", env=fresh_env())
    assert "memgpt:memgpt@localhost:8888/memgpt" in run_toolkit("env", env=fresh_env()).stdout  # the record is gone


# --- Docker ---------------------------------------------------------------------------------------------


def _names_for(made: dict[str, list[str]], other: Path) -> tuple[str, str]:
    """Unique default names, and the names of its own checkout ``other`` would take, all removed afterwards."""
    container, volume = unique_names()
    tag = hashlib.sha256(str(other).encode()).hexdigest()[:6]
    made["containers"] += [container, f"{container}-{tag}"]
    made["volumes"] += [volume, f"{volume}_{tag}"]
    return container, volume


@pytest.mark.docker
def test_a_second_checkout_on_one_daemon_gets_names_of_its_own(checkouts: tuple[Path, Path], docker_api: Any,
                                                               offline_image: str, made: dict[str, list[str]]) -> None:
    a, b = checkouts
    container, volume = _names_for(made, b)  # stand for memgpt-db-test and memgpt_db_test
    default = free_port()
    defaults = {"db.port": default, "container": container, "volume": volume}
    env = fresh_env(TOOLKIT_PG_IMAGE=offline_image)
    first = run_toolkit_with_defaults(defaults, "up", cwd=a, env=env)
    assert first.returncode == 0 and "(docker)" in first.stdout, first.stderr
    theirs = docker_api.containers.get(container)

    second = run_toolkit_with_defaults(defaults, "up", "--json", cwd=b, env=env)
    assert second.returncode == 0, second.stderr
    chosen = {c["setting"]: c for c in json.loads(second.stdout)["chosen"]}
    assert set(chosen) == {"container", "volume", "db.port"}, chosen
    assert f"container {container} is held by the toolkit project at {a}" in second.stderr
    assert chosen["db.port"]["held_by"] == f"container {container}"  # recognised as a container, not docker-proxy
    own_container, own_volume, own_port = (chosen[k]["value"] for k in ("container", "volume", "db.port"))
    assert own_container.startswith(container + "-") and own_volume.startswith(volume + "_")

    mine = docker_api.containers.get(own_container)
    assert mine.status == "running" and theirs.id != mine.id
    assert [m["Name"] for m in mine.attrs["Mounts"]] == [own_volume]
    theirs.reload()
    assert theirs.status == "running" and [m["Name"] for m in theirs.attrs["Mounts"]] == [volume]

    for project, port in ((a, default), (b, own_port)):
        assert f"@localhost:{port}/memgpt" in _printed_url(run_toolkit("env", cwd=project, env=fresh_env()))
    # doctor calls a's container a's own server, not a conflict with docker-proxy: through the record, and
    # through the container's labels when the record is an older toolkit's (no names in it)
    record = a / ".toolkit" / "engine"
    written = record.read_text()
    for text in (written, json.dumps({"engine": "docker", "port": default}), written):
        record.write_text(text)
        doctor = run_toolkit("doctor", "--json", cwd=a, env=fresh_env())
        port = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "port")
        assert port["ok"] and "held by the toolkit's own server" in port["detail"], port
    # b's status, down and purge are about b's container and volume alone
    status = json.loads(run_toolkit("status", "--json", cwd=b, env=fresh_env()).stdout)
    assert (status["container"], status["volume"], status["port"]) == (own_container, own_volume, own_port)
    assert run_toolkit("down", "--purge", "--yes", cwd=b, env=fresh_env()).returncode == 0
    theirs.reload()
    assert theirs.status == "running" and docker_api.volumes.get(volume)
    assert not docker_api.containers.list(all=True, filters={"name": f"^/{own_container}$"})


def test_doctor_calls_the_ports_owner_ours_and_a_held_default_a_choice(checkouts: tuple[Path, Path]) -> None:
    a, b = checkouts
    default = free_port()
    assert run_toolkit_with_defaults({"db.port": default}, "up", cwd=a, env=fresh_env(**NO_DOCKER)).returncode == 0
    ours = run_toolkit_with_defaults({"db.port": default}, "doctor", "--json", cwd=a, env=fresh_env(**NO_DOCKER))
    port = next(c for c in json.loads(ours.stdout)["checks"] if c["name"] == "port")
    assert port["ok"] and "the toolkit's own server" in port["detail"], port
    theirs = run_toolkit_with_defaults({"db.port": default}, "doctor", "--json", cwd=b, env=fresh_env(**NO_DOCKER))
    port = next(c for c in json.loads(theirs.stdout)["checks"] if c["name"] == "port")
    assert port["ok"] and re.search(r"`toolkit up` will use port \d+", port["detail"]), port


@pytest.mark.docker
def test_doctor_says_which_engine_up_would_really_use(docker_api: Any, offline_image: str, isolated: Path) -> None:
    """Auto falls back to embedded when the image can neither be found nor pulled: doctor asks the same
    selection, so it says so (and why), rather than "Docker would be used"; an explicit --engine docker with
    that image cannot start, so doctor fails (exit 1) naming the fix. CI reads the JSON object's ok/engine."""
    import uuid

    missing = f"toolkit-test/absent-{uuid.uuid4().hex[:8]}:1"
    for args, env in ((("--engine", "auto"), {"TOOLKIT_PG_IMAGE": missing}), (("--image", missing), {})):
        done = run_toolkit("doctor", "--json", *args, env=env)
        report = json.loads(done.stdout)
        assert done.returncode == 0 and report["ok"] is True and report["engine"] == "embedded", done.stdout
        assert missing in report["reason"] and "pulling it failed" in report["reason"], report
        docker = next(c for c in report["checks"] if c["name"] == "docker")
        assert "`toolkit up` would use the embedded engine" in docker["detail"] and "pulling it failed" in docker["detail"]
        assert "would use the docker engine" not in done.stdout

    refused = run_toolkit("doctor", "--json", "--engine", "docker", env={"TOOLKIT_PG_IMAGE": missing})
    report = json.loads(refused.stdout)
    assert refused.returncode == 1 and report["ok"] is False and report["engine"] == "docker", refused.stdout
    docker = next(c for c in report["checks"] if c["name"] == "docker")
    assert not docker["ok"] and missing in docker["detail"] and "toolkit image build" in docker["fix"], docker
    text = run_toolkit("doctor", "--engine", "docker", "--image", missing)
    assert text.returncode == 1 and "FAIL docker" in text.stdout and "toolkit image build" in text.stdout, text.stdout

    found = run_toolkit("doctor", "--json", env={"TOOLKIT_PG_IMAGE": offline_image})
    report = json.loads(found.stdout)
    assert found.returncode == 0 and report["ok"] and report["engine"] == "docker", found.stdout
    assert run_toolkit("doctor", "--engine", "docker", "--image", offline_image).returncode == 0
    assert not (isolated / ".toolkit").exists()  # doctor starts nothing


def test_an_external_servers_data_is_never_offered_for_deletion(pg_url: str, isolated: Path) -> None:
    from toolkit import state

    (isolated / ".toolkit").mkdir()
    state.record_up(isolated / ".toolkit", "embedded", 8888)  # this project's own record, which is not the server's
    external = {"TOOLKIT_ENGINE": "external", "TOOLKIT_PG_URL": pg_url}
    done = run_toolkit("down", "--purge", env=external)  # no --yes, no terminal: nothing to confirm
    assert done.returncode == 0, done.stderr
    assert "nothing deleted (its data is not the toolkit's)" in done.stdout and "data deleted" not in done.stdout
    assert state.last_up(isolated / ".toolkit") == {"engine": "embedded", "port": 8888}
    wrong = run_toolkit("up", env={**external, "TOOLKIT_PG_URL": pg_url.replace("memgpt:memgpt@", "memgpt:wrong@")})
    assert wrong.returncode == 5 and "password authentication failed" in wrong.stderr
    assert "--purge" not in wrong.stderr and "managed elsewhere" in wrong.stderr


@pytest.mark.docker
def test_the_seeds_own_container_on_the_defaults_is_left_alone(checkouts: tuple[Path, Path], docker_api: Any,
                                                               offline_image: str, made: dict[str, list[str]]) -> None:
    """run_postgres.sh's container (no toolkit labels) runs under the default name, on the default volume and
    port: `up` with no flags takes names and a port of its own, and touches none of it."""
    a, _ = checkouts
    container, volume = _names_for(made, a)
    default = free_port()
    seed = docker_api.containers.run(offline_image, ["sleep", "600"], entrypoint=[], name=container, detach=True,
                                     volumes={volume: {"bind": "/data", "mode": "rw"}},
                                     ports={"5432/tcp": ("127.0.0.1", default)})
    up = run_toolkit_with_defaults({"db.port": default, "container": container, "volume": volume}, "up", "--json",
                                   cwd=a, env=fresh_env(TOOLKIT_PG_IMAGE=offline_image))
    assert up.returncode == 0, up.stderr
    chosen = {c["setting"]: c for c in json.loads(up.stdout)["chosen"]}
    assert chosen["container"]["held_by"] == "a container the toolkit did not create (running)"
    assert chosen["volume"]["held_by"] == f"the running container {container}"
    assert chosen["db.port"]["held_by"] == f"container {container}"
    seed.reload()
    assert seed.status == "running" and volume in [m["Name"] for m in seed.attrs["Mounts"]]
    ours = docker_api.containers.get(chosen["container"]["value"])
    assert [m["Name"] for m in ours.attrs["Mounts"]] == [chosen["volume"]["value"]] and ours.status == "running"
    assert run_toolkit("down", "--purge", "--yes", cwd=a, env=fresh_env()).returncode == 0
    seed.reload()
    assert seed.status == "running" and docker_api.volumes.get(volume)


@pytest.mark.docker
def test_a_moved_checkout_is_told_where_its_database_is_not_given_an_empty_one(
        checkouts: tuple[Path, Path], docker_api: Any, offline_image: str, made: dict[str, list[str]]) -> None:
    """The labels name the project dir; after `mv`, names of its own would start an empty database and the
    user's rows would seem gone. `up` refuses, naming the volume and the old path; moved back, all is there."""
    import psycopg

    a, _ = checkouts
    moved = a.with_name("checkout-a-moved")
    container, volume = _names_for(made, moved)  # and the names of its own the moved checkout would take
    defaults = {"db.port": free_port(), "container": container, "volume": volume}
    env = fresh_env(TOOLKIT_PG_IMAGE=offline_image)
    assert run_toolkit_with_defaults(defaults, "up", cwd=a, env=env).returncode == 0
    with psycopg.connect(env_url(a).replace("+pg8000", "")) as conn:
        conn.execute("CREATE TABLE keepme (x int)")
    a.rename(moved)
    try:
        again = run_toolkit_with_defaults(defaults, "up", cwd=moved, env=env)
        assert again.returncode == 3, again.stdout + again.stderr
        line = again.stderr.strip().splitlines()[-1]
        assert f"volume {volume}" in line and f"{a}, a directory that no longer exists" in line and "moved" in line
        assert [c.name for c in docker_api.containers.list(all=True, filters={"label": f"com.toolkit.project={moved}"})] \
            == []  # no empty database beside the data
        status = run_toolkit_with_defaults(defaults, "status", cwd=moved, env=env)
        assert "no longer exists" in status.stderr and "docker rm" not in status.stderr, status.stderr
    finally:
        moved.rename(a)
    assert run_toolkit_with_defaults(defaults, "up", cwd=a, env=env).returncode == 0
    with psycopg.connect(env_url(a).replace("+pg8000", "")) as conn:
        assert conn.execute("SELECT count(*) FROM keepme").fetchone() == (0,)


# -- hostile and clumsy cases: a record that is no file, an `up` killed before its record ---------------

@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero"])
def test_a_record_that_is_no_file_neither_hangs_nor_eats_memory(isolated: Path, kind: str) -> None:
    """The record is read by every command: a FIFO in its place blocked them all forever, a symlink to
    /dev/zero read until memory ran out. Now it is no record."""
    state = isolated / ".toolkit"
    state.mkdir()
    if kind == "fifo":
        os.mkfifo(state / "engine")
    else:
        (state / "engine").symlink_to("/dev/zero")
    done = run_toolkit("env", env=fresh_env(**NO_DOCKER, TOOLKIT_PG_PORT="47001"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert ":47001/memgpt" in done.stdout


def test_up_killed_before_its_record_then_up_again_keeps_its_own_port(checkouts: tuple[Path, Path]) -> None:
    """Checkout b chose a port of its own (a's server holds the default); its `up` is killed (SIGKILL) after
    the server started, before the record was written. `up` again adopts the port its running server has,
    instead of failing with "already running on port P, not <default>"."""
    a, b = checkouts
    default = free_port()  # stands for 8888
    defaults = {"db.port": default}
    first = run_toolkit_with_defaults(defaults, "up", cwd=a, env=fresh_env(**NO_DOCKER))
    assert first.returncode == 0, first.stderr

    record = b / ".toolkit" / "engine"
    postmaster = b / ".toolkit" / "embedded" / "pgdata" / "postmaster.pid"
    killed = spawn_toolkit_with_defaults(defaults, "up", cwd=b, env=fresh_env(**NO_DOCKER))
    wait_until(lambda: postmaster.exists() or killed.poll() is not None, 300, "b's server to start")
    killed.send_signal(signal.SIGKILL)
    _, said = killed.communicate()
    own = int(re.findall(r"this project uses port (\d+)", said)[0])
    record.unlink(missing_ok=True)  # if `up` got that far: the state a kill a moment earlier leaves
    wait_until(lambda: f"\n{own}\n" in postmaster.read_text() if postmaster.exists() else False, 300,
               "b's server to listen")

    again = run_toolkit_with_defaults(defaults, "up", cwd=b, env=fresh_env(**NO_DOCKER))
    assert again.returncode == 0, again.stderr
    assert f"@localhost:{own}/memgpt" in again.stdout
    assert json.loads(record.read_text())["port"] == own
    env = run_toolkit("env", cwd=b, env=fresh_env())
    assert f"@localhost:{own}/memgpt" in env.stdout, env.stderr  # not a's server
