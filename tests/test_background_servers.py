"""The helper servers' lifecycle against real processes (`chroma run`, moto): `up` never stops a server it
did not start in that call, concurrent `up` start one server, a pid file names our server only when the
process is ours (its marker, its cwd in this state dir, its data path), status follows the server to
where it runs, and `s3 up` keeps the AWS keys a .env already has."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_support import free_port
from tests.support import wait_until

CURRENT = ("--format", "current")  # chromadb 1.x from this venv: no older client's env to build
MARKERS = ("chromadb.cli.cli", "moto.server")


def _processes(marker: str, under: Path) -> list[int]:
    """Pids of live processes with ``marker`` in their command line whose cwd is ``under`` or below it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = Path(os.readlink(entry / "cwd"))
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z" and (cwd == under or under in cwd.parents):
            found.append(int(entry.name))
    return found


def _chroma_servers(state_dir: Path) -> list[int]:
    return _processes("chromadb.cli.cli", state_dir.resolve())


@pytest.fixture(autouse=True)
def _no_server_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test leaves running under tmp_path is killed (the code under test may not)."""
    yield
    for marker in MARKERS:
        for pid in _processes(marker, tmp_path.resolve()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _up_json(toolkit_cli, *args: str, cwd: Path | None = None) -> dict:  # type: ignore[no-untyped-def]
    done = toolkit_cli("chroma", "up", *CURRENT, "--json", *args, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_up_on_another_port_or_path_refuses_and_keeps_the_running_server(toolkit_cli, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    port, other = int(os.environ["TOOLKIT_CHROMA_PORT"]), free_port()
    try:
        pid = _up_json(toolkit_cli)["pid"]
        moved = toolkit_cli("chroma", "up", *CURRENT, "--port", str(other), "--timeout", "5")
        assert _alive(pid), "up on another port stopped the running server"
        assert moved.returncode == 2, moved.stdout + moved.stderr
        assert f"already runs at http://127.0.0.1:{port}" in moved.stderr and "toolkit chroma down" in moved.stderr
        assert len(moved.stderr.strip().splitlines()) == 1 and "Traceback" not in moved.stderr

        record = json.loads((isolated / ".toolkit" / "chroma.pid").read_text())
        assert record["pid"] == pid and record["port"] == port and record["host"] == "127.0.0.1"
        assert record["path"] == str(isolated / ".toolkit" / "chroma-server") and record["format"] == "1"
        assert (isolated / ".toolkit" / "chroma.pid").stat().st_mode & 0o777 == 0o600

        elsewhere = toolkit_cli("chroma", "up", *CURRENT, "--path", str(isolated / "elsewhere"), "--timeout", "5")
        assert elsewhere.returncode == 2 and "with data in" in elsewhere.stderr, elsewhere.stderr
        assert _alive(pid) and not (isolated / "elsewhere").exists()

        again = _up_json(toolkit_cli)  # still idempotent where it runs
        assert again["pid"] == pid and again["running"]
    finally:
        toolkit_cli("chroma", "down")
    assert not _chroma_servers(isolated / ".toolkit")


def _drain(fifo: Path, stop: threading.Event) -> None:
    """Read a FIFO until ``stop``: opening its read end releases every writer waiting to open it."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while not stop.is_set():
            try:
                if os.read(fd, 65536):
                    continue
            except BlockingIOError:
                pass
            time.sleep(0.02)
    finally:
        os.close(fd)


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_concurrent_up_start_one_server(isolated: Path) -> None:
    """Five `chroma up` at once. The log is a FIFO here: `up` opens it right before it spawns, so every
    `up` that got past its checks waits on it, and all of them go on together once it is opened (the
    race, which otherwise needs luck to hit, happens every time unless a lock lets one through at a time)."""
    state = isolated / ".toolkit"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "chroma.log", 0o600)
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(state / "chroma.log", stop), daemon=True)
    argv = [sys.executable, "-m", "toolkit", "chroma", "up", *CURRENT, "--json"]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    try:
        # until all five wait to open the log, or one does and the others had 3 s to get there too
        first_waiting: list[float] = []

        def all_or_enough_waiting() -> bool:
            assert any(run.poll() is None for run in runs), [run.communicate() for run in runs]
            waiting = sum(_wchan(run.pid) == "wait_for_partner" for run in runs)
            if waiting and not first_waiting:
                first_waiting.append(time.monotonic())
            return waiting == len(runs) or bool(first_waiting) and time.monotonic() - first_waiting[0] >= 3

        wait_until(all_or_enough_waiting, 60, "the `chroma up` runs to block on opening the log")
        reader.start()
        results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
        assert [code for code, _, _ in results] == [0] * 5, [err for _, _, err in results]
        servers = _chroma_servers(state)
        assert len(servers) == 1, servers
        assert {json.loads(out)["pid"] for _, out, _ in results} == set(servers)
    finally:
        down = subprocess.run([sys.executable, "-m", "toolkit", "chroma", "down"], capture_output=True, text=True)
        stop.set()
    assert "chroma: stopped" in down.stdout, down.stdout + down.stderr
    assert not _chroma_servers(state)


def test_a_pid_file_from_another_checkout_is_not_ours(toolkit_cli, isolated: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-checkout"
    other.mkdir()
    port = free_port()
    try:
        theirs = _up_json(toolkit_cli, "--port", str(port), cwd=other)["pid"]
        (isolated / ".toolkit").mkdir(mode=0o700)
        ours = isolated / ".toolkit" / "chroma.pid"
        shutil.copy(other / ".toolkit" / "chroma.pid", ours)

        status = toolkit_cli("chroma", "status", "--json")
        assert json.loads(status.stdout)["pid"] is None
        down = toolkit_cli("chroma", "down")
        assert down.returncode == 0 and "was not running" in down.stdout, down.stdout + down.stderr
        assert _alive(theirs)

        ours.unlink(missing_ok=True)
        ours.symlink_to(other / ".toolkit" / "chroma.pid")  # through a link: neither followed nor its target removed
        assert "was not running" in toolkit_cli("chroma", "down").stdout
        assert _alive(theirs) and (other / ".toolkit" / "chroma.pid").is_file()

        # the same server, its pid file naming another data path: not the server that file describes
        record = json.loads((other / ".toolkit" / "chroma.pid").read_text())
        assert not ours.is_symlink()  # the stale link itself was removed
        ours.unlink(missing_ok=True)
        ours.write_text(json.dumps({**record, "path": str(isolated / "some-data")}))
        assert "was not running" in toolkit_cli("chroma", "down").stdout and _alive(theirs)
    finally:
        toolkit_cli("chroma", "down", cwd=other)
    assert not _alive(theirs)


def test_status_down_and_logs_follow_the_server_to_its_port(toolkit_cli, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    default, port = int(os.environ["TOOLKIT_CHROMA_PORT"]), free_port()
    try:
        pid = _up_json(toolkit_cli, "--port", str(port))["pid"]
        status = toolkit_cli("chroma", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"running at http://127.0.0.1:{port} (pid {pid})" in status.stdout and "format 1" in status.stdout
        assert json.loads(toolkit_cli("chroma", "status", "--json").stdout)["url"] == f"http://127.0.0.1:{port}"

        asked = toolkit_cli("chroma", "status", "--port", str(default))
        assert asked.returncode == 1, asked.stdout
        assert f"nothing answers at http://127.0.0.1:{default}" in asked.stdout
        assert f"runs at http://127.0.0.1:{port} (pid {pid})" in asked.stdout
        assert toolkit_cli("chroma", "logs").stdout.strip()
    finally:
        down = toolkit_cli("chroma", "down")
    assert f"chroma: stopped (was at http://127.0.0.1:{port})" in down.stdout, down.stdout + down.stderr
    assert not _alive(pid) and not _chroma_servers(isolated / ".toolkit")


def test_a_failed_up_stops_only_what_it_started(toolkit_cli, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    failed = toolkit_cli("chroma", "up", *CURRENT, "--timeout", "0.2")  # chromadb needs seconds to start
    assert failed.returncode == 5, failed.stdout + failed.stderr
    assert not _chroma_servers(isolated / ".toolkit") and not (isolated / ".toolkit" / "chroma.pid").exists()

    pid = _up_json(toolkit_cli)["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)  # ours, but not answering: a later up times out on it
        try:
            stuck = toolkit_cli("chroma", "up", *CURRENT, "--timeout", "2")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert _alive(pid), "a failed up stopped a server it did not start"
        assert stuck.returncode == 5 and "left running" in stuck.stderr, stuck.stdout + stuck.stderr
        assert toolkit_cli("chroma", "status").returncode == 0

        # an older toolkit's plain-integer pid file still names it
        (isolated / ".toolkit" / "chroma.pid").write_text(f"{pid}\n")
        assert _up_json(toolkit_cli)["pid"] == pid
    finally:
        down = toolkit_cli("chroma", "down")
    assert "chroma: stopped" in down.stdout and not _alive(pid)


def test_s3_up_keeps_the_keys_in_env(toolkit_cli, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    env = isolated / ".env"
    env.write_text("# mine\nAWS_ACCESS_KEY_ID=AKIAUSERSOWNKEY\nAWS_SECRET_ACCESS_KEY='users-own-secret'\nOTHER=1\n")
    port = free_port()
    try:
        up = toolkit_cli("s3", "up", "--port", str(port))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "kept AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in up.stdout
        text = env.read_text()
        assert "AWS_ACCESS_KEY_ID=AKIAUSERSOWNKEY" in text and "users-own-secret" in text and "testing" not in text
        assert f"TOOLKIT_S3_ENDPOINT='http://127.0.0.1:{port}'" in text and "# mine" in text and "OTHER=1" in text
        smoked = toolkit_cli("smoke", "--backend", "lancedb-s3", "-n", "5", "--dim", "8")  # moto takes any keys
        assert smoked.returncode == 0, smoked.stdout + smoked.stderr

        moved = toolkit_cli("s3", "up", "--port", str(free_port()), "--timeout", "5")
        assert moved.returncode == 2 and f"already runs at http://127.0.0.1:{port}" in moved.stderr, moved.stderr
        assert toolkit_cli("s3", "status").returncode == 0
    finally:
        assert "s3: stopped" in toolkit_cli("s3", "down").stdout

    fresh = isolated / "fresh"
    fresh.mkdir()
    up = toolkit_cli("s3", "up", "--port", str(free_port()), cwd=fresh)
    try:
        assert up.returncode == 0 and "kept" not in up.stdout, up.stdout + up.stderr
        assert "AWS_ACCESS_KEY_ID='testing'" in (fresh / ".env").read_text()
    finally:
        toolkit_cli("s3", "down", cwd=fresh)
