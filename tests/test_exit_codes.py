"""Every row of README's exit-code table, provoked through the real CLI (a subprocess, real servers and
sockets): what a script or a CI job can rely on.

One case per way of reaching a code; the table test checks that every code README documents has a case,
so a new row cannot go untested.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backend_support import passages
from tests.support import REPO, run_toolkit, spawn_toolkit, wait_until
from toolkit.ports import free_port


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@contextmanager
def _listener(*, answer: bool) -> Iterator[tuple[int, threading.Event]]:
    """A TCP port on 127.0.0.1 that accepts connections and never speaks Postgres: each is closed at once
    (``answer``: True), or held open in silence (False). Yields the port and an event set on the first
    connection (the client is then certainly waiting on it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)  # accept() wakes to see the test is over (close() does not wake it)
    connected, over, held = threading.Event(), threading.Event(), []

    def serve() -> None:
        while not over.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            connected.set()
            conn.close() if answer else held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], connected
    finally:
        over.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


def _run(*args: str, env: dict[str, str] | None = None) -> Outcome:
    done = run_toolkit(*args, env=env)
    return Outcome(done.returncode, done.stdout, done.stderr)


# -- the cases: each provokes one exit code for one reason, through the real CLI ------------------------------


def declined_confirmation(project: Path) -> Outcome:
    """A terminal on stdin (a pty), and the user answers "n" to `down --purge`."""
    primary, secondary = pty.openpty()
    try:
        victim = spawn_toolkit("down", "--purge", cwd=project, stdin=secondary)
        os.close(secondary)
        os.write(primary, b"n\n")
        out, err = victim.communicate(timeout=60)
    finally:
        os.close(primary)
    return Outcome(victim.returncode, out, err)


def terminated_at_a_prompt(project: Path) -> Outcome:
    """SIGTERM while `down --purge` waits for an answer on a terminal: click's prompt turns what it catches
    into a plain Abort, which must still exit 143, not 130."""
    primary, secondary = pty.openpty()
    try:
        victim = spawn_toolkit("down", "--purge", cwd=project, stdin=secondary)
        os.close(secondary)
        shown = b""

        def asked() -> bool:
            nonlocal shown
            if select.select([victim.stderr], [], [], 0.1)[0]:  # the prompt ends in no newline: read what is there
                shown += os.read(victim.stderr.fileno(), 1024)  # type: ignore[union-attr]
            assert victim.poll() is None, victim.communicate()
            return b"[y/N]" in shown

        wait_until(asked, 60, "the confirmation prompt")
        victim.send_signal(signal.SIGTERM)
        out, err = victim.communicate(timeout=60)
    finally:
        os.close(primary)
    return Outcome(victim.returncode, out, shown.decode() + err)


def purge_without_a_terminal(project: Path) -> Outcome:
    return _run("down", "--purge")


def bad_flag(project: Path) -> Outcome:
    return _run("up", "--port", "abc")


def bad_setting(project: Path) -> Outcome:
    return _run("up", env={"TOOLKIT_PG_PORT": "eighty"})


def unreadable_env_file(project: Path) -> Outcome:
    (project / ".env").mkdir()
    return _run("status")


def port_taken(project: Path) -> Outcome:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        return _run("up", "--engine", "embedded", "--port", str(squatter.getsockname()[1]))


def docker_daemon_dead(project: Path) -> Outcome:
    """DOCKER_HOST names a socket file nobody listens on (a daemon that died): connection refused."""
    path = project / "docker.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    return _run("up", "--engine", "docker", env={"DOCKER_HOST": f"unix://{path}"})


def server_never_ready(project: Path) -> Outcome:
    """An external server whose port accepts and closes every connection: never a Postgres."""
    with _listener(answer=True) as (port, _):
        return _run("up", "--engine", "external", "--timeout", "1",
                    "--url", f"postgresql://memgpt:memgpt@127.0.0.1:{port}/memgpt")


def backend_check_fails(project: Path) -> Outcome:
    """LanceDB in a directory nobody may create, not even root (/sys)."""
    return _run("smoke", "--backend", "lancedb", "-n", "4", "--dim", "4",
                env={"TOOLKIT_LANCEDB_URI": "/sys/toolkit-exit-codes-lance"})


def no_backend_could_be_checked(project: Path) -> Outcome:
    url = f"postgresql+pg8000://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt"
    return _run("smoke", "--backend", "postgres", "-n", "4", "--dim", "4", env={"PGVECTOR_TEST_DB_URL": url})


def _local_source(project: Path) -> str:
    from toolkit.backends import DEFAULT_TABLE, open_store
    from toolkit.specs import Spec

    spec = Spec("local", str(project / "archival"))
    with closing(open_store(spec.store(DEFAULT_TABLE))) as store:
        store.insert(passages(5, dim=4))
    return f"local://{project / 'archival'}"


def migrate_to_unreachable(project: Path) -> Outcome:
    return _run("migrate", "--from", _local_source(project),
                "--to", f"postgresql://memgpt:memgpt@127.0.0.1:{free_port()}/memgpt")


def migrate_onto_itself(project: Path) -> Outcome:
    source = _local_source(project)
    return _run("migrate", "--from", source, "--to", source)


def internal_error(project: Path) -> Outcome:
    """A bug: the real entry point in a subprocess, one library call replaced by one that raises what no
    code expects (as test_lifecycle does in-process)."""
    code = ("import sys\nfrom toolkit import api\nfrom toolkit.cli import main\n"
            "def broken(settings):\n    raise RuntimeError('a bug')\n"
            "api.status = broken\nmain(['status'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project, timeout=120)
    return Outcome(done.returncode, done.stdout, done.stderr)


def interrupted_while_importing(project: Path) -> Outcome:
    return _wrapped_signal(project, signal.SIGINT)


def terminated_while_importing(project: Path) -> Outcome:
    return _wrapped_signal(project, signal.SIGTERM)


def _wrapped_signal(project: Path, sig: signal.Signals) -> Outcome:
    """The signal arrives while Python creates a class (a module imported mid-command): Python reports what
    the handler raised as RuntimeError "Error calling __set_name__", caused by it. Still 130/143, not 70."""
    code = ("import os, signal, sys\nfrom toolkit import api\nfrom toolkit.cli import main\n"
            "class Descriptor:\n    def __set_name__(self, owner, name):\n"
            f"        os.kill(os.getpid(), {int(sig)})\n"
            "def importing(settings):\n    class Engine:\n        attribute = Descriptor()\n"
            "api.status = importing\nmain(['status'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project, timeout=120)
    return Outcome(done.returncode, done.stdout, done.stderr)


def interrupted_in_exec_under_python_m(project: Path) -> Outcome:
    """Ctrl-C lands in code that exec() runs from a string (dataclasses and namedtuple build their methods
    that way, so: a module imported as the signal arrives). CPython 3.11 remembers that KeyboardInterrupt
    even though we caught it, and `python -m toolkit` then ended the process by SIGINT (-2), not 130."""
    hook = project.parent / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from toolkit import api\n"
        "def status(settings, *args, **kwargs):\n"
        "    exec('import os, signal; os.kill(os.getpid(), signal.SIGINT)')\n"
        "api.status = status\n")
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    victim = spawn_toolkit("status", cwd=project, env={"PYTHONPATH": path})
    out, err = victim.communicate(timeout=120)
    return Outcome(victim.returncode, out, err)


def _signalled_up(project: Path, sig: signal.Signals) -> Outcome:
    """`toolkit up` waiting for a server that is never ready (a long --timeout): signalled once it has
    connected, so certainly mid-wait. (The server closes each connection: a silent one would hold the
    probe in libpq's C connect, deaf to signals for its connect_timeout, up to ~13 s.)"""
    with _listener(answer=True) as (port, connected):
        victim = spawn_toolkit("up", "--engine", "external", "--timeout", "600", "--no-export",
                               "--url", f"postgresql://memgpt:memgpt@127.0.0.1:{port}/memgpt", cwd=project)
        try:
            wait_until(lambda: connected.is_set() or victim.poll() is not None, 60, "`toolkit up` to connect")
            assert victim.poll() is None, victim.communicate()
            victim.send_signal(sig)
            out, err = victim.communicate(timeout=60)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.communicate()
    return Outcome(victim.returncode, out, err)


def interrupted(project: Path) -> Outcome:
    return _signalled_up(project, signal.SIGINT)


def terminated(project: Path) -> Outcome:
    return _signalled_up(project, signal.SIGTERM)


# (code, case, what its last stderr line says)
CASES: list[tuple[int, Callable[[Path], Outcome], str]] = [
    (1, declined_confirmation, "nothing was changed"),
    (1, purge_without_a_terminal, "toolkit: error: refusing to delete all data"),
    (2, bad_flag, "toolkit: error: invalid value for '--port': 'abc' is not a valid port; see `toolkit up --help`"),
    (2, bad_setting, "toolkit: error: invalid value 'eighty' for TOOLKIT_PG_PORT (environment): not a port number"),
    (2, unreadable_env_file, "is a directory, not a .env file"),
    (3, port_taken, "is already in use by pid"),
    (4, docker_daemon_dead, "toolkit: error: "),
    (5, server_never_ready, "not ready after 1s"),
    (6, backend_check_fails, "toolkit: error: 1 of 1 checks did not pass (lancedb: fail)"),
    (6, no_backend_could_be_checked, "`toolkit up`"),
    (7, migrate_to_unreachable, "toolkit: error: cannot migrate into postgresql"),
    (7, migrate_onto_itself, "same store"),
    (70, internal_error, "toolkit: internal error: a bug (traceback in "),
    (130, interrupted, "toolkit: interrupted"),
    (143, terminated, "toolkit: terminated"),
    (143, terminated_at_a_prompt, "toolkit: terminated"),
    (130, interrupted_while_importing, "toolkit: interrupted"),
    (130, interrupted_in_exec_under_python_m, "toolkit: interrupted"),
    (143, terminated_while_importing, "toolkit: terminated"),
]


def _documented_codes() -> set[int]:
    text = (REPO / "README.md").read_text()
    table = text.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    # 0 (success; a status command that could tell) is the rest of the suite's business, tests/test_shared_machine.py
    return {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)} - {0}


def test_every_documented_code_has_a_case() -> None:
    assert _documented_codes() == {code for code, _, _ in CASES}


@pytest.mark.parametrize("code,case,says", CASES, ids=lambda v: v.__name__ if callable(v) else str(v))
def test_exit_code(isolated: Path, code: int, case: Callable[[Path], Outcome], says: str) -> None:
    done = case(isolated)
    assert done.code == code, f"{case.__name__}: exit {done.code}, not {code}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert says in last, last
    if code == 1 and case is declined_confirmation:  # a "no" is a decision, not an error
        assert "error" not in done.stderr, done.stderr
    elif code not in (130, 143):
        assert last.startswith(("toolkit: error: ", "toolkit: internal error: ")), last
