"""A backend that is not the toolkit's: passages in this process's memory, ``memory://NAME``.

It exists to prove the promise of ``toolkit/backends/__init__.py``: a backend is one module and one line
in ``BACKENDS``. It uses only what any third-party module could: the Protocols and ``_kind``'s defaults.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind
from toolkit.backends.base import Filters, Passage, Spec, StoreLocation
from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.backends.base import Prompt, Scratch
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "memory"
TITLE = "process memory"
MEMGPT_TYPE = "memory"
SCHEMES = ("memory",)
WORD = "memory"
OWN_QUERY = False
EXAMPLE = "memory://NAME"
SERVER = None
SERVICE = None
EXTRA = None
FORMATS: dict[str, str] = {}
ALIASES: dict[str, str] = {}

TABLES: dict[tuple[str, str], dict[uuid.UUID, Passage]] = {}  # (store, table) -> rows


class MemoryStore:
    name = NAME
    reads_while_writing = True

    def __init__(self, location: StoreLocation) -> None:
        self.key = (location.location, location.table)

    @property
    def rows(self) -> dict[uuid.UUID, Passage]:
        return TABLES.setdefault(self.key, {})

    def insert(self, passages: Iterable[Passage]) -> int:
        batch = list(passages)
        self.rows.update({p.id: replace(p) for p in batch})
        return len(batch)

    def _matching(self, filters: Filters | None) -> list[Passage]:
        wanted = filters.as_dict() if filters else {}
        return [p for p in self.rows.values() if all(getattr(p, k) == v for k, v in wanted.items())]

    def query(self, embedding: Any, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        q = np.asarray(embedding, dtype=np.float32)
        found = self._matching(filters)
        found.sort(key=lambda p: float(np.sum((np.asarray(p.embedding, dtype=np.float32) - q) ** 2)))
        return found[:k]

    def count(self, filters: Filters | None = None) -> int:
        return len(self._matching(filters))

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        ordered = sorted(self.rows.values(), key=lambda p: p.id)
        for start in range(0, len(ordered), batch_size):
            yield ordered[start:start + batch_size]

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        return [self.rows[i] for i in dict.fromkeys(ids) if i in self.rows]

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        return sum(self.rows.pop(i, None) is not None for i in set(ids))

    def drop(self) -> None:
        TABLES.pop(self.key, None)

    def exists(self) -> bool:
        return self.key in TABLES

    def close(self) -> None:
        pass


def open_store(location: StoreLocation) -> MemoryStore:
    return MemoryStore(location)


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    if rest == "":
        raise UsageError(f"no name in {raw!r}", hint="use memory://NAME")
    return Spec(NAME, rest or "default")


def default_spec(settings: Settings) -> Spec:
    return parse(None, WORD, settings)


def render(spec: Spec) -> str:
    return "memory://" + spec.location


def identity(spec: Spec) -> tuple[str, ...]:
    return (NAME, spec.location)


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage(MEMGPT_TYPE, "", spec.location)


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    return parse(storage.uri or None, storage.uri, settings)


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    return parse(uri or None, uri, settings)


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    return uri if uri is not None else prompt("Name of the memory store", default="default"), path


endpoint = _kind.no_endpoint
holds_nothing = _kind.not_known_empty
guarded = _kind.unguarded
describe_data = _kind.one_format



def scratch_spec(scratch: Scratch) -> Spec:
    return Spec(NAME, scratch.table)  # a store of the test's own, named after its table
