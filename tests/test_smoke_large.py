"""`toolkit smoke` past 1,500 passages on Chroma, and the write path behind it (re-upserting unchanged rows).

Smoke -n 3000 failed at passage 1,500 on every Chroma flavour: an approximate (HNSW) index on isotropic
1536-d noise, made worse by rewriting the unchanged first half. Only the default dimension shows it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.backend_support import passages
from tests.support import run_toolkit
from toolkit import smoke
from toolkit.backends import StoreLocation, open_store


@pytest.mark.parametrize("flavour", ["chroma", "chroma-http", "memgpt"])
def test_smoke_3000_passages_passes(flavour: str, request: pytest.FixtureRequest) -> None:
    env = {}
    if flavour == "chroma-http":
        env["TOOLKIT_CHROMA_PORT"] = str(request.getfixturevalue("chroma_http").port)
    if flavour == "memgpt":  # chromadb 0.5 in its isolated environment: search breadth 10, so misses were most common
        env["TOOLKIT_ARCHIVAL_FORMAT"] = "memgpt"
    backend = "chroma-http" if flavour == "chroma-http" else "chroma"
    done = run_toolkit("smoke", "--backend", backend, "-n", "3000", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["result"] == "pass" and result["detail"].startswith("3000 x 1536"), result
    assert result["format"] == ("0.5" if flavour == "memgpt" else "1")


def test_unchanged_rows_are_not_rewritten_changed_ones_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    with open_store(StoreLocation("chroma", str(tmp_path), "archival")) as store:
        data = passages(30, dim=8)
        store.insert(data)
        collection = store._get(create=False)  # type: ignore[attr-defined]
        upsert = type(collection).upsert

        def recording(self: Any, **kwargs: Any) -> Any:
            written.extend(kwargs["ids"])
            return upsert(self, **kwargs)

        monkeypatch.setattr(type(collection), "upsert", recording)
        assert store.insert(data) == 30 and written == []
        edited, moved = replace(data[3], text="edited"), replace(data[4], embedding=data[4].embedding + 1)
        new = passages(2, dim=8, start=30)
        assert store.insert([edited, moved, data[5], *new]) == 5
        assert sorted(written) == sorted(str(p.id) for p in [edited, moved, *new])
        assert store.count() == 32
        [got] = store.get([data[3].id])
        assert got.text == "edited"


@pytest.mark.parametrize("fmt", ["1", "0.5"])
def test_a_row_whose_metadata_shrank_is_rewritten_whole(tmp_path: Path, fmt: str) -> None:
    """Upsert merges metadata: a doc_id now None, an agent_id now None or a dropped key would stay. Those
    rows are deleted, then written again (0.5: through MemGPT's own chromadb, in its isolated environment)."""
    with open_store(StoreLocation("chroma", str(tmp_path), "archival", format=fmt)) as store:
        data = [replace(p, metadata={"keep": 1, "drop": "x"}) for p in passages(6, dim=8)]
        store.insert(data)
        changed = [replace(data[0], metadata={"keep": 1}), replace(data[1], doc_id=None), replace(data[2], agent_id=None)]
        assert store.insert(changed) == 3
        got = {p.id: p for p in store.get([p.id for p in changed])}
        for want in changed:
            assert (got[want.id].metadata, got[want.id].doc_id, got[want.id].agent_id) == \
                (want.metadata, want.doc_id, want.agent_id)
        assert store.count() == 6


def test_seeded_embeddings_keep_small_dims_and_have_few_directions_beyond() -> None:
    import numpy as np

    small = np.stack([p.embedding for p in smoke.seeded_passages(50, 8)])
    assert np.array_equal(small, np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    wide = np.stack([p.embedding for p in smoke.seeded_passages(100, 1536)])
    assert np.linalg.matrix_rank(wide) == smoke.LATENT and len({v.tobytes() for v in wide}) == 100
