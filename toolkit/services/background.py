"""A helper server the toolkit runs in the background (room: services/): pid file, log, HTTP readiness.

``BackgroundServer`` owns one process started in its own session, with the state dir as its working
directory. Its pid file (``services/pidfile.py``) records the pid and where the server listens and on
which data; a pid counts as ours only when that process is alive, its command line holds the marker,
its working directory is this state dir and (when recorded) its ``--path`` is the recorded one, so a
pid file copied from another checkout, or a recycled pid, never makes us signal someone else.

``up`` and ``down`` of one service hold a lock of that service (an ``flock`` on
``<state_dir>/.<name>.lock``) for the whole operation, so concurrent ``up`` start one server. ``up`` is
idempotent (our healthy server where asked is left alone), refuses when ours runs elsewhere (another
host, port or data path), never adopts a server it did not start (a port one holds is an error, or,
when the port is only a default, a reason to start on a free one), waits with
``toolkit.health.wait_ready`` and, when that fails, stops only the process it spawned itself. ``down``
stops ours wherever it runs (TERM, then KILL); ``status`` reports it where it runs. The Chroma server
and the S3 test server are two instances of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit import perms, proc
from toolkit.errors import NotReadyError, PortInUseError, UsageError
from toolkit.health import Transient, wait_ready
from toolkit.lock import state_lock
from toolkit.ports import free_port, port_holder, port_is_free
from toolkit.services import pidfile
from toolkit.services.pidfile import Record

__all__ = ["BackgroundServer", "Record", "ServiceStatus"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOCK_MARGIN = 30.0  # beyond the readiness timeout: a waiting `up` outlasts the `up` it waits for
_DOWN_LOCK_WAIT = 90.0  # `down` may wait for an `up` of the default timeout (60 s) to finish
_LOG_READ = 4 * 1024 * 1024  # the tail shown comes from the log's last 4 MiB


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    url: str
    pid: int | None = None
    ours: bool = True  # False: something else answers on the port
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.name, "running": self.running, "url": self.url, "pid": self.pid,
                "started_by_toolkit": self.ours, "detail": self.detail}

    def line(self) -> str:
        if not self.running and self.pid is not None:  # ours, alive, not answering
            return f"{self.name}: not answering at {self.url} (pid {self.pid}{f'; {self.detail}' if self.detail else ''})"
        if not self.running:
            return f"{self.name}: stopped{f' ({self.detail})' if self.detail else ''}"
        who = f"pid {self.pid}" if self.ours else "not started by the toolkit"
        return f"{self.name}: running at {self.url} ({who}{f'; {self.detail}' if self.detail else ''})"


@dataclass(frozen=True)
class BackgroundServer:
    name: str  # "chroma", "s3"
    argv: tuple[str, ...]
    host: str
    port: int
    health_path: str  # GET it; any 2xx means ready
    state_dir: Path
    marker: str  # a string in the process's command line, so a recycled pid is not taken for ours
    start_hint: str  # the command that starts it, for messages
    data_path: str | None = None  # the server's data directory (its `--path`), when it has one
    fmt: str | None = None  # the data format it serves, when that varies
    port_flag: str = "--port"  # the option of ``argv`` whose value is the port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return pidfile.path_of(self.state_dir, self.name)

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / f".{self.name}.lock"

    @property
    def down_hint(self) -> str:
        return f"toolkit {self.name} down"

    # -- queries ---------------------------------------------------------------------------------

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            self._probe(timeout)
        except Transient:
            return False
        return True

    def _probe(self, timeout: float = 1.0) -> None:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return
                raise Transient("http", f"GET {self.health_path} answered {response.status}")
        except urllib.error.HTTPError as exc:
            raise Transient("http", f"GET {self.health_path} answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Transient("http", f"{self.host}:{self.port}: {getattr(reason, 'strerror', None) or reason}") \
                from None

    def running(self) -> Record | None:
        """The pid file's record when it names our live server, else None. Changes nothing: a stale
        pid file is removed only by ``up``/``down``, under the service's lock."""
        record = self._read_record()
        return record if record is not None and self._is_ours(record) else None

    def pid(self) -> int | None:
        """The pid of our server process when it is alive, else None."""
        record = self.running()
        return record.pid if record else None

    def at(self, record: Record) -> BackgroundServer:
        """This server moved to where ``record`` says ours listens (a pid-only record: where asked)."""
        if record.legacy:
            return self
        return replace(self, host=record.host or self.host, port=record.port or self.port,
                       health_path=record.health_path or self.health_path, data_path=record.path,
                       fmt=record.fmt)

    def on_port(self, port: int) -> BackgroundServer:
        """This server, asked for on ``port`` instead (its command line too)."""
        argv = list(self.argv)
        argv[argv.index(self.port_flag) + 1] = str(port)
        return replace(self, port=port, argv=tuple(argv))

    def status(self, *, exact: bool = False, foreign: bool = True) -> ServiceStatus:
        """Our server where it runs; else whatever answers where asked. ``exact``: report the asked
        host and port only (a server of ours elsewhere is named in the detail). ``foreign``: a server
        not started here that answers where asked counts as running (an address the user chose);
        False: it is named, not counted (the toolkit's default address, which it never uses for that)."""
        record = self.running()
        if record is not None and (not exact or record.legacy or (record.host, record.port) == (self.host, self.port)):
            where = self.at(record)
            ready = where.healthy()
            return ServiceStatus(self.name, ready, where.url, record.pid, detail="" if ready else "starting or unhealthy")
        elsewhere = f"the toolkit's {self.name} server runs at {self.at(record).url} (pid {record.pid})" if record else ""
        if self.healthy():
            if foreign:
                return ServiceStatus(self.name, True, self.url, None, ours=False, detail=elsewhere)
            holder = port_holder(self.port)
            return ServiceStatus(self.name, False, self.url, None, ours=False,
                                 detail=f"what answers at {self.url}{f', {holder},' if holder else ''} was not started "
                                        f"in this checkout and is not used; `{self.start_hint}` starts this "
                                        "checkout's own on a free port")
        if record is not None:
            return ServiceStatus(self.name, False, self.url, detail=f"nothing answers at {self.url}; {elsewhere}")
        return ServiceStatus(self.name, False, self.url, detail=f"start it with `{self.start_hint}`")

    def logs(self, tail: int = 100) -> str:
        try:
            text = perms.read_bounded(self.log_file, _LOG_READ, start=-_LOG_READ)  # never through a symlink
        except OSError:
            return ""
        lines = _ANSI.sub("", text).splitlines()
        with contextlib.suppress(OSError):
            if self.log_file.lstat().st_size > _LOG_READ:
                lines = lines[1:]  # read from the middle of a line
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, *, timeout: float = 60.0, movable: bool = False) -> ServiceStatus:
        """Start the server where asked and wait until it answers; a healthy one of ours there is kept.
        Refuses (UsageError) when ours runs elsewhere; on failure stops only what this call spawned.

        Never uses a server it did not start: when something else holds the port, that is an error
        (PortInUseError naming the holder), or with ``movable`` (the port is only a default) the server
        starts on a free port instead, and a server of ours on another port is the one wanted. The
        port is chosen under the lock, so concurrent ``up`` agree on it."""
        with self._lock(timeout + _LOCK_MARGIN, "up"):
            record = self.running()
            if record is not None:
                if movable and record.port is not None and record.host == self.host:
                    return self.on_port(record.port)._await_existing(record, timeout)
                return self._await_existing(record, timeout)
            self._drop_stale_pid_file()
            answers = self.healthy()
            if not answers and port_is_free(self.host, self.port):
                return self._start(timeout)
            holder = port_holder(self.port) or "another process"
            what = f"{holder}, a server not started in this checkout" if answers else holder
            if not movable:
                raise PortInUseError(f"port {self.port} on {self.host} is already in use by {what}",
                                     hint=f"choose another port for the {self.name} server with --port N, "
                                          "or stop that process; the toolkit never writes into a server it did not start")
            moved = self.on_port(free_port(self.host))
            state = moved._start(timeout)
            return replace(state, detail=f"port {self.port} is in use by {what}: listening on {moved.port} instead")

    def _start(self, timeout: float) -> ServiceStatus:
        """Spawn the server here and wait for it (under the lock); on failure stop what was spawned."""
        process = self._spawn()
        try:
            self._write_record(Record(process.pid, self.host, self.port, self.data_path, self.fmt, self.health_path))
            wait_ready(self._probe, timeout=timeout, what=f"{self.name} server",
                       alive=lambda: None if process.poll() is None else f"process {process.pid} exited",
                       log_tail=self.logs)
        except BaseException:
            # only the process this call started: the pid file may by now name nothing else
            _stop(process.pid, timeout=10.0)
            process.poll()
            self._drop_record_of(process.pid)
            raise
        return ServiceStatus(self.name, True, self.url, process.pid)

    def _await_existing(self, record: Record, timeout: float) -> ServiceStatus:
        if not self._matches(record):
            where = self.at(record)
            data = f" with data in {where.data_path}" if where.data_path else ""
            at = f"at {where.url}" if not record.legacy else "with other settings (started by an older toolkit)"
            use = f"use port {where.port}" if not record.legacy else "use the running one"
            raise UsageError(f"the toolkit's {self.name} server already runs {at}{data} (pid {record.pid}), "
                             f"not at {self.url}{f' with data in {self.data_path}' if self.data_path else ''}",
                             hint=f"stop it with `{self.down_hint}` first, or {use}")
        try:
            wait_ready(self._probe, timeout=timeout, what=f"{self.name} server",
                       alive=lambda: None if proc.pid_alive(record.pid) else f"process {record.pid} exited",
                       log_tail=self.logs)
        except NotReadyError as exc:
            # not started by this call: never stopped by it
            exc.hint = f"{exc.hint}; it was left running (pid {record.pid}): `{self.down_hint}` stops it"
            raise
        return ServiceStatus(self.name, True, self.url, record.pid)

    def _spawn(self) -> subprocess.Popen[bytes]:
        log = perms.open_private_log(self.log_file)
        try:
            os.write(log, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            return subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.state_dir)
        finally:
            os.close(log)

    def down(self, *, timeout: float = 10.0) -> bool:
        """Stop our server wherever it runs; True when one was running. Never touches a server we did
        not start: a pid file naming anything else is stale, and removed."""
        if not self.state_dir.is_dir():
            return False  # nothing was ever started here: no state dir to create
        with self._lock(_DOWN_LOCK_WAIT, "down"):
            record = self.running()
            if record is None:
                self._drop_stale_pid_file()
                return False
            _stop(record.pid, timeout=timeout)
            self._drop_record_of(record.pid)
            return True

    # -- the pid file and its lock -----------------------------------------------------------------

    def _matches(self, record: Record) -> bool:
        """Is ``record`` the server this object asks for (host, port, data path, format)?"""
        if record.legacy:
            # an older toolkit's pid-only file: the same command line is the same server
            args = pidfile.cmdline(record.pid)
            return args is not None and args[1:] == list(self.argv[1:])
        return (record.host == self.host and record.port == self.port
                and (record.path is None or self.data_path is None or _same_path(record.path, self.data_path))
                and (record.fmt is None or self.fmt is None or record.fmt == self.fmt))

    def _is_ours(self, record: Record) -> bool:
        return pidfile.is_ours(record, self.state_dir, self.marker)

    def _read_record(self) -> Record | None:
        return pidfile.read(self.pid_file)

    def _write_record(self, record: Record) -> None:
        pidfile.write(self.pid_file, record)

    def _drop_record_of(self, pid: int) -> None:
        record = self._read_record()
        if record is not None and record.pid == pid:
            self.pid_file.unlink(missing_ok=True)

    def _drop_stale_pid_file(self) -> None:
        # unlink removes a symlink itself, never its target; called under the lock, after running() said None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _lock(self, wait: float, purpose: str) -> Any:
        """This service's lock (an flock the kernel drops when we exit, however we exit)."""
        return state_lock(self.state_dir, f"{self.name} {purpose}", timeout=wait, name=self.lock_file.name)


def _same_path(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _stop(pid: int, *, timeout: float) -> None:
    """TERM the server's group, then KILL it when it outlives ``timeout``."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while proc.pid_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)


def _signal_group(pid: int, sig: int) -> None:
    # the server runs in its own session: signal its whole group (workers included)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
