"""Doctor: what on this machine helps or blocks each part of the toolkit, one check per line."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from toolkit.settings import Settings

if TYPE_CHECKING:
    from toolkit.engines.base import Choice


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    checks = [
        Check("python", sys.version_info >= (3, 10), sys.version.split()[0], "use Python 3.10 or newer"),
        _wheel(),
        _port(settings),
        _env_file(settings),
        _docker(settings),
        *_extras(),
        _archival(settings),
        Check("psql", True, shutil.which("psql") or "not on PATH; `toolkit psql` uses the wheel's"),
    ]
    if os.geteuid() == 0:
        checks.append(Check("root", True, "the embedded server will run as the system user toolkit-postgres"))
    return checks


def _wheel() -> Check:
    from toolkit.engines.wheel import install_dir, missing
    from toolkit.errors import ToolkitError

    try:
        path = install_dir()
    except ToolkitError as exc:
        return Check("embedded wheel", False, exc.message, exc.hint or "")
    gone = missing(path)
    return Check("embedded wheel", not gone, str(path) + (f" (no {', '.join(gone)})" if gone else ""),
                 "reinstall: make venv")


def _port(settings: Settings) -> Check:
    from toolkit.errors import UsageError
    from toolkit.ports import port_holder, port_is_free

    db = settings.db
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


def _docker(settings: Settings) -> Check:
    from toolkit import engines
    from toolkit.errors import ToolkitError

    reason = engines.docker_unavailable_reason(settings)
    try:
        name, why = engines.plan(settings)
    except ToolkitError as exc:
        return Check("docker", False, exc.message, exc.hint or "")
    if reason is None:
        return Check("docker", True, f"an engine answers; `toolkit up` would use the {name} engine ({why})")
    return Check("docker", True, f"not available ({reason}); `toolkit up` would use the {name} engine", "optional")


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
