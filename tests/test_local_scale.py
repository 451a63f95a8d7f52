"""The local backend at scale: merges keep every row exactly, a scan stays small in memory, and tables
read both ways between this version and the previous one (whose reader and writer are copied here, as
they were, so the files stay what both understand)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend_support import AGENTS, USER, passages
from toolkit.backends import StoreLocation, open_store
from toolkit.backends.base import Filters, Passage

REPO = Path(__file__).resolve().parent.parent


def _same(got: Passage, want: Passage) -> bool:
    return (got.id, got.text, got.user_id, got.agent_id, got.doc_id, got.data_source, got.embedding_model,
            got.metadata, got.created_at) == (want.id, want.text, want.user_id, want.agent_id, want.doc_id,
                                              want.data_source, want.embedding_model, want.metadata,
                                              want.created_at) and np.array_equal(got.embedding, want.embedding)


def _scanned(store: Any, batch: int = 7) -> dict[uuid.UUID, Passage]:
    rows = [p for b in store.scan(batch) for p in b]
    assert len({p.id for p in rows}) == len(rows)  # each row once
    return {p.id: p for p in rows}


def _segments(where: Path) -> list[str]:
    return json.loads((where / "manifest.json").read_text())["segments"]


def _previous_reader(where: Path) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """The live rows as the previous toolkit's reader (``LocalStore._read`` before bounded scans) finds them."""
    live: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    for seg in _segments(where):
        block = np.load(where / f"{seg}.npy", mmap_mode="r")
        with open(where / f"{seg}.jsonl", encoding="utf-8") as handle:
            position = 0
            for line in handle:
                row = json.loads(line)
                if row.get("deleted"):
                    live.pop(row["id"], None)
                else:
                    live[row["id"]] = (row, np.array(block[position]))
                    position += 1
    return live


def _previous_writer(where: Path, segments: list[tuple[list[dict[str, Any]], np.ndarray]]) -> None:
    """A table as the previous toolkit wrote it: one segment per write, rows in the order given (not by id)."""
    where.mkdir(parents=True)
    names = []
    for number, (rows, vectors) in enumerate(segments, start=1):
        names.append(f"{number:06d}")
        np.save(where / f"{names[-1]}.npy", vectors)
        (where / f"{names[-1]}.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    (where / "manifest.json").write_text(json.dumps({"uid": uuid.uuid4().hex, "version": len(names), "dim": 8,
                                                     "segments": names, "next": len(names) + 1}))


def _row(p: Passage) -> dict[str, Any]:
    return {"id": str(p.id), "user_id": str(p.user_id), "agent_id": p.agent_id and str(p.agent_id),
            "doc_id": p.doc_id and str(p.doc_id), "text": p.text, "data_source": p.data_source,
            "embedding_model": p.embedding_model, "metadata": p.metadata or {}, "created_at": p.created_at.isoformat()}


def test_merges_keep_every_row_exactly_through_replacements_and_deletes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    where = StoreLocation("local", str(tmp_path), "archival")
    expected: dict[uuid.UUID, Passage] = {}
    most_segments = 0
    with open_store(where) as store:
        for step in range(120):  # small writes: the size tiers merge them over and over
            fresh = [replace(p, id=uuid.uuid4(), text=f"step {step} \u00e9\n\"{i}\"", metadata={"step": step, "i": i})
                     for i, p in enumerate(passages(int(rng.integers(1, 9)), dim=8, seed=step))]
            store.insert(fresh)
            expected.update((p.id, p) for p in fresh)
            if step % 3 == 0:  # replace some live rows
                chosen = rng.choice(list(expected), size=min(4, len(expected)), replace=False)
                changed = [replace(expected[i], text=f"changed at {step}", embedding=rng.standard_normal(8).astype(np.float32))
                           for i in chosen]
                store.insert(changed)
                expected.update((p.id, p) for p in changed)
            if step % 5 == 4:  # delete some, and one that is not there
                gone = list(rng.choice(list(expected), size=3, replace=False))
                assert store.delete([*gone, uuid.uuid4()]) == 3
                for i in gone:
                    del expected[i]
            most_segments = max(most_segments, len(_segments(tmp_path / "archival")))
        assert most_segments < 20  # merged as it went (one segment per write otherwise: hundreds)
        got = _scanned(store)
        assert got.keys() == expected.keys() and all(_same(got[i], expected[i]) for i in expected)
        assert store.count() == len(expected)
        some = list(expected)[::17]
        assert all(_same(g, expected[i]) for g, i in zip(store.get(some), some, strict=True))
        for i in some:
            assert store.query(expected[i].embedding, 1)[0].id == i
        agent = AGENTS[0]
        assert store.count(Filters(agent_id=agent)) == sum(p.agent_id == agent for p in expected.values())
        assert all(p.agent_id == agent for p in store.query(np.ones(8, np.float32), 5, Filters(agent_id=agent)))
    previous = _previous_reader(tmp_path / "archival")  # what was merged, the previous toolkit reads the same
    assert previous.keys() == {str(i) for i in expected}
    assert all(np.array_equal(previous[str(i)][1], p.embedding) and previous[str(i)][0] == json.loads(json.dumps(_row(p)))
               for i, p in expected.items())
    assert not [p.name for p in (tmp_path / "archival").iterdir() if p.name.startswith(".")]  # no temp files left


def test_tables_of_the_previous_version_read_and_merge(tmp_path: Path) -> None:
    """Segments written one per insert, rows not in id order, a replaced row, a tombstone, and a line whose
    keys come in another order (another writer): read as before, then merged by the next writes."""
    rows = passages(30, dim=8, seed=4)
    first, second = rows[:20][::-1], rows[20:]
    replaced = replace(rows[3], text="replaced", embedding=np.full(8, 2.0, np.float32))
    odd = dict(reversed(list(_row(rows[25]).items())))
    where = tmp_path / "archival"
    _previous_writer(where, [
        ([_row(p) for p in first], np.stack([p.embedding for p in first])),
        ([*(_row(p) for p in second[:5]), odd, *(_row(p) for p in second[6:])], np.stack([p.embedding for p in second])),
        ([_row(replaced), {"id": str(rows[7].id), "deleted": True}], np.stack([replaced.embedding])),
    ])
    expected = {p.id: p for p in rows if p.id != rows[7].id} | {replaced.id: replaced}
    with open_store(StoreLocation("local", str(tmp_path), "archival")) as store:
        got = _scanned(store, 4)
        assert got.keys() == expected.keys() and all(_same(got[i], expected[i]) for i in expected)
        for batch in range(3):  # enough writes for a merge of everything
            more = passages(2, dim=8, seed=40 + batch)
            store.insert(more)
            expected |= {p.id: p for p in more}
        assert len(_segments(where)) < 6
        got = _scanned(store, 4)
        assert got.keys() == expected.keys() and all(_same(got[i], expected[i]) for i in expected)


def test_a_scan_of_a_big_table_stays_small_in_memory(tmp_path: Path) -> None:
    """60k x 1536 float32 embeddings (352 MiB): a scan's peak RSS, mapped file pages included, stays far
    under that (reading them memory-mapped kept every page a scan touched resident)."""
    rows, dim = 60_000, 1536
    rng = np.random.default_rng(1)
    with open_store(StoreLocation("local", str(tmp_path), "archival")) as store:
        for start in range(0, rows, 5000):
            vectors = rng.standard_normal((5000, dim), dtype=np.float32)
            store.insert([Passage(text=f"p{start + i}", embedding=vectors[i], user_id=USER) for i in range(5000)])
    script = (
        "import sys\n"
        "from toolkit.backends import open_store, StoreLocation\n"
        "seen = 0\n"
        "def status(key):\n"
        "    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0])\n"
        "with open_store(StoreLocation('local', sys.argv[1], 'archival')) as store:\n"
        "    store.count()\n"
        "    mapped = status('RssFile')\n"
        "    for batch in store.scan(300):\n"
        "        seen += len(batch)\n"
        # the peak of this process's own memory (VmHWM, KiB): ru_maxrss would start at the RSS of the pytest
        # process it was forked from; RssFile: the mapped file pages it still holds
        "    print(seen, status('VmHWM'), status('RssFile') - mapped)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    seen, peak_kib, mapped_kib = map(int, done.stdout.split())
    assert seen == rows
    # the pages of each batch were handed back, with those a fault mapped around them (the previous batch's)
    assert mapped_kib < 4096, f"{mapped_kib} KiB of the files stayed mapped in memory after the scan"
    vectors_mib = rows * dim * 4 / 2**20
    assert peak_kib / 1024 < vectors_mib / 3, f"peak RSS {peak_kib / 1024:.0f} MiB for {vectors_mib:.0f} MiB of embeddings"


def test_a_damaged_embeddings_file_is_a_backend_error(tmp_path: Path) -> None:
    from toolkit.errors import BackendError

    with open_store(StoreLocation("local", str(tmp_path), "archival")) as store:
        store.insert(passages(3, dim=4))
    npy = next((tmp_path / "archival").glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:-8])  # the last row cut short
    with open_store(StoreLocation("local", str(tmp_path), "archival")) as store, \
            pytest.raises(BackendError, match="cannot read the local table"):
        store.count()


_MANY_SEGMENTS = """
import resource, sys
from tests.backend_support import passages
from toolkit.backends import StoreLocation, open_store
from toolkit.backends import local
local.MERGE_BELOW = 1  # every segment counts as big: none merges, as a big table's never do
where = StoreLocation('local', sys.argv[1], 'archival')
rows = passages(120, dim=4)
with open_store(where) as store:
    for n in range(40):
        store.insert(rows[3 * n:3 * n + 3])
hard = int(sys.argv[2]) if sys.argv[2] != '-' else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))  # fewer than the 80 files the 40 segments hold open
with open_store(where) as store:
    print(store.count(), len([p for batch in store.scan(7) for p in batch]))
"""


def test_a_table_of_more_segments_than_the_open_files_soft_limit_reads(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _MANY_SEGMENTS, str(tmp_path), "-"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["120", "120"]


def test_a_table_of_more_segments_than_the_hard_limit_says_so_and_not_damaged(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _MANY_SEGMENTS, str(tmp_path), "48"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "40 segments need 80 open files" in last and "ulimit -n: 48" in last, last
    assert "drop it" not in done.stderr


@pytest.mark.parametrize("edit", ["crlf", "no final newline", "trailing spaces"])
def test_a_segment_edited_by_hand_reads_and_merges(tmp_path: Path, edit: str) -> None:
    """JSONL lines as an editor or a Windows checkout leaves them read as the previous version read them,
    and survive a merge."""
    where = StoreLocation("local", str(tmp_path), "archival")
    rows = passages(30, dim=4)
    with open_store(where) as store:
        store.insert(rows[:10])
        store.delete([rows[0].id])
    for seg in _segments(tmp_path / "archival"):
        jsonl = tmp_path / "archival" / f"{seg}.jsonl"
        text = jsonl.read_bytes()
        jsonl.write_bytes({"crlf": text.replace(b"\n", b"\r\n"), "no final newline": text[:-1],
                           "trailing spaces": text.replace(b"\n", b"  \n")}[edit])
    with open_store(where) as store:
        assert store.count() == 9
        assert [p.id for p in store.get([rows[5].id, rows[0].id])] == [rows[5].id]
        for n in range(4):  # enough small segments after them for a merge of all
            store.insert(rows[10 + 5 * n:15 + 5 * n])
        assert len(_segments(tmp_path / "archival")) < 6
    with open_store(where) as store:
        got = _scanned(store)
        assert sorted(got) == sorted(p.id for p in rows[1:])
        assert all(_same(got[p.id], p) for p in rows[1:])


def test_a_write_into_a_table_missing_a_segment_file_is_a_backend_error(tmp_path: Path) -> None:
    from toolkit.errors import BackendError

    where = StoreLocation("local", str(tmp_path), "archival")
    with open_store(where) as store:
        store.insert(passages(3, dim=4))
    next((tmp_path / "archival").glob("*.npy")).unlink()
    with open_store(where) as store, pytest.raises(BackendError, match="cannot read the local table"):
        store.insert(passages(3, dim=4, start=3))


@pytest.mark.parametrize("damage", [(b'"text": "passage 2"', b'"text": "passage 2'), (b'"text": "passage 2", ', b""),
                                    (b'"text": "passage 2"', b'"text": 5'), (b'"text": "passage 2"', b'"text": ["a"]')])
def test_a_damaged_line_is_a_backend_error_on_every_read(tmp_path: Path, damage: tuple[bytes, bytes]) -> None:
    """The index reads only each line's id; the rest of a line is first parsed by a scan, get or query,
    which say the table is damaged (as the previous version's open did), not raise JSONDecodeError or KeyError."""
    from toolkit.errors import BackendError

    where = StoreLocation("local", str(tmp_path), "archival")
    rows = passages(5, dim=4)
    with open_store(where) as store:
        store.insert(rows)
    jsonl = next((tmp_path / "archival").glob("*.jsonl"))
    jsonl.write_bytes(jsonl.read_bytes().replace(*damage))
    reads = [lambda s: list(s.scan(10)), lambda s: s.get([rows[2].id]), lambda s: s.query([0.0] * 4, 5)]
    for read in reads:
        with open_store(where) as store, pytest.raises(BackendError, match="cannot read the local table"):
            read(store)


def test_a_merge_removes_what_killed_writers_left(tmp_path: Path) -> None:
    where = StoreLocation("local", str(tmp_path), "archival")
    rows = passages(40, dim=4)
    with open_store(where) as store:
        store.insert(rows[:10])
    table = tmp_path / "archival"
    (table / ".000007.npy.99999.tmp").write_bytes(b"x" * 100)  # a write killed before its rename
    (table / ".manifest.json.99999.tmp").write_bytes(b"{")
    (table / "000000.npy").write_bytes(b"x")  # a segment a killed merge had replaced but not yet removed
    (table / "000000.jsonl").write_bytes(b"x")
    with open_store(where) as store:
        for n in range(3):  # a merge
            store.insert(rows[10 + 10 * n:20 + 10 * n])
        assert len(_segments(table)) == 1
        assert sorted(p.name for p in table.iterdir()) == sorted(
            ["manifest.json", *(f"{s}{x}" for s in _segments(table) for x in (".npy", ".jsonl"))])
        assert sorted(_scanned(store)) == sorted(p.id for p in rows)
