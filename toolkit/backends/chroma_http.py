"""The Chroma backend through a server's HTTP API (room: backends/): ``chroma+http://HOST:PORT``.

The store is chroma.py's ``ChromaStore`` (it speaks to a directory or a server alike); this module says
what is particular to a server: its SPEC, the server `toolkit chroma up` starts, MemGPT's ``uri`` key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit.backends import _kind, chroma
from toolkit.backends.base import Spec

if TYPE_CHECKING:
    from toolkit.backends.base import Prompt, Scratch, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "chroma-http"
TITLE = "Chroma server (HTTP client)"
MEMGPT_TYPE = chroma.MEMGPT_TYPE
SCHEMES = ("chroma+http",)
WORD = "chroma+http"
OWN_QUERY = False
EXAMPLE = "chroma+http://HOST:PORT"
SERVER = "toolkit chroma up"
SERVICE = "chroma"  # a helper server the toolkit runs (services/registry.py)
EXTRA = chroma.EXTRA
FORMATS = chroma.FORMATS
ALIASES = chroma.ALIASES

open_store = chroma.open_store


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    if rest is None:
        return Spec(NAME, f"{settings.chroma_host}:{settings.chroma_port}")
    return Spec(NAME, _kind.host_port(rest, raw, default_port=settings.chroma_port))


def default_spec(settings: Settings) -> Spec:
    return parse(None, WORD, settings)


def render(spec: Spec) -> str:
    return _kind.with_format("chroma+http://" + spec.location, spec)


def identity(spec: Spec) -> tuple[str, ...]:
    host, port = chroma.host_port(spec.location)
    return (NAME, "127.0.0.1" if host == "localhost" else host, str(port))


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage("chroma", "", spec.location)  # path must be empty, or MemGPT goes persistent


from_memgpt = chroma.from_memgpt


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    if path and not uri:  # answered "persistent" to `configure --backend chroma-http`'s question
        return chroma.from_choice("", path, settings)
    from toolkit import specs

    hostport = uri.removeprefix("http://").removeprefix("chroma+http://")
    return specs.parse("chroma+http://" + hostport if hostport else WORD, settings)  # ?format= as in any SPEC


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    return chroma.ask_client(uri, path, old, settings, prompt, http=True)


def endpoint(location: StoreLocation) -> tuple[str, int] | None:
    return chroma.host_port(location.location)


holds_nothing = _kind.not_known_empty
guarded = _kind.unguarded


def describe_data(spec: Spec) -> str:
    found = chroma.server_format(*chroma.host_port(spec.location), timeout=1.0)
    return chroma.describe(found) if found else "server not answering"


def scratch_spec(scratch: Scratch) -> Spec:
    """The run's Chroma server; the table's name keeps tests apart in it."""
    return default_spec(scratch.service(SERVICE))
