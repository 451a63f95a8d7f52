"""Test support for the backend suites: seeded passages, free ports, and the servers they need.

Servers are real processes on 127.0.0.1 and free ports: a Chroma server (``chroma run``) and moto's S3
server, both through the toolkit's own service modules. Every one is stopped by its fixture.
``conftest.py`` loads this module as a plugin: test modules name the fixtures, they do not import them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from toolkit.backends.base import Passage
from toolkit.ports import free_port
from toolkit.services.background import BackgroundServer

USER = uuid.UUID("00000000-0000-4000-8000-000000000001")
AGENTS = (uuid.UUID("00000000-0000-4000-8000-0000000000a1"), uuid.UUID("00000000-0000-4000-8000-0000000000a2"))


def passages(n: int, dim: int = 16, seed: int = 0, *, start: int = 0) -> list[Passage]:
    """Deterministic passages: seeded embeddings, ids derived from the index, two agents alternating."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((start + n, dim)).astype(np.float32)[start:]
    return [Passage(id=uuid.UUID(int=(seed << 64) + start + i + 1), user_id=USER, agent_id=AGENTS[(start + i) % 2],
                    doc_id=None, text=f"passage {start + i}", embedding=vectors[i], data_source="test",
                    embedding_model="seeded-numpy", metadata={"n": start + i, "tag": "x"})
            for i in range(n)]


# -- servers (session-scoped fixtures, registered for every module by conftest.py) -----------------

def service_settings(root: Any) -> Any:
    from toolkit.settings import resolve

    return resolve({"state_dir": str(root / "state")}, environ={}, project_dir=root)


@pytest.fixture(scope="session")
def chroma_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """A real `chroma run` process on a free port, stopped at the end of the session."""
    from toolkit.services.chroma_server import chroma_server

    server = chroma_server(service_settings(tmp_path_factory.mktemp("chroma-server")), port=free_port())
    server.up(timeout=120)
    try:
        yield server
    finally:
        server.down()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """moto's S3 server on a free port with the bucket ``toolkit``, stopped at the end of the session."""
    from toolkit.services.s3_server import create_bucket, s3_server

    server = s3_server(service_settings(tmp_path_factory.mktemp("s3-server")), port=free_port())
    server.up(timeout=120)
    try:
        create_bucket(server)
        yield server
    finally:
        server.down()


def s3_options(server: BackgroundServer) -> dict[str, str]:
    return {"aws_endpoint": server.url, "aws_region": "us-east-1", "allow_http": "true",
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def s3_env(server: BackgroundServer) -> dict[str, str]:
    """The environment that points the toolkit's settings at ``server``."""
    from toolkit.services.s3_server import env_values

    return env_values(server)
