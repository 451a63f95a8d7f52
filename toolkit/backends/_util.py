"""Helpers shared by the backend modules (room: backends/): batching, dimension checks, a context manager."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from toolkit.backends.base import MAX_EMBEDDING_DIM, Passage
from toolkit.errors import BackendError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


class StoreBase:
    """Context-manager support for every store: ``with open_store(loc) as store: ...``."""

    name: str
    reads_while_writing = False

    def close(self) -> None:  # pragma: no cover - overridden where there is something to close
        pass

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unique_by_id(passages: Iterable[Passage]) -> list[Passage]:
    """Last occurrence wins, as an upsert of the sequence would give (and ON CONFLICT needs unique ids)."""
    return list({p.id: p for p in passages}.values())


def batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def matrix(passages: list[Passage]) -> np.ndarray:
    """The embeddings as one float32 (n, dim) array; raises BackendError on ragged or oversized input."""
    import numpy as np

    dims = {p.embedding_dim for p in passages}
    if len(dims) > 1:
        raise BackendError(f"passages have embeddings of different dimensions {sorted(dims)}",
                           hint="insert passages from one embedding model at a time")
    dim = dims.pop() if dims else 0
    check_dim(dim)
    out = np.empty((len(passages), dim), dtype=np.float32)
    for i, p in enumerate(passages):  # row by row into one array: a quarter of np.asarray's time on a list of arrays
        out[i] = p.embedding
    return out


def check_dim(dim: int) -> None:
    if dim <= 0 or dim > MAX_EMBEDDING_DIM:
        raise BackendError(f"embedding dimension {dim} is out of range 1-{MAX_EMBEDDING_DIM}",
                           hint="MemGPT stores embeddings of at most 4096 dimensions")


def check_encodable(batch: list[Passage], where: str) -> None:
    """Refuse, before anything is written, a passage holding text that is not valid UTF-8 (a lone
    surrogate, as a broken decoder leaves it): Postgres and LanceDB cannot encode it, and chromadb 0.5
    stores the row and then fails on reading it. ``where`` names the store (``postgres table X``)."""
    strings = [v for p in batch for v in (p.text, p.data_source, p.embedding_model) if isinstance(v, str)]
    try:  # the usual case in one call (a row at a time was a tenth of a LanceDB insert's time)
        "".join(strings).encode("utf-8")
        if not any(p.metadata for p in batch):
            return
    except UnicodeEncodeError:
        pass
    for p in batch:
        if not all(_encodable(v) for v in (p.text, p.data_source, p.embedding_model, p.metadata)):
            raise BackendError(f"passage {p.id} holds text that is not valid UTF-8 (a lone surrogate); "
                               f"nothing of this batch was written to {where}",
                               hint="fix or drop that passage's text and metadata, then write again")


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_encodable(v) for v in value)
    return True


def dim_mismatch(where: str, existing: int, new: int) -> BackendError:
    return BackendError(f"{where} holds {existing}-dimensional embeddings, not {new}",
                        hint="use the embedding model that filled it, or another table (--table)")


def uuid_or_none(value: Any) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@lru_cache(maxsize=4096)
def owner_uuid(value: str) -> uuid.UUID:
    """The UUID of a user, agent or document from its text: few of them, repeated over many rows, so each is
    parsed once (parsing them was a tenth of a scan)."""
    return uuid.UUID(value)


def owner_uuid_or_none(value: str | None) -> uuid.UUID | None:
    return None if value is None or value == "" else owner_uuid(value)


@lru_cache(maxsize=4096)
def owner_text(value: uuid.UUID | None) -> str | None:
    """An owner's UUID as text (None for None), each once: ``owner_uuid`` the other way, for writers."""
    return None if value is None else str(value)


def to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def dumps(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata or {}, default=str, sort_keys=True)


@contextmanager
def directory_lock(directory: Path, where: str) -> Iterator[None]:
    """One writer at a time in ``directory`` (created when missing), across threads and processes: an
    ``flock`` on the directory itself, so no lock file is left behind and the kernel drops it when its
    holder exits, however it exits. ``where`` names the store in the error when it cannot be had."""
    import fcntl

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise BackendError(f"{where} is not writable: {exc.strerror or exc}",
                           hint="choose a writable directory or fix its permissions") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
