"""Doctor: what on this machine helps or blocks each part of the toolkit, one check per line, and which
engine `toolkit up` would use. A check fails only for what that engine (or a configured part) needs:
CI reads ``ok`` and the exit code."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from toolkit.settings import Settings

if TYPE_CHECKING:
    from toolkit.engines.base import Choice
    from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    engine: str | None  # what `toolkit up` would use; None when it would refuse (the engine check says why)
    reason: str  # why that engine, or why none
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "engine": self.engine, "reason": self.reason, "checks": as_dicts(self.checks)}


def diagnose(settings: Settings) -> Report:
    """Every check, against the engine `toolkit up` would choose with these settings (asked of the same
    selection, its fallback included; nothing is started or pulled)."""
    from toolkit import engines
    from toolkit.errors import ToolkitError

    planned: tuple[str, str] | ToolkitError
    try:
        planned = engines.plan(settings)
    except ToolkitError as exc:
        planned = exc
    engine, reason = planned if isinstance(planned, tuple) else (None, planned.one_line())
    return Report(engine, reason, _checks(settings, planned))


def run_checks(settings: Settings) -> list[Check]:
    return diagnose(settings).checks


def _checks(settings: Settings, planned: tuple[str, str] | ToolkitError) -> list[Check]:
    engine = planned[0] if isinstance(planned, tuple) else None
    checks = [
        _engine(settings, planned),
        Check("python", sys.version_info >= (3, 10), sys.version.split()[0], "use Python 3.10 or newer"),
        _wheel(engine),
        _port(settings, engine),
        _env_file(settings),
        _docker(settings, planned),
        *_extras(),
        _archival(settings),
        Check("psql", True, shutil.which("psql") or "not on PATH; `toolkit psql` uses the wheel's"),
    ]
    if os.geteuid() == 0:
        checks.append(Check("root", True, "the embedded server will run as the system user toolkit-postgres"))
    return checks


def _engine(settings: Settings, planned: tuple[str, str] | ToolkitError) -> Check:
    """The engine `toolkit up` would use, and why; for the external engine, whether its server answers
    (connect and SELECT 1 as the URL's role: nothing is created)."""
    if not isinstance(planned, tuple):
        return Check("engine", False, f"`toolkit up` would refuse: {planned.message}", planned.hint or "")
    name, why = planned
    if name != "external":
        return Check("engine", True, f"`toolkit up` would use the {name} engine ({why})")
    from toolkit import engines
    from toolkit.errors import ToolkitError
    from toolkit.health import PgProbe, Transient

    url = engines.load("external", settings).endpoint().url
    where = f"postgres at {url.host}:{url.port}"
    try:
        PgProbe(url, extension=False)()
    except Transient as exc:
        return Check("engine", False, f"external: {where} does not answer ({exc})",
                     "start that server, or fix the URL (--url or TOOLKIT_PG_URL)")
    except ToolkitError as exc:
        return Check("engine", False, f"external: {where}: {exc.message}", exc.hint or "")
    return Check("engine", True, f"`toolkit up` would use the external engine ({why}): {where} answers as {url.user}")


def _wheel(engine: str | None) -> Check:
    """The embedded engine's server. Another engine does not need it (`toolkit psql` without a psql of
    its own does): then a broken wheel is said, not failed."""
    from toolkit.engines.wheel import install_dir, missing
    from toolkit.errors import ToolkitError

    needed = engine in (None, "embedded")
    aside = "" if needed else f"; the {engine} engine does not need it, `toolkit psql` may"
    try:
        path = install_dir()
    except ToolkitError as exc:
        return Check("embedded wheel", not needed, exc.message + aside, exc.hint or "")
    gone = missing(path)
    return Check("embedded wheel", not (gone and needed), str(path) + (f" (no {', '.join(gone)}){aside}" if gone else ""),
                 "reinstall: make venv")


def _port(settings: Settings, engine: str | None) -> Check:
    from toolkit.errors import UsageError
    from toolkit.ports import port_holder, port_is_free

    db = settings.db
    if engine == "external":
        return Check("port", True, f"{db.bind}:{db.port} is not used: the external engine's server listens elsewhere")
    try:
        free = port_is_free(db.bind, db.port)
    except UsageError as exc:
        return Check("port", False, exc.message, exc.hint or "")
    if free:
        return Check("port", True, f"{db.bind}:{db.port} is free")
    ours = _our_server(settings)
    if ours is not None:  # taken by our own server is fine
        return Check("port", True, f"{db.bind}:{db.port} is held by the toolkit's own server ({ours})")
    choice = _port_choice(settings)
    if choice is not None:  # nobody gave the port: `up` takes one of this project's own
        return Check("port", True, f"{db.bind}:{db.port} is held by {choice.holder}; `toolkit up` will use port "
                                   f"{choice.value} (this project's own)")
    container = _container_on(settings)
    holder = f"container {container[0]}" if container else port_holder(db.port) or "another process"
    return Check("port", False, f"{db.bind}:{db.port} is held by {holder}", "use --port N or TOOLKIT_PG_PORT")


def _our_server(settings: Settings) -> str | None:
    """The engine whose server runs on the settings' port, asked through the Engine Protocol; or a
    container labelled as this project's publishing it (docker-proxy is what the OS sees)."""
    from toolkit import engines
    from toolkit.errors import ToolkitError

    try:
        engine, _ = engines.select(settings)
        found = engine.status()
    except ToolkitError:
        found = None
    if found is not None and engine.name != "external" and found.running \
            and found.extra.get("port", settings.db.port) == settings.db.port:
        return engine.name
    container = _container_on(settings)
    if container is not None and container[1] == str(settings.project_dir):
        return f"docker: container {container[0]}"
    return None


def _container_on(settings: Settings) -> tuple[str, str | None] | None:
    try:
        from toolkit.engines.docker import container_publishing
    except ImportError:
        return None
    return container_publishing(settings, settings.db.port)


def _port_choice(settings: Settings) -> Choice | None:
    """The port `up` would take instead, when nobody gave it and another holds it."""
    from toolkit import engines
    from toolkit.errors import ToolkitError

    try:
        engine, _ = engines.select(settings, starting=True)
        return next((c for c in engine.choose_free() if c.setting == "db.port"), None)
    except ToolkitError:
        return None


def _env_file(settings: Settings) -> Check:
    path = settings.env_file
    if not path.exists():
        writable = os.access(path.parent, os.W_OK)
        return Check(".env", writable, f"{path} does not exist yet" + ("" if writable else " and its folder is read-only"),
                     "fix the folder's permissions or use --env-file")
    mode = path.stat().st_mode & 0o777
    private = not mode & 0o077
    return Check(".env", private and os.access(path, os.W_OK), f"{path} mode {mode:o}",
                 "chmod 600 .env (it holds a password)")


def _docker(settings: Settings, planned: tuple[str, str] | ToolkitError) -> Check:
    """What Docker gives here, and the engine `toolkit up` would use. Fails when that engine is Docker
    and Docker cannot run it: no engine answers, or the image can be neither found here nor pulled (auto
    never chooses Docker then: ``engines.plan`` falls back to embedded, as `up` does, and says why)."""
    from toolkit import engines

    reason = engines.docker_unavailable_reason(settings)
    if not isinstance(planned, tuple):  # the engine check says why
        return Check("docker", True, "an engine answers" if reason is None else f"not available ({reason})", "optional")
    name, why = planned
    offline = "`toolkit image build`, then TOOLKIT_PG_IMAGE=toolkit/pgvector-offline:pg18"
    if name == "docker":
        if reason is not None:
            return Check("docker", False, f"`toolkit up` would use the docker engine ({why}), but no Docker engine "
                                          f"answers ({reason})", "start Docker, or use --engine embedded")
        from toolkit.engines.docker import image_unobtainable

        problem = image_unobtainable(settings)
        if problem is not None:
            return Check("docker", False, f"`toolkit up` would use the docker engine ({why}), but {problem}",
                         f"{offline}; or use --engine embedded")
        return Check("docker", True, f"an engine answers and has image {settings.image} (or can pull it); "
                                     f"`toolkit up` would use the docker engine ({why})")
    if reason is None and name == "embedded" and engines.falls_back(settings, engines.load("docker", settings)):
        # auto would take Docker, were its image to be had: the fallback, and why
        return Check("docker", True, f"an engine answers, but {why}; so `toolkit up` would use the embedded engine",
                     offline)
    if reason is None:
        return Check("docker", True, f"an engine answers; `toolkit up` would use the {name} engine ({why})")
    said = "" if reason in why else f" ({why})"  # auto's own note repeats the reason
    return Check("docker", True, f"not available ({reason}); `toolkit up` would use the {name} engine{said}", "optional")


def _extras() -> list[Check]:
    """One line per optional extra: installed or not. Optional: a missing one fails no check (the command
    that needs it says so, with exit 4)."""
    from toolkit.extras import EXTRAS

    checks = []
    for extra in EXTRAS.values():
        gone = extra.missing()
        state = f"not installed (no {', '.join(gone)}): {extra.install}" if gone else "installed"
        checks.append(Check(f"extra {extra.name}", True, f"{state}; for {extra.used_by}"))
    return checks


def _archival(settings: Settings) -> Check:
    """Which store MemGPT's config selects, the format its data is in, and what new data is written as."""
    from toolkit import memgpt_config, specs
    from toolkit.backends import formats
    from toolkit.errors import ToolkitError

    default = formats.default(settings.archival_format, settings.memgpt_config_path)
    tail = f"new Chroma/LanceDB data: {default.format} ({default.why})"
    try:
        storage = memgpt_config.read(settings.memgpt_config_path)
        if storage is None:
            return Check("archival", True, f"no MemGPT archival store configured; {tail}")
        spec = specs.from_memgpt(storage, settings)
        return Check("archival", True, f"MemGPT uses {spec}: {spec.kind.describe_data(spec)}; {tail}")
    except ToolkitError as exc:
        return Check("archival", False, exc.message, exc.hint or "")


def as_dicts(checks: list[Check]) -> list[dict[str, object]]:
    return [asdict(c) for c in checks]
