"""The conformance check every archival backend must pass (room: smoke.py), behind `toolkit smoke`.

For each backend, in a uniquely named temporary table: insert N passages with seeded embeddings
(twice: writes are upserts), count, require every k-th passage to be its own nearest neighbour,
filter by agent, delete some, count again, and drop the table in ``finally``. Checks run in parallel
threads, each time-bounded; a backend whose server is not running is reported with the command that
starts it, without trying.

Formats: a Chroma directory written by another client generation (MemGPT's chromadb 0.5) is checked on
a private copy through that generation's client, so the user's directory stays byte for byte as it was;
the result line names the format and the client that checked it.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from toolkit import extras
from toolkit.backends import BACKENDS, MEMGPT_DEFAULT, NotConfigured, StoreLocation, backend, open_store
from toolkit.backends.base import Filters, Passage
from toolkit.errors import BackendError, ToolkitError, UsageError
from toolkit.settings import Settings
from toolkit.urls import redact

ALWAYS = "postgres"  # checked besides the configured one: the database `toolkit up` provisions
USER = uuid.UUID("5e1f5e1f-0000-4000-8000-000000000000")
AGENTS = (uuid.UUID("5e1f5e1f-0000-4000-8000-0000000000a1"), uuid.UUID("5e1f5e1f-0000-4000-8000-0000000000a2"))
LATENT = 16  # intrinsic dimension of the seeded embeddings


@dataclass(frozen=True)
class Result:
    backend: str
    status: str  # pass | fail | not running | not installed | timeout
    seconds: float
    detail: str
    location: str = ""
    format: str = ""  # the on-disk format checked (chroma 0.5 / 1, lancedb legacy / stable), where it applies

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "result": self.status, "ok": self.ok, "seconds": round(self.seconds, 3),
                "detail": self.detail, "location": self.location, "format": self.format or None}


@dataclass(frozen=True)
class Target:
    backend: str
    location: StoreLocation | None
    problem: str | None = None  # why it cannot be checked (not running, not configured)
    hint: str | None = None  # how to fix that: the command that starts the server
    status: str | None = None  # its row's result when not checked [default: not running, or fail without a location]

    @property
    def why(self) -> str:
        """``problem; hint``: the detail of its row in the table."""
        return "; ".join(part for part in (self.problem, self.hint) if part)


# -- which backends, where ----------------------------------------------------------------------------

def targets(settings: Settings, selection: str | None, fmt: str | None = None) -> list[Target]:
    """``selection``: a backend name, ``all``, or None for the MemGPT config's backend plus postgres.
    ``fmt``: the format to write (memgpt, current, or a backend's own name), where it applies."""
    if selection in BACKENDS:  # the one backend asked for lacks its library: that is the whole answer (exit 4)
        extras.require(backend(selection).EXTRA, selection)
    chosen = [_installed(t) for t in _targets(settings, selection)]
    return [_with_format(t, fmt, chosen) for t in chosen]


def _installed(t: Target) -> Target:
    """``t``, or ``t`` not to be checked when its backend's library (an extra) is not installed."""
    missing = extras.problem(backend(t.backend).EXTRA, t.backend)
    if missing is None:
        return t
    return replace(t, problem=missing.message, hint=missing.hint, status="not installed")


def _with_format(t: Target, fmt: str | None, chosen: list[Target]) -> Target:
    """``t`` writing ``fmt``; a backend-specific name (``0.5``) applies to the backends that know it, and an
    unknown one to none is an error."""
    from toolkit.backends import formats

    if t.location is None or fmt is None:
        return t
    try:
        wanted = formats.normalize(t.backend, fmt)
    except UsageError:
        for other in chosen:
            try:
                formats.normalize(other.backend, fmt)
                return t  # another backend's format: not this one's business
            except UsageError:
                continue
        raise
    return replace(t, location=replace(t.location, format=wanted))


def _targets(settings: Settings, selection: str | None) -> list[Target]:
    if selection == "all":
        return [target(name, settings) for name in BACKENDS]
    if selection is not None:
        if selection not in BACKENDS:
            raise UsageError(f"unknown backend {selection!r}", hint=f"choose one of {', '.join(BACKENDS)} or all")
        return [target(selection, settings)]
    from toolkit import memgpt_config, specs

    storage = memgpt_config.read(settings.memgpt_config_path)
    chosen: list[Target] = []
    if storage is not None:
        spec = specs.from_memgpt(storage, settings)
        chosen.append(_preflight(spec.store()))
    else:
        chosen.append(target(MEMGPT_DEFAULT, settings))
    if all(t.backend != ALWAYS for t in chosen):
        chosen.append(target(ALWAYS, settings))
    return chosen


def target(name: str, settings: Settings) -> Target:
    """The location ``name``'s check uses by default (its module's ``default_spec``), and whether its
    server is there (and, at the toolkit's default address, is the toolkit's own)."""
    from toolkit import specs

    try:
        spec = backend(name).default_spec(settings)
    except NotConfigured as exc:
        return Target(name, None, exc.message, exc.hint)
    location = specs.with_defaults(spec, settings).store()
    foreign = _not_ours(location, settings)
    return Target(name, location, *foreign) if foreign else _preflight(location)


def _not_ours(location: StoreLocation, settings: Settings) -> tuple[str, str] | None:
    """(problem, hint) when ``location`` is the default address of a helper server the toolkit runs (not
    one the user chose) and the toolkit's server of this checkout does not run there: whatever answers
    may be another user's or another checkout's server, and smoke never writes into it."""
    from toolkit.services import pidfile
    from toolkit.services.registry import SERVICES

    kind = backend(location.backend)
    endpoint = kind.endpoint(location)
    if kind.SERVICE is None or endpoint is None or SERVICES[kind.SERVICE].user_address(settings):
        return None
    host, port = endpoint
    ours = pidfile.running(settings.state_dir, kind.SERVICE)
    if ours is not None and ours.port == port and _same_host(ours.host or "", host):
        return None
    hint = f"start it with `{kind.SERVER}`"
    if not _answers(host, port):
        return f"nothing answers at {host}:{port}", hint
    return (f"the {kind.SERVICE} server at {host}:{port} was not started by this checkout, so it is not used"), \
        f"{hint} (on a free port when that one is taken)"


def _same_host(a: str, b: str) -> bool:
    loopback = ("127.0.0.1", "localhost")
    return a == b or (a in loopback and b in loopback)


def _preflight(location: StoreLocation) -> Target:
    """Is the server there at all? A quick TCP connect, so a stopped server is named, not timed out."""
    kind = backend(location.backend)
    endpoint = kind.endpoint(location)
    if endpoint and not _answers(*endpoint):
        return Target(kind.NAME, location, f"nothing answers at {endpoint[0]}:{endpoint[1]}",
                      f"start it with `{kind.SERVER}`" if kind.SERVER else None)
    return Target(kind.NAME, location)


def nothing_checked(chosen: list[Target]) -> BackendError | None:
    """The error for a run in which no backend could be checked at all (``--backend postgres`` with the
    server down): a backend failure (exit 6), not a failed check. None when at least one check could run."""
    if not chosen or any(t.problem is None for t in chosen):
        return None
    hints = list(dict.fromkeys(t.hint for t in chosen if t.hint))
    return BackendError("; ".join(f"{t.backend} {t.status or 'not running'} ({t.problem})" for t in chosen),
                        hint="; ".join(hints) or None)


def _answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


# -- one check ------------------------------------------------------------------------------------

def seeded_passages(n: int, dim: int, seed: int = 0) -> list[Passage]:
    """``n`` passages whose ``dim``-dimensional embeddings span a ``LATENT``-dimensional subspace, as real
    embeddings concentrate on few directions. Isotropic noise of hundreds of dimensions is the worst case of
    approximate (HNSW) search: Chroma missed a passage's own vector for 18% of 12000 such passages of 1536
    dimensions (4% with ef_search 1000), so the self-queries measured its recall on data no model makes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, min(dim, LATENT)))
    if dim > LATENT:
        vectors = vectors @ rng.standard_normal((LATENT, dim))
    vectors = vectors.astype(np.float32)
    return [Passage(id=uuid.uuid5(USER, f"smoke-{seed}-{i}"), user_id=USER, agent_id=AGENTS[i % 2],
                    text=f"smoke passage {i}", embedding=vectors[i], data_source="toolkit-smoke",
                    embedding_model="seeded-numpy", metadata={"i": i}) for i in range(n)]


def exercise(location: StoreLocation, *, n: int = 100, dim: int = 1536, seed: int = 0,
             on_open: Callable[[Any], None] | None = None, cancelled: Callable[[], bool] = lambda: False) -> str:
    """Run every step against a fresh table at ``location``; return a detail line, raise on failure.

    ``cancelled()`` is asked between steps: a check past its time bound stops there and drops its table.
    """
    return _exercise(location, n=n, dim=dim, seed=seed, on_open=on_open, cancelled=cancelled)[0]


def _exercise(location: StoreLocation, *, n: int, dim: int, seed: int, on_open: Callable[[Any], None] | None,
              cancelled: Callable[[], bool]) -> tuple[str, str]:
    """(detail line, format) of one check; see ``exercise``."""
    if n < 2:
        raise UsageError("smoke needs at least 2 passages", hint="use -n 2 or more")
    data = seeded_passages(n, dim, seed)
    step = "open"
    store = open_store(location)
    try:
        if on_open:
            on_open(store)
        step = _next("insert", cancelled)
        store.insert(data)
        store.insert(data[: n // 2])  # upsert: same ids again must not duplicate
        step = _next("count", cancelled)
        _expect(store.count(), n, "rows after inserting twice")
        step = _next("query", cancelled)
        every = max(1, n // 10)
        for p in data[::every]:
            found = store.query(p.embedding, 1)
            if not found or found[0].id != p.id:
                raise AssertionError(f"passage {p.text!r} is not its own nearest neighbour")
        step = _next("filter", cancelled)
        agent = Filters(user_id=USER, agent_id=AGENTS[0])
        _expect(store.count(agent), (n + 1) // 2, "rows of one agent")
        hits = store.query(data[1].embedding, 5, agent)
        if not hits or any(h.agent_id != AGENTS[0] for h in hits):
            raise AssertionError("a query filtered by agent returned another agent's passage")
        step = _next("delete", cancelled)
        gone = [p.id for p in data[::every]]
        _expect(store.delete(gone), len(gone), "deleted rows")
        _expect(store.count(), n - len(gone), "rows after delete")
        step = _next("drop", cancelled)
        store.drop()
        if store.exists():
            raise AssertionError("the table still exists after drop")
        detail = f"{n} x {dim}: upsert, {len(data[::every])} self-queries, agent filter, delete, drop"
        note = getattr(store, "format_note", "")
        return (f"{detail}; {note}" if note else detail), getattr(store, "format", "")
    except ToolkitError as exc:
        raise ToolkitError(f"{step}: {exc.one_line()}") from None
    except AssertionError as exc:
        raise ToolkitError(f"{step}: {exc}") from None
    finally:
        try:
            store.drop()
        except Exception:  # noqa: BLE001 - best effort; the original failure is what matters
            pass
        store.close()


def _next(step: str, cancelled: Callable[[], bool]) -> str:
    if cancelled():
        raise AssertionError("stopped: past its time bound")
    return step


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: expected {want}, got {got}")


def check_location(location: StoreLocation, *, n: int = 100, dim: int = 1536, timeout: float = 120.0) -> Result:
    """One backend's check at ``location`` (its table name replaced by a unique temporary one)."""
    return run([Target(location.backend, location)], n=n, dim=dim, timeout=timeout)[0]


# -- many checks in parallel ------------------------------------------------------------------------

def run(chosen: list[Target], *, n: int = 100, dim: int = 1536, timeout: float = 120.0,
        grace: float = 15.0) -> list[Result]:
    """Check every target in its own thread; each is bounded by ``timeout`` seconds.

    A check past its bound is reported as a timeout and told to stop; we then wait up to ``grace``
    seconds for it to drop its table, so a slow backend leaves nothing behind either.
    """
    import zoneinfo  # noqa: F401 - imported here, not first by pyarrow inside racing threads (seen failing in CI)

    cancel = threading.Event()
    results: dict[int, Result] = {}
    # each check's end, as an Event: after a KeyboardInterrupt in Thread.join, Python 3.11's is_alive()
    # says False of a thread that still runs (its join marks it stopped on the way out)
    checks: dict[int, tuple[threading.Event, float, StoreLocation]] = {}

    def check(i: int, t: Target, location: StoreLocation) -> None:
        start = time.monotonic()
        try:
            guarded = backend(location.backend).guarded(location)  # someone else's data: on a private copy
            detail, fmt = _exercise(guarded, n=n, dim=dim, seed=0, on_open=None, cancelled=cancel.is_set)
            outcome = Result(t.backend, "pass", time.monotonic() - start, detail, location.describe(), fmt)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row of the table
            message = exc.one_line() if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}"
            outcome = Result(t.backend, "fail", time.monotonic() - start, redact(message), location.describe())
        results.setdefault(i, outcome)  # a timeout already reported stays reported

    def work(i: int, t: Target, location: StoreLocation, done: threading.Event) -> None:
        try:
            check(i, t, location)
        finally:
            done.set()

    for i, t in enumerate(chosen):
        if t.location is None or t.problem:
            shown = t.location.describe() if t.location else ""
            results[i] = Result(t.backend, t.status or ("not running" if t.location else "fail"), 0.0, t.why, shown)
            continue
        location = replace(t.location, table=f"toolkit_smoke_{uuid.uuid4().hex[:12]}")
        done = threading.Event()
        checks[i] = (done, time.monotonic(), location)
        threading.Thread(target=work, args=(i, t, location, done), name=f"smoke-{t.backend}", daemon=True).start()
    late: dict[int, float] = {}
    try:
        for i, (done, started, _) in checks.items():
            if not _wait(done, started + timeout):
                late[i] = time.monotonic() - started
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: each check stops at its next step and drops its table
        cancel.set()
        deadline = time.monotonic() + grace
        for done, _, _ in checks.values():
            _wait(done, deadline)  # a second Ctrl-C stops waiting
        raise
    if late:
        cancel.set()  # each late check stops at its next step and drops its table in `finally`
        deadline = time.monotonic() + grace
        for i, seconds in late.items():
            done, _, location = checks[i]
            left = "; its table was dropped" if _wait(done, deadline) else f"; table {location.table} may be left behind"
            results[i] = Result(chosen[i].backend, "timeout", seconds, f"no answer within {timeout:g}s{left}",
                                location.describe())
    return [results[i] for i in range(len(chosen))]


def _wait(done: threading.Event, deadline: float) -> bool:
    """Wait for ``done`` until ``deadline`` (monotonic), in short slices: a signal that lands in another
    thread (NumPy's BLAS threads take them too) is handled by the main thread only when it runs again.
    True when it is set."""
    while not done.is_set() and time.monotonic() < deadline:
        done.wait(min(0.2, max(0.0, deadline - time.monotonic())))
    return done.is_set()


def table(results: list[Result]) -> str:
    """The human table: backend, result, time, detail."""
    rows = [("backend", "result", "time", "detail")] + [
        (r.backend, r.status, f"{r.seconds:.2f}s", r.detail) for r in results]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)
