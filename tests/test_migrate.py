"""`toolkit migrate` against real backends: every ordered pair, kill-and-resume, refusals, --switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.backend_support import passages, s3_options
from tests.support import run_toolkit, spawn_toolkit, wait_until
from toolkit import memgpt_config
from toolkit.backends import Passage, open_store
from toolkit.errors import BackendError, MigrationError
from toolkit.memgpt_config import ArchivalStorage
from toolkit.migrate import Checksum, checksum_of, migrate
from toolkit.services.background import BackgroundServer
from toolkit.specs import Spec

BACKENDS = ("local", "postgres", "chroma", "chroma-http", "lancedb")
N, DIM = 120, 32
SHARED = ("chroma-http",)  # a server that outlives a test: drop what we made (postgres: the test's own database goes)


@pytest.fixture(scope="session")
def chroma_hostport(chroma_http: BackgroundServer) -> str:  # noqa: F811
    return f"{chroma_http.host}:{chroma_http.port}"


@pytest.fixture
def table() -> str:
    return f"mig_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_spec(request: pytest.FixtureRequest, tmp_path: Path, table: str) -> Iterator[Callable[[str, str], Spec]]:
    """A Spec per backend: a fresh directory for the embedded ones, a database of the test's own for postgres,
    the session server for chroma-http."""
    made: list[Spec] = []

    def make(backend: str, tag: str) -> Spec:
        if backend == "postgres":
            spec = Spec("postgres", request.getfixturevalue("pgvector_db").libpq_url)
        elif backend == "chroma-http":
            spec = Spec("chroma-http", request.getfixturevalue("chroma_hostport"))
        else:
            spec = Spec(backend, str(tmp_path / f"{backend}-{tag}"))
        made.append(spec)
        return spec

    yield make
    for spec in made:
        if spec.backend in SHARED:
            with closing(open_store(spec.store(table))) as store:
                store.drop()


def fill(spec: Spec, table: str, n: int = N, dim: int = DIM, seed: int = 7) -> Checksum:
    rows = passages(n, dim, seed)
    with closing(open_store(spec.store(table))) as store:
        store.insert(rows)
        return checksum_of(store)


def state(spec: Spec, table: str) -> tuple[int, str]:
    with closing(open_store(spec.store(table))) as store:
        if not store.exists():
            return (-1, "")
        return store.count(), checksum_of(store).hexdigest()


@pytest.mark.parametrize("src, dst", [(a, b) for a in BACKENDS for b in BACKENDS if a != b])
def test_every_pair(make_spec: Callable[[str, str], Spec], table: str, src: str, dst: str) -> None:
    source, destination = make_spec(src, "src"), make_spec(dst, "dst")
    expected = fill(source, table)

    result = migrate(source, destination, table=table, batch=37)

    assert result.verified and result.rows == result.copied == N and result.checksum == expected.hexdigest()
    assert state(source, table) == (N, expected.hexdigest())  # the source is untouched
    with closing(open_store(destination.store(table))) as store:
        assert store.count() == N
        assert checksum_of(store).hexdigest() == expected.hexdigest()
        for p in passages(N, DIM, 7)[::23]:
            (nearest,) = store.query(p.embedding, 1)
            assert (nearest.id, nearest.text, nearest.user_id, nearest.agent_id) == (p.id, p.text, p.user_id,
                                                                                     p.agent_id)


def test_rerun_is_idempotent_and_dry_run_writes_nothing(make_spec: Callable[[str, str], Spec], table: str) -> None:
    source, destination = make_spec("local", "src"), make_spec("lancedb", "dst")
    expected = fill(source, table)
    dry = migrate(source, destination, table=table, dry_run=True)
    assert (dry.rows, dry.copied, dry.dimension) == (N, 0, DIM)
    assert state(destination, table) == (-1, "")
    chroma = make_spec("chroma", "dry")
    assert migrate(source, chroma, table=table, dry_run=True).rows == N
    assert not Path(chroma.location).exists()
    migrate(source, destination, table=table)
    again = migrate(source, destination, table=table)
    assert again.destination_before == N and state(destination, table) == (N, expected.hexdigest())


def test_checksum_is_order_independent_and_float32_exact() -> None:
    import numpy as np

    rows = passages(10, 8, 1)
    a, b = Checksum(), Checksum()
    a.update(rows)
    for p in rows:
        p.embedding = np.asarray(p.embedding, dtype=np.float64)  # widened, as a float8 reader would
    b.update(reversed(rows))
    assert a.hexdigest() == b.hexdigest()
    rows[3].text += "!"
    c = Checksum()
    c.update(rows)
    assert c.hexdigest() != a.hexdigest()


def _checksum_row_by_row(rows: list[Passage]) -> str:
    """The checksum as first written (a row at a time): backups record its values, so they must not change."""
    import hashlib
    import struct

    import numpy as np

    total = 0
    for p in rows:
        text = (p.text or "").encode("utf-8", "surrogatepass")
        vector = (np.asarray(p.embedding, dtype="<f4") + np.float32(0)).tobytes()
        digest = hashlib.blake2b(p.id.bytes, digest_size=16)
        digest.update(struct.pack("<QQ", len(text), len(vector)))
        digest.update(text)
        digest.update(vector)
        total = (total + int.from_bytes(digest.digest(), "big")) % (1 << 128)
    return f"{total:032x}"


def test_checksum_keeps_its_values_for_awkward_rows() -> None:
    import numpy as np

    rows = passages(300, 16, 7)
    rows[0].text, rows[1].text, rows[2].text = "", None, "lone \udc80 surrogate, é, 🙂"  # type: ignore[assignment]
    rows[3].embedding = [-0.0] * 16  # folded into 0.0
    rows[4].embedding = np.full(16, np.nan, dtype=np.float32)
    rows[5].embedding = [0.1] * 16  # python floats: rounded to float32 like the rest
    rows[6].embedding = np.full(16, np.finfo(np.float32).max)  # limbs that carry
    every, one_by_one, ragged = Checksum(), Checksum(), Checksum()
    every.update(rows)
    for p in rows:
        one_by_one.update([p])
    assert every.hexdigest() == one_by_one.hexdigest() == _checksum_row_by_row(rows)
    assert every.count == 300
    uneven = rows[:5] + passages(3, 4, 8)  # a damaged store's rows of another width still hash
    ragged.update(iter(uneven))
    assert ragged.hexdigest() == _checksum_row_by_row(uneven) and ragged.count == 8
    columns = Checksum()
    columns.update_columns([p.id.bytes for p in rows[7:]], [p.text for p in rows[7:]],
                           np.stack([np.asarray(p.embedding, dtype=np.float64) for p in rows[7:]]))
    assert columns.hexdigest() == _checksum_row_by_row(rows[7:])


@pytest.mark.slow
def test_through_lancedb_on_s3(make_spec: Callable[[str, str], Spec], table: str,
                               s3: BackgroundServer) -> None:  # noqa: F811
    from toolkit.services.s3_server import BUCKET

    source, back = make_spec("local", "src"), make_spec("local", "back")
    remote = Spec("lancedb-s3", f"s3://{BUCKET}/{table}", options=s3_options(s3))
    expected = fill(source, table)
    assert migrate(source, remote, table=table).checksum == expected.hexdigest()
    assert migrate(remote, back, table=table).checksum == expected.hexdigest()
    assert state(back, table) == (N, expected.hexdigest())


# -- refusals: a clear message, nothing written -------------------------------------------------------


def test_refuses_same_store(make_spec: Callable[[str, str], Spec], table: str) -> None:
    source = make_spec("local", "src")
    before = fill(source, table)
    with pytest.raises(MigrationError, match="same store"):
        migrate(source, Spec("local", source.location + "/../" + Path(source.location).name), table=table)
    assert state(source, table) == (N, before.hexdigest())


def test_refuses_missing_or_empty_source(make_spec: Callable[[str, str], Spec], table: str, tmp_path: Path) -> None:
    destination = make_spec("lancedb", "dst")
    with pytest.raises(MigrationError, match="does not exist"):
        migrate(Spec("chroma", str(tmp_path / "nowhere")), destination, table=table)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "not-chroma").mkdir()  # a directory, but no Chroma data in it: refused, and left as it was
    with pytest.raises(MigrationError, match="does not exist"):
        migrate(Spec("chroma", str(tmp_path / "not-chroma")), destination, table=table)
    assert not any((tmp_path / "not-chroma").iterdir())
    empty = make_spec("local", "empty")
    fill(empty, table, n=3)
    with closing(open_store(empty.store(table))) as store:
        store.delete([p.id for p in passages(3, DIM, 7)])
    with pytest.raises(MigrationError, match="missing or empty"):
        migrate(empty, destination, table=table)
    with pytest.raises(MigrationError, match="missing or empty"):
        migrate(empty, destination, table="other_table")
    assert state(destination, table) == (-1, "")


@pytest.mark.parametrize("dst", ["local", "postgres", "lancedb"])
def test_refuses_dimension_mismatch(make_spec: Callable[[str, str], Spec], table: str, dst: str) -> None:
    source, destination = make_spec("local", "src"), make_spec(dst, "dst")
    fill(source, table)
    before = fill(destination, table, n=5, dim=DIM // 2, seed=99)
    with pytest.raises(MigrationError, match=f"holds {DIM // 2}-dimensional"):
        migrate(source, destination, table=table)
    assert state(destination, table) == (5, before.hexdigest())


def test_refuses_unreachable_destination(make_spec: Callable[[str, str], Spec], table: str) -> None:
    """A refusal (exit 7), naming the store, its cause and how to start it; not a bare backend failure (6)."""
    from toolkit.ports import free_port

    source = make_spec("local", "src")
    fill(source, table)
    for spec, start in ((Spec("postgres", f"postgresql://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt"), "toolkit up"),
                        (Spec("chroma-http", f"127.0.0.1:{free_port()}"), "toolkit chroma up")):
        with pytest.raises(MigrationError) as refused:
            migrate(source, spec, table=table)
        assert refused.value.message.startswith(f"cannot migrate into {spec}: ")
        assert refused.value.message.endswith("; nothing was written")
        assert start in (refused.value.hint or "")
        assert isinstance(refused.value.__cause__, BackendError)


# -- kill mid-migration, then resume -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dst", ["postgres", "lancedb"])
def test_kill_then_resume_gives_exact_copy(make_spec: Callable[[str, str], Spec], table: str, dst: str) -> None:
    source, destination = make_spec("local", "src"), make_spec(dst, "dst")
    n = 3000
    expected = fill(source, table, n=n)
    argv = [sys.executable, "-m", "toolkit", "migrate", "--from", source.render(), "--to", destination.render(),
            "--table", table, "--batch", "20"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def copied_some() -> bool:
            assert child.poll() is None, "the migration ended before it could be killed; raise n"
            return state(destination, table)[0] >= 200

        wait_until(copied_some, 60, "the migration to copy 200 rows", interval=0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # (a batch whose COMMIT the server had already received may still land: the count can grow a little)
    assert 0 < state(destination, table)[0] < n

    result = migrate(source, destination, table=table, batch=500)

    assert 0 < result.destination_before < n and result.verified
    assert state(destination, table) == (n, expected.hexdigest())
    assert state(source, table) == (n, expected.hexdigest())


# -- the CLI, --switch ------------------------------------------------------------------------------------


def test_cli_switch_keeps_foreign_sections(make_spec: Callable[[str, str], Spec], table: str) -> None:
    source = make_spec("chroma", "src")
    destination = make_spec("postgres", "dst")
    pg_url = destination.location
    expected = fill(source, table)
    config = Path(os.environ["MEMGPT_CONFIG_PATH"])
    config.parent.mkdir(parents=True)
    foreign = "[defaults]\npreset = memgpt_chat\n\n[archival_storage]\ntype = chroma\npath = {p}\n\n[client]\nx = 1\n"
    config.write_text(foreign.format(p=source.location))

    done = run_toolkit("migrate", "--from", "chroma://" + source.location, "--to", pg_url.replace("postgresql://",
                       "postgresql+psycopg://"), "--table", table, "--switch")

    assert done.returncode == 0, done.stderr
    assert f"verified: {N} rows, checksum {expected.hexdigest()}" in done.stdout
    assert "memgpt:memgpt@" not in done.stdout + done.stderr  # password redacted
    section = memgpt_config.read(config)
    assert section == ArchivalStorage("postgres", "", Spec("postgres", pg_url).render())
    text = config.read_text()
    assert text.startswith("[defaults]\npreset = memgpt_chat\n\n[archival_storage]\n")
    assert text.endswith("\n\n[client]\nx = 1\n")
    assert state(destination, table) == (N, expected.hexdigest())


def test_cli_refusal_is_one_line_and_no_switch(make_spec: Callable[[str, str], Spec], table: str) -> None:
    source, destination = make_spec("local", "src"), make_spec("local", "dst")
    fill(source, table)
    fill(destination, table, n=2, dim=8)
    done = run_toolkit("migrate", "--from", source.render(), "--to", destination.render(), "--table", table,
                       "--switch")
    assert done.returncode == MigrationError.exit_code
    assert done.stderr.strip().count("\n") == 0 and "8-dimensional" in done.stderr
    assert not Path(os.environ["MEMGPT_CONFIG_PATH"]).exists()


@pytest.mark.parametrize("dst", ["postgres", "local"])  # read back while copying; re-read at the end
def test_verification_catches_a_destination_that_stores_something_else(
        make_spec: Callable[[str, str], Spec], table: str, dst: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import numpy as np

    source, destination = make_spec("local", "src"), make_spec(dst, "dst")
    fill(source, table)
    with closing(open_store(destination.store(table))) as opened:  # opening creates nothing
        store_class = type(opened)
    original = store_class.insert

    def lossy(self, batch):  # type: ignore[no-untyped-def]
        # one embedding changed on its way in, as a lossy driver or a float16 column would
        batch = [dataclasses.replace(p, embedding=np.asarray(p.embedding) + np.float32(1e-3)) if i == 0 else p
                 for i, p in enumerate(batch)]
        return original(self, batch)

    monkeypatch.setattr(store_class, "insert", lossy)
    if hasattr(store_class, "insert_columns"):  # local to local moves columns: lossy there too
        from toolkit.backends.columns import to_passages

        monkeypatch.setattr(store_class, "insert_columns", lambda self, data: lossy(self, to_passages(data)))
    with pytest.raises(MigrationError, match="verification failed"):
        migrate(source, destination, table=table, batch=50)


def test_verification_catches_rows_the_source_does_not_have(make_spec: Callable[[str, str], Spec], table: str) -> None:
    source, destination = make_spec("local", "src"), make_spec("postgres", "dst")
    fill(source, table)
    with closing(open_store(destination.store(table))) as store:
        store.insert(passages(1, DIM, seed=99))  # a row that is not in the source
    with pytest.raises(MigrationError, match="held rows before"):
        migrate(source, destination, table=table)


def test_a_failing_copy_stops_the_read_back_thread(make_spec: Callable[[str, str], Spec], table: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from toolkit.backends.postgres import PostgresStore

    source, destination = make_spec("local", "src"), make_spec("postgres", "dst")
    fill(source, table)
    original, calls = PostgresStore.insert, []

    def failing(self, batch):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise BackendError("the destination went away")
        return original(self, batch)

    monkeypatch.setattr(PostgresStore, "insert", failing)
    with pytest.raises(BackendError, match="went away"):
        migrate(source, destination, table=table, batch=30)
    assert not [t for t in threading.enumerate() if t.name.startswith("migrate-")]


# -- at scale: the batch, the figures, the progress bar -------------------------------------------------


def test_default_batch_is_tens_of_mib_of_embeddings() -> None:
    from toolkit.migrate import default_batch

    assert default_batch(1536) == 2730  # 16 MiB of float32
    assert default_batch(4096) == 1024
    assert default_batch(8) == 10_000 and default_batch(1_000_000) == 100  # within 100..10,000 rows


def test_cli_json_gives_the_final_figures(make_spec: Callable[[str, str], Spec], table: str) -> None:
    import json

    source, destination = make_spec("local", "src"), make_spec("lancedb", "dst")
    expected = fill(source, table)
    done = run_toolkit("migrate", "--from", source.render(), "--to", destination.render(), "--table", table, "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["rows"] == figures["copied"] == N and figures["checksum"] == expected.hexdigest()
    assert figures["batch"] == 10_000  # DIM 32: the default batch's cap
    assert figures["copy_seconds"] > 0 and figures["verify_seconds"] > 0
    assert figures["copy_seconds"] + figures["verify_seconds"] <= figures["seconds"]
    assert figures["rows_per_second"] > 0 and figures["warnings"] == []
    # what getrusage says of the process: at least the interpreter, numpy and lancedb it imported
    assert 50 < figures["peak_rss_mib"] < 4096 and figures["peak_rss_bytes"] == pytest.approx(
        figures["peak_rss_mib"] * 2**20, abs=2**20)


def test_progress_bar_counts_rows_with_rate_and_eta_then_verification(make_spec: Callable[[str, str], Spec],
                                                                      table: str) -> None:
    import pty

    source, destination = make_spec("local", "src"), make_spec("local", "dst")
    fill(source, table, n=2000)
    primary, secondary = pty.openpty()
    try:
        child = spawn_toolkit("migrate", "--from", source.render(), "--to", destination.render(), "--table", table,
                              "--batch", "100", stderr=secondary)
        os.close(secondary)
        heard = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end closed: the child is done
                break
            if not chunk:
                break
            heard += chunk
        out, _ = child.communicate(timeout=180)
    finally:
        os.close(primary)
    screen = heard.decode("utf-8", "replace")
    assert child.returncode == 0, screen
    assert "migrating 2000 rows" in screen and "2000/2000" in screen  # the total is the source's count
    assert "rows/s" in screen and "verifying: reading the destination back" in screen
    assert "verified: 2000 rows" in out


@pytest.mark.parametrize("fmt, warned", [("current", True), ("memgpt", False)])
def test_switch_into_a_format_memgpt_cannot_read_warns(make_spec: Callable[[str, str], Spec], table: str,
                                                       fmt: str, warned: bool) -> None:
    source, destination = make_spec("local", "src"), make_spec("lancedb", "dst")
    fill(source, table)
    done = run_toolkit("migrate", "--from", source.render(), "--to", destination.render(), "--table", table,
                       "--format", fmt, "--switch")
    assert done.returncode == 0, done.stderr
    assert ("warning:" in done.stderr and "MemGPT 0.3.x cannot read" in done.stderr
            and "--format memgpt" in done.stderr) is warned, done.stderr
    assert memgpt_config.read(Path(os.environ["MEMGPT_CONFIG_PATH"])).type == "lancedb"  # switched all the same
