"""Test support for the Docker suites: the engine's client, the offline image, unique names, compose.

``conftest.py`` loads this module as a plugin: test modules name the fixtures (``docker_api``,
``offline_image``, ``made``, ``dsettings``, ``compose``), they do not import them; they import the
helpers that are not fixtures (``docker_engine``, ``sql``, ``unique_names``, ...) from here.

Without an engine ``docker_api`` skips every test that needs it, with the reason, except under CI=true,
where a missing engine is a failure. Everything a fixture creates is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, REPO, wait_until
from toolkit.ports import free_port
from toolkit.settings import Settings, resolve

OFFLINE = "toolkit/pgvector-offline:pg18"


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Any]:
    from toolkit.engines.docker import client, docker_available

    reason = docker_available()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine answers: {reason}")
        pytest.skip(reason)  # it says "no Docker engine: why"
    api = client()
    yield api
    api.close()


@pytest.fixture(scope="session")
def offline_image(docker_api: Any) -> str:
    """The offline image, built once per session (1-2 s; it also proves `toolkit image build` works)."""
    from toolkit.engines.docker_image import build_image

    build_image(docker_api, OFFLINE, progress=lambda line: None)
    return OFFLINE


def unique_names() -> tuple[str, str]:
    """A container name and a volume name no other test (or checkout) uses."""
    tag = uuid.uuid4().hex[:8]
    return f"tk-test-{tag}", f"tk_test_{tag}"


def cleanup(api: Any, containers: list[str], volumes: list[str]) -> None:
    """Remove these containers (with their anonymous volumes) and volumes, those that exist."""
    from docker.errors import NotFound

    for name in containers:
        try:
            api.containers.get(name).remove(force=True, v=True)
        except NotFound:
            pass
    for name in volumes:
        try:
            api.volumes.get(name).remove(force=True)
        except NotFound:
            pass


@pytest.fixture
def made(docker_api: Any) -> Iterator[dict[str, list[str]]]:
    """Names of containers/volumes a test creates by hand; removed afterwards."""
    made: dict[str, list[str]] = {"containers": [], "volumes": []}
    yield made
    cleanup(docker_api, made["containers"], made["volumes"])


@pytest.fixture
def dsettings(docker_api: Any, offline_image: str, isolated: Path, made: dict[str, list[str]]) -> Settings:
    """Docker settings with unique container/volume names and a free port, cleaned up afterwards."""
    from toolkit.engines.docker import ASIDE

    container, volume = unique_names()
    made["containers"] += [container, container + ASIDE]  # and the one put aside while a replacement starts
    made["volumes"].append(volume)
    return resolve({"engine": "docker", "image": offline_image, "container": container, "volume": volume,
                    "db.port": free_port(), "timeout": 60.0}, environ={}, project_dir=isolated)


def docker_engine(settings: Settings) -> Any:
    """The Docker engine for ``settings`` (a new object each call, as each `toolkit` command makes one)."""
    from toolkit.engines.docker import DockerEngine

    return DockerEngine(settings)


def sql(settings: Settings, query: str) -> Any:
    """Run ``query`` as the application role over 127.0.0.1; its rows, or None for a statement without."""
    import psycopg

    with psycopg.connect(settings.db.url(host="127.0.0.1").libpq, autocommit=True) as conn:
        cursor = conn.execute(query)
        return cursor.fetchall() if cursor.description else None


def wait_healthy(container: Any, timeout: float) -> None:
    """Wait until Docker's health check calls ``container`` healthy; fail with its log tail if it never
    does, at once if it exits."""
    def logs() -> str:
        return f"its log ends:\n{container.logs(tail=40).decode(errors='replace')}"

    def healthy() -> bool:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"container {container.name} exited before it was healthy; {logs()}")
        return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

    wait_until(healthy, timeout, f"container {container.name} to be healthy", interval=0.2, detail=logs)


@pytest.fixture
def compose(docker_api: Any, offline_image: str, made: dict[str, list[str]]) -> Iterator[Any]:
    """compose/compose.yaml's postgres service under a unique project name, from the offline image (the
    Chroma image needs a registry): start(**env) validates the file, starts it, waits until healthy and
    returns its container; everything is removed afterwards."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-compose is missing (bash .ci/docker.sh start installs it)")
        pytest.skip("docker-compose is not installed")
    tag = uuid.uuid4().hex[:8]
    argv = [binary, "-p", f"tktest{tag}", "-f", str(REPO / "compose" / "compose.yaml")]
    started: list[dict[str, str]] = []

    def start(**env: str) -> Any:
        full = {**os.environ, "TOOLKIT_PG_IMAGE": offline_image, "TOOLKIT_CHROMA_VOLUME": f"tk_compose_chroma_{tag}",
                "TOOLKIT_COMPOSE_PG_VOLUME": f"tk_compose_pg_{tag}", **env}
        made["volumes"] += [full["TOOLKIT_COMPOSE_PG_VOLUME"], full["TOOLKIT_CHROMA_VOLUME"]]
        started.append(full)
        check = subprocess.run([*argv, "config", "-q"], env=full, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        done = subprocess.run([*argv, "up", "-d", "postgres"], env=full, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        container = docker_api.containers.get(f"tktest{tag}_postgres_1")
        wait_healthy(container, 90)
        return container

    yield start
    for env in started[-1:]:
        subprocess.run([*argv, "down", "-v"], env=env, capture_output=True, text=True)
