"""TCP ports: is one free to listen on, who holds it when it is not (one error for every engine), and
which address reaches a server listening on a given bind address."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from toolkit.errors import PortInUseError, UsageError


def port_is_free(host: str, port: int) -> bool:
    """True when we could listen on host:port right now (what the server is about to do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like a server: TIME_WAIT leftovers do not count as taken
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             hint="use an address of this machine with --bind (default 127.0.0.1)") from None
    return True


def check_free(bind: str, port: int, *, holder: Callable[[int], tuple[str, str] | None] | None = None) -> None:
    """Raise ``PortInUseError`` naming who holds ``bind:port`` when a server could not listen there now.
    ``holder``: an engine's own way to name it (a container) and the fix, before the OS's process table."""
    if port_is_free(bind, port):
        return
    raise in_use_error(bind, port, holder=holder)


def in_use_error(bind: str, port: int, *, holder: Callable[[int], tuple[str, str] | None] | None = None) -> PortInUseError:
    """The one wording of "port taken": who holds it (as far as we can see) and the ways out."""
    found = holder(port) if holder is not None else None
    if found is None:
        process = port_holder(port)
        found = (process or "another process", "stop that process")
    who, fix = found
    return PortInUseError(f"port {port} on {bind} is already in use by {who}",
                          hint=f"pick another port with --port N (or TOOLKIT_PG_PORT), or {fix}")


def connect_host(bind: str) -> str:
    """Where a client on this machine reaches a server listening on ``bind`` (its first address; a
    wildcard means loopback)."""
    first = bind.split(",")[0].strip()
    return "127.0.0.1" if first in ("0.0.0.0", "*", "") else ("::1" if first == "::" else first)


def port_holder(port: int) -> str | None:
    """'pid 123 (nginx)' for the process listening on ``port``, when the OS lets us see it."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return "another user's process"
                try:
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({proc.name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except Exception:  # noqa: BLE001 - best effort: the caller still reports the port as taken
        return None
    return None


OWN_PORTS = (20000, 30000)  # where a project's own port is derived: below Linux's ephemeral range (32768-)


def own_port(bind: str, seed: str) -> int:
    """A port free on ``bind`` now for the project ``seed`` names: derived from it, so the same project
    gets the same port each time it must choose one (while it stays free), two projects different ones."""
    import hashlib

    low, high = OWN_PORTS
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % (high - low)
    for step in range(64):
        port = low + (start + step) % (high - low)
        if port_is_free(bind, port):
            return port
    return free_port(bind.split(",")[0].strip())  # a crowded range: any port the OS says is free


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free now on ``host`` (an IPv4 or IPv6 address)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
