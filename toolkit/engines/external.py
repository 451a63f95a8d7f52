"""External engine: a server someone else runs (CI service, cloud). The "noop" lifecycle: ``up`` only
checks and bootstraps nothing but the extension (bootstrap's one step a non-superuser may
be allowed, run by the readiness probe as the application role), ``down`` never touches it."""

from __future__ import annotations

import shutil

from toolkit.engines.base import Admin, Choice, Endpoint, EngineStatus, Progress, quiet
from toolkit.errors import NotReadyError, UsageError
from toolkit.health import AuthFailed, PgProbe, RoleOrDatabaseMissing, wait_ready
from toolkit.settings import Settings
from toolkit.urls import parse


class ExternalEngine:
    name = "external"

    def __init__(self, settings: Settings) -> None:
        if not settings.external_url:
            raise UsageError("engine external needs a URL", hint="pass --url or set TOOLKIT_PG_URL")
        self.settings = settings
        self.url = parse(settings.external_url)

    def up(self, *, progress: Progress = quiet) -> Endpoint:
        try:
            wait_ready(PgProbe(self.url), timeout=self.settings.timeout,
                       what=f"postgres at {self.url.host}:{self.url.port}", secrets=(self.url.password, *self.settings.secrets))
        except (AuthFailed, RoleOrDatabaseMissing) as exc:
            # the engines' hints (another password, `toolkit up` creates them, start over with --purge) are
            # about servers the toolkit runs; this one, and its data, are someone else's
            exc.hint = ("check the user and password in the URL (--url or TOOLKIT_PG_URL); the server is managed "
                        "elsewhere, its roles too") if isinstance(exc, AuthFailed) else \
                       "create that role and database on the server (it is managed elsewhere), or fix the URL"
            raise
        return self.endpoint()

    def endpoint(self) -> Endpoint:
        return Endpoint(self.url)

    def choose_free(self) -> list[Choice]:
        return []  # its address is given, never chosen

    def down(self, *, purge: bool = False) -> None:
        # not ours to stop or delete
        return None

    def status(self) -> EngineStatus:
        try:
            # read-only: status never creates the extension on a server someone else runs
            wait_ready(PgProbe(self.url, extension=False), timeout=2, secrets=(self.url.password,))
        except NotReadyError as exc:
            return EngineStatus(self.name, False, exc.one_line())
        return EngineStatus(self.name, True, f"{self.url.host}:{self.url.port} (managed elsewhere)")

    def logs(self, tail: int = 100) -> str:
        return "(the external engine has no server log here)"

    def admin(self) -> Admin:
        # the only role known here: it owns what it creates, and may need CREATEDB (checked where used)
        return Admin(self.url, self.url.user)

    def tool(self, name: str) -> str:
        from toolkit.engines.tools import fitting_tool

        return str(fitting_tool(name, self.url))

    def psql_argv(self, url: str) -> list[str]:
        local = shutil.which("psql")
        if local:
            return [local, url]
        from toolkit.engines.wheel import bin_path

        return [str(bin_path("psql")), url]
