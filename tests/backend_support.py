"""Test support for the backend suites: seeded passages, free ports, and the servers they need.

Servers are real processes on 127.0.0.1 and free ports: a Chroma server (``chroma run``) and moto's S3
server, both through the toolkit's own service modules. Every one is stopped by its fixture.
"""

from __future__ import annotations

import socket
import uuid

from toolkit.backends.base import Passage

USER = uuid.UUID("00000000-0000-4000-8000-000000000001")
AGENTS = (uuid.UUID("00000000-0000-4000-8000-0000000000a1"), uuid.UUID("00000000-0000-4000-8000-0000000000a2"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def passages(n: int, dim: int = 16, seed: int = 0, *, start: int = 0) -> list[Passage]:
    """Deterministic passages: seeded embeddings, ids derived from the index, two agents alternating."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((start + n, dim)).astype(np.float32)[start:]
    return [Passage(id=uuid.UUID(int=(seed << 64) + start + i + 1), user_id=USER, agent_id=AGENTS[(start + i) % 2],
                    doc_id=None, text=f"passage {start + i}", embedding=vectors[i], data_source="test",
                    embedding_model="seeded-numpy", metadata={"n": start + i, "tag": "x"})
            for i in range(n)]
