"""A helper server the toolkit runs in the background (room: services/): pid file, log, HTTP readiness.

``BackgroundServer`` owns one process started in its own session: ``up`` is idempotent (a healthy
server of ours is left alone), waits with ``toolkit.health.wait_ready`` (fast polls, fails at once when
the process dies, log tail on failure), ``down`` stops it (TERM, then KILL), ``status`` and ``logs``
read the state files. The Chroma server and the S3 test server are two instances of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import proc
from toolkit.errors import NotReadyError, PortInUseError
from toolkit.health import Transient, wait_ready
from toolkit.ports import port_holder, port_is_free

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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
        if not self.running:
            return f"{self.name}: stopped{f' ({self.detail})' if self.detail else ''}"
        who = f"pid {self.pid}" if self.ours else "not started by the toolkit"
        return f"{self.name}: running at {self.url} ({who})"


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

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

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

    def pid(self) -> int | None:
        """The pid of our server process when it is alive, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if self.marker in cmdline and proc.pid_alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def status(self) -> ServiceStatus:
        pid = self.pid()
        if pid is not None:
            ready = self.healthy()
            return ServiceStatus(self.name, ready, self.url, pid, detail="" if ready else "starting or unhealthy")
        if self.healthy():
            return ServiceStatus(self.name, True, self.url, None, ours=False)
        return ServiceStatus(self.name, False, self.url, detail=f"start it with `{self.start_hint}`")

    def logs(self, tail: int = 100) -> str:
        try:
            lines = _ANSI.sub("", self.log_file.read_text(errors="replace")).splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, *, timeout: float = 60.0) -> ServiceStatus:
        pid = self.pid()
        if pid is None:
            if self.healthy():
                return ServiceStatus(self.name, True, self.url, None, ours=False)
            if not port_is_free(self.host, self.port):
                holder = port_holder(self.port)
                raise PortInUseError(f"port {self.port} is taken{f' by {holder}' if holder else ''}",
                                     hint=f"free it, or choose another port for the {self.name} server")
            pid = self._spawn()
        try:
            wait_ready(self._probe, timeout=timeout, what=f"{self.name} server",
                       alive=lambda: None if proc.pid_alive(pid) else f"process {pid} exited", log_tail=self.logs)
        except NotReadyError:
            self.down()
            raise
        return ServiceStatus(self.name, True, self.url, pid)

    def _spawn(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=self.state_dir)
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def down(self, *, timeout: float = 10.0) -> bool:
        """Stop our server; True when one was running. Never touches a server we did not start."""
        pid = self.pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while proc.pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: int) -> None:
    # the server runs in its own session: signal its whole group (workers included)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
