"""TCP ports: is one free to listen on, and who holds it when it is not."""

from __future__ import annotations

import errno
import socket

from toolkit.errors import UsageError


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


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
