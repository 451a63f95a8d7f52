"""Copy archival passages between any two backends, verified (room: migrate.py).

Speaks the ArchivalStore Protocol, and the two optional ones of stores that speak Arrow (``ScansColumns``,
``InsertsColumns``: then batches travel as columns, never a Passage object a row). Rows stream in batches
(scan in a stable order -> upsert by id),
so a run killed midway is resumed by running it again: nothing is duplicated or lost. The source
is only ever read, and a source directory is read through a private copy (the clients of some
generations write to what they open), so it stays byte for byte as it was. At the end both sides
must agree on the row count and on a checksum over ids,
texts and embeddings (float32, as every backend stores them), computed independently of order. Where the
destination allows it (Postgres), each batch is read back by id while the next one is copied.

An archive destination (a Parquet file: ``WritesAside``) is written aside and put in place only once verified: an
existing one is refused unless ``overwrite``, and a re-run writes it afresh rather than resuming.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from toolkit.backends import DEFAULT_TABLE, ArchivalStore, Passage, columns, open_store
from toolkit.backends.base import InsertsColumns, ScansColumns, WritesAside
from toolkit.errors import BackendError, MigrationError
from toolkit.specs import Spec

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


_MOD = 1 << 128
_HASHED_AT_ONCE = 256  # rows of embeddings the checksum copies at a time
BATCH_BYTES = 16 << 20  # the default batch: about this many bytes of float32 embeddings (1536-dim: 2730 rows)


class Checksum:
    """Order-independent digest of a set of passages: the sum of per-row 128-bit BLAKE2b digests, each over
    the id's 16 bytes, the two lengths, the UTF-8 text and the float32 embedding (backups record it too, so
    the value never changes). ``update`` takes passages, ``update_columns`` the same rows as columns."""

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0

    def update(self, passages: Iterable[Passage]) -> None:
        import numpy as np

        rows = passages if isinstance(passages, list) else list(passages)
        dims = {len(p.embedding) for p in rows}
        if len(dims) != 1:  # none, or ragged (a damaged store): a row at a time
            for p in rows:
                self.update_columns([p.id.bytes], [p.text], np.asarray(p.embedding, dtype="<f4").reshape(1, -1))
            return
        vectors = np.empty((len(rows), dims.pop()), dtype="<f4")
        for i, p in enumerate(rows):  # row by row into one array: a quarter of np.asarray's time on arrays
            vectors[i] = p.embedding
        self.update_columns([p.id.bytes for p in rows], [p.text for p in rows], vectors)

    def update_columns(self, ids: Sequence[bytes], texts: Sequence[str | None], vectors: np.ndarray) -> None:
        """Rows given as columns: 16-byte ids, texts, and an (n, dim) array of embeddings."""
        import numpy as np

        if not len(ids):
            return
        if len(ids) != len(texts) or len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids, {len(texts)} texts and {len(vectors)} embeddings")
        width = vectors.shape[1] * 4
        blake2b, pack = hashlib.blake2b, struct.Struct("<QQ").pack
        digests = bytearray()
        for start in range(0, len(ids), _HASHED_AT_ONCE):
            # float32 like Postgres' float4, Chroma and LanceDB store them; "+ 0" folds -0.0 into 0.0 (a few
            # hundred rows at a time: a copy of the whole batch would be one more batch in memory)
            block = np.ascontiguousarray(vectors[start:start + _HASHED_AT_ONCE], dtype="<f4") + np.float32(0)
            flat = memoryview(block.reshape(-1)).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
            for n, (id_bytes, text) in enumerate(zip(ids[start:start + _HASHED_AT_ONCE],
                                                     texts[start:start + _HASHED_AT_ONCE], strict=True)):
                encoded = (text or "").encode("utf-8", "surrogatepass")  # a lone surrogate hashes, not raises
                digest = blake2b(id_bytes + pack(len(encoded), width) + encoded, digest_size=16)
                digest.update(flat[n * width:(n + 1) * width])  # hashlib lets other threads run meanwhile
                digests += digest.digest()
        # the sum of the 128-bit digests (big-endian) as four 32-bit limbs summed in NumPy
        limbs = np.frombuffer(bytes(digests), dtype=">u4").reshape(-1, 4).sum(axis=0, dtype=np.uint64)
        total = sum(int(limb) << (32 * (3 - k)) for k, limb in enumerate(limbs))
        self._sum = (self._sum + total) % _MOD
        self.count += len(ids)

    def update_arrow(self, data: pa.Table) -> None:
        """Rows as a table in ``columns.schema`` (a ``scan_columns`` batch)."""
        for part in data.to_batches():  # chunk by chunk: their embeddings are read where they are, not copied
            self.update_columns(columns.id_bytes(part), part["text"].to_pylist(), columns.vectors_of(part))

    def update_any(self, rows: pa.Table | list[Passage]) -> None:
        if isinstance(rows, list):
            self.update(rows)
        else:
            self.update_arrow(rows)

    def hexdigest(self) -> str:
        return f"{self._sum:032x}"


@dataclass
class Result:
    source: str  # redacted SPECs
    destination: str
    table: str
    rows: int  # rows in the source
    copied: int  # rows written by this run
    destination_before: int  # rows the destination held when we started (a resumed run: > 0)
    checksum: str
    verified: bool
    dry_run: bool
    seconds: float
    dimension: int
    switched: str | None = None  # the MemGPT config now pointing at the destination
    backup: str | None = None  # its previous version
    batch: int = 0  # rows per batch (chosen from the dimension when not given)
    copy_seconds: float = 0.0  # from the first row read to the last batch written
    verify_seconds: float = 0.0  # reading the destination back, after the copy
    peak_rss_bytes: int = 0  # this process's peak resident set (mapped files included), children's if larger
    warnings: list[str] = field(default_factory=list)  # for the user: the run worked, but look at this

    @property
    def rows_per_second(self) -> float:
        return self.copied / self.seconds if self.seconds else 0.0


def default_batch(dimension: int) -> int:
    """Rows per batch when none is asked for: ``BATCH_BYTES`` of embeddings, within 100..10,000 rows. Big
    enough that per-batch costs (a commit, a segment file, a round trip) stay small next to the rows; small
    enough that the batches in flight (read ahead, being written, being read back) stay tens of MB."""
    return max(100, min(10_000, BATCH_BYTES // (4 * max(dimension, 1))))


def peak_rss_bytes() -> int:
    """The peak resident set of this process (or of a finished child, such as an old client's worker, if
    larger), as getrusage reports it: memory-mapped file pages included."""
    import resource

    return 1024 * max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def checksum_of(store: ArchivalStore, batch: int = 1000) -> Checksum:
    total = Checksum()
    for rows in _scan(store, batch, columns=True)():
        total.update_any(rows)
    return total


def _first(store: ArchivalStore) -> Passage | None:
    scan = store.scan(1)
    try:
        return next((rows[0] for rows in scan if rows), None)
    finally:
        close = getattr(scan, "close", None)
        if close:
            close()


def _offer(handoff: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` for the other thread, waiting while the queue is full; False once ``stop`` is set
    (the other side is gone, and a blocking put would wait forever)."""
    while not stop.is_set():
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _prefetched(scan: Callable[[], Iterator[Any]], checksum: Checksum | None = None) -> Iterator[Any]:
    """The batches of ``scan()`` (passages, or their columns) read (and checksummed, if given one) in a thread,
    so that reading overlaps whatever the consumer does with them: the destination's writes, or the
    verification's checksum."""
    done = object()
    batches: queue.Queue[Any] = queue.Queue(maxsize=1)  # one batch read ahead: memory bounded by the batch
    stop = threading.Event()

    def read() -> None:
        try:
            for rows in scan():
                if checksum is not None:
                    checksum.update_any(rows)
                if not _offer(batches, rows, stop):
                    return
            _offer(batches, done, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            _offer(batches, exc, stop)

    reader = threading.Thread(target=read, name="migrate-reader", daemon=True)
    reader.start()
    try:
        while (item := batches.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _scan(store: ArchivalStore, batch: int, *, columns: bool) -> Callable[[], Iterator[Any]]:
    """What reads ``store`` a batch at a time: its columns where asked and it has them, else passages."""
    if columns and isinstance(store, ScansColumns):
        return lambda: store.scan_columns(batch)
    return lambda: store.scan(batch)


def _size(rows: Any) -> int:
    return len(rows) if isinstance(rows, list) else int(rows.num_rows)


class _ReadBack:
    """Verification that overlaps the copy: a thread with its own destination handle reads back each
    batch by id as soon as it is written, and checksums what it finds, while the next batch is copied.
    Rows just written are still in the server's cache, so this costs little next to a final re-read."""

    _DONE = object()

    def __init__(self, destination: Spec, table: str, checksum: Checksum) -> None:
        self.checksum = checksum
        self.error: BaseException | None = None
        self._ids: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(destination, table), name="migrate-verify",
                                        daemon=True)
        self._thread.start()

    def _run(self, destination: Spec, table: str) -> None:
        try:
            with closing(open_store(destination.store(table))) as store:
                while not self._stop.is_set():  # set when the copy failed: stop early, close the handle
                    try:
                        ids = self._ids.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if ids is self._DONE:
                        return
                    self.checksum.update(store.get(ids))
        except BaseException as exc:  # noqa: BLE001 - handed to the copying thread, raised there
            self.error = exc
            self._stop.set()

    def add(self, ids: list[Any]) -> None:
        _offer(self._ids, ids, self._stop)
        self._raise()

    def finish(self) -> None:
        self.add(self._DONE)  # type: ignore[arg-type]
        self._thread.join()
        self._raise()

    def abandon(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)  # it ends after the read it is in, if any

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def migrate(
    source: Spec,
    destination: Spec,
    *,
    table: str = DEFAULT_TABLE,
    batch: int | None = None,
    dry_run: bool = False,
    switch: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_verify: Callable[[], None] | None = None,
    verified: Callable[[int], None] | None = None,
) -> Result:
    """Copy ``table`` from ``source`` to ``destination`` and verify; refusals raise before any write.
    ``switch``: then point the MemGPT config at that path to the destination (checked before anything is
    copied; a dry run only checks it). ``overwrite``: an archive destination that exists is replaced (else refused).

    ``batch``: rows per batch; None chooses it from the embedding dimension (``default_batch``).
    ``on_start(source_rows, destination_rows)`` is called once the checks passed, ``progress(n)`` after
    each batch written, ``on_verify()`` before the destination is read back after the copy (where it is
    not read back while copying) and ``verified(n)`` after each batch read back then.
    """
    _check_request(source, destination, batch)
    warnings: list[str] = []
    if switch and destination.kind.MEMGPT_TYPE is None:
        raise MigrationError(f"--switch: MemGPT cannot use {destination} as its archival storage; nothing was written",
                             hint="migrate without --switch, and restore the archive into a store to switch to")
    if switch:  # a config the switch could not write is refused before the copy, not after it
        from toolkit import memgpt_config

        memgpt_config.preflight(switch)
    started = time.perf_counter()
    with ExitStack() as stores:
        with _refused_unless_usable("--from", source):
            src = stores.enter_context(closing(open_store(source.store(table, snapshot=True))))
            rows, dim = _source_rows(src, source, table)
        batch = batch or default_batch(dim)

        def planned(before: int) -> Result:
            if on_start:
                on_start(rows, before)
            return Result(source=str(source), destination=str(destination), table=table, rows=rows, copied=0,
                          destination_before=before, checksum="", verified=False, dry_run=True,
                          seconds=time.perf_counter() - started, dimension=dim, batch=batch,
                          peak_rss_bytes=peak_rss_bytes(), warnings=warnings)

        if dry_run and destination.kind.holds_nothing(destination):  # opening it might create it
            return planned(0)
        with _refused_unless_usable("--to", destination):
            dst = stores.enter_context(closing(open_store(destination.store(table))))
            if isinstance(dst, WritesAside):
                dst.stage(overwrite=overwrite)
            elif overwrite:
                raise MigrationError(f"--overwrite applies to an archive destination (a parquet:// file), not {destination}",
                                     hint="drop --overwrite: this destination is resumed by upsert")
            before = _destination_rows(dst, destination, table, dim)
            if switch:
                warnings += _unreadable_to_memgpt(dst, destination)
        if dry_run:
            return planned(before)
        if on_start:
            on_start(rows, before)
        copy_started = time.perf_counter()
        expected, got, copy_seconds = _copy(src, dst, destination, table, batch, progress, on_verify, verified)
        _verify(expected, got, dst.count())
        verify_seconds = time.perf_counter() - copy_started - copy_seconds
        if isinstance(dst, WritesAside):
            with _refused_unless_usable("--to", destination):  # another writer's archive came first: refused
                dst.publish()  # only a verified archive appears under its name
    seconds = time.perf_counter() - started
    backup = _switch(switch, destination) if switch else None
    return Result(source=str(source), destination=str(destination), table=table, rows=expected.count,
                  copied=expected.count, destination_before=before, checksum=expected.hexdigest(), verified=True,
                  dry_run=False, seconds=seconds, dimension=dim,
                  switched=str(switch) if switch else None, backup=str(backup) if backup else None, batch=batch,
                  copy_seconds=copy_seconds, verify_seconds=verify_seconds, peak_rss_bytes=peak_rss_bytes(),
                  warnings=warnings)


def _check_request(source: Spec, destination: Spec, batch: int | None) -> None:
    if batch is not None and batch < 1:
        raise MigrationError(f"--batch must be at least 1, not {batch}")
    if source.identity == destination.identity:
        raise MigrationError(f"source and destination are the same store ({source})",
                             hint="pick another destination in --to")
    if source.kind.holds_nothing(source):
        raise MigrationError(f"source {source} does not exist", hint="check the path in --from")


@contextmanager
def _refused_unless_usable(flag: str, spec: Spec) -> Iterator[None]:
    """A store (``flag``: --from or --to) that fails before anything is written (unreachable, unreadable)
    refuses the migration: a ``MigrationError`` (exit 7), not a bare backend failure. A failure while
    copying stays a ``BackendError``: rows were written, and running again resumes."""
    try:
        yield
    except BackendError as exc:
        where = "from" if flag == "--from" else "into"
        raise MigrationError(f"cannot migrate {where} {spec}: {exc.message.rstrip('.')}; nothing was written",
                             hint=exc.hint or f"check {flag}", detail=exc.detail) from exc


def _source_rows(src: ArchivalStore, source: Spec, table: str) -> tuple[int, int]:
    """(rows, embedding dimension) of the source table; a missing or empty one is refused."""
    if not src.exists() or not (rows := src.count()):
        raise MigrationError(f"source table {table} in {source} is missing or empty; nothing to migrate",
                             hint="check --from and --table")
    first = _first(src)
    assert first is not None
    return rows, first.embedding_dim


def _destination_rows(dst: ArchivalStore, destination: Spec, table: str, dim: int) -> int:
    """Rows the destination table holds already (a resumed run); one of another dimension is refused."""
    if not dst.exists():  # also the reachability check: an unreachable server raises BackendError here (a refusal)
        return 0
    before = dst.count()
    existing = _first(dst) if before else None
    if existing is not None and existing.embedding_dim != dim:
        raise MigrationError(
            f"destination table {table} in {destination} holds {existing.embedding_dim}-dimensional "
            f"embeddings, the source {dim}-dimensional; nothing was written",
            hint="migrate into another --table, or drop the destination table first")
    return before


def _copy(src: ArchivalStore, dst: ArchivalStore, destination: Spec, table: str, batch: int,
          progress: Callable[[int], None] | None, on_verify: Callable[[], None] | None,
          verified: Callable[[int], None] | None) -> tuple[Checksum, Checksum, float]:
    """Copy every batch; return the checksums of what was read and of what the destination holds for it,
    and the seconds the copy took (to the last batch written)."""
    expected, got = Checksum(), Checksum()
    started = time.perf_counter()
    read_back = _ReadBack(destination, table, got) if dst.reads_while_writing else None
    columnar = isinstance(dst, InsertsColumns)  # and the source scans columns: no Passage objects on the way
    try:
        for rows in _prefetched(_scan(src, batch, columns=columnar), expected):
            if isinstance(rows, list):
                dst.insert(rows)
            else:
                cast(InsertsColumns, dst).insert_columns(rows)
            if read_back:
                read_back.add([p.id for p in rows] if isinstance(rows, list) else
                              [uuid.UUID(bytes=b) for b in columns.id_bytes(rows)])
            if progress:
                progress(_size(rows))
        copied = time.perf_counter() - started
        if read_back:
            read_back.finish()
        else:
            if on_verify:
                on_verify()
            # smaller batches: a store's reader (LanceDB's) holds several of its own
            for rows in _prefetched(_scan(dst, max(100, batch // 4), columns=True)):  # the store reads while we hash
                got.update_any(rows)
                if verified:
                    verified(_size(rows))
    except BaseException:
        if read_back:
            read_back.abandon()
        raise
    return expected, got, copied


def _unreadable_to_memgpt(dst: ArchivalStore, destination: Spec) -> list[str]:
    """A warning when ``--switch`` points MemGPT 0.3.x at data in a format its pinned clients cannot read."""
    kind = destination.kind
    fmt = getattr(dst, "format", None)
    if fmt is None or fmt != kind.ALIASES.get("current"):  # one format (no aliases), or MemGPT's
        return []
    return [f"{destination} holds format {fmt} ({kind.FORMATS[fmt]}), which MemGPT 0.3.x cannot read (it reads "
            f"{kind.FORMATS[kind.ALIASES['memgpt']]}); a newer MemGPT/Letta reads it. For MemGPT 0.3.x, migrate "
            f"into a new location with --format memgpt"]


def _verify(expected: Checksum, got: Checksum, dst_rows: int) -> None:
    # got holds what the destination has for every source id (read back by id, or the whole table):
    # equal checksums and equal counts mean the destination holds exactly the source's rows
    if dst_rows != expected.count or got.count != expected.count or got.hexdigest() != expected.hexdigest():
        extra = " (it held rows before that are not in the source)" if dst_rows > expected.count else ""
        raise MigrationError(
            f"verification failed: source {expected.count} rows checksum {expected.hexdigest()}, destination "
            f"{dst_rows} rows checksum {got.hexdigest()}{extra}; the source is untouched",
            hint="re-run to resume, or migrate into an empty --table")


def _switch(config: Path, destination: Spec) -> Path | None:
    """Point MemGPT's config at ``destination``; the previous file's backup, if any."""
    from toolkit import memgpt_config

    return memgpt_config.write(config, destination.kind.to_memgpt(destination))
