"""The helper servers' lifecycle against real processes (`chroma run`, moto): `up` never stops a server it
did not start in that call, concurrent `up` start one server, a pid file names our server only when the
process is ours (its marker, its cwd in this state dir, its data path), status follows the server to
where it runs, and `s3 up` keeps the AWS keys a .env already has."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import alive, processes, run_toolkit, spawn_toolkit, wait_until
from toolkit.ports import free_port
from toolkit.services.registry import SERVICES

CURRENT = ("--format", "current")  # chromadb 1.x from this venv: no older client's env to build
# what names each service's server process in its command line
MARKERS = {"chroma": "chromadb.cli.cli", "s3": "moto.server"}


def _chroma_servers(state_dir: Path) -> list[int]:
    return list(processes(MARKERS["chroma"], under=state_dir))


@pytest.fixture(autouse=True)
def _no_server_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test leaves running under tmp_path is killed (the code under test may not)."""
    yield
    for marker in MARKERS.values():
        for pid in processes(marker, under=tmp_path):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _up_json(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    done = run_toolkit("chroma", "up", *CURRENT, "--json", *args, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_up_on_another_port_or_path_refuses_and_keeps_the_running_server(isolated: Path) -> None:
    port, other = int(os.environ["TOOLKIT_CHROMA_PORT"]), free_port()
    try:
        pid = _up_json()["pid"]
        moved = run_toolkit("chroma", "up", *CURRENT, "--port", str(other), "--timeout", "5")
        assert alive(pid), "up on another port stopped the running server"
        assert moved.returncode == 2, moved.stdout + moved.stderr
        assert f"already runs at http://127.0.0.1:{port}" in moved.stderr and "toolkit chroma down" in moved.stderr
        assert len(moved.stderr.strip().splitlines()) == 1 and "Traceback" not in moved.stderr

        record = json.loads((isolated / ".toolkit" / "chroma.pid").read_text())
        assert record["pid"] == pid and record["port"] == port and record["host"] == "127.0.0.1"
        assert record["path"] == str(isolated / ".toolkit" / "chroma-server") and record["format"] == "1"
        assert (isolated / ".toolkit" / "chroma.pid").stat().st_mode & 0o777 == 0o600

        elsewhere = run_toolkit("chroma", "up", *CURRENT, "--path", str(isolated / "elsewhere"), "--timeout", "5")
        assert elsewhere.returncode == 2 and "with data in" in elsewhere.stderr, elsewhere.stderr
        assert alive(pid) and not (isolated / "elsewhere").exists()

        again = _up_json()  # still idempotent where it runs
        assert again["pid"] == pid and again["running"]
    finally:
        run_toolkit("chroma", "down")
    assert not _chroma_servers(isolated / ".toolkit")


def _drain(fifo: Path) -> None:
    """Read a FIFO to its end: opening its read end releases every writer waiting to open it, and the end
    comes when the last writer closes it (the server, which logs into it, when `down` stops it)."""
    with open(fifo, "rb") as log:
        while log.read(65536):
            pass


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
    reader = threading.Thread(target=_drain, args=(state / "chroma.log",), daemon=True)
    runs = [spawn_toolkit("chroma", "up", *CURRENT, "--json") for _ in range(5)]
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
        outputs = [run.communicate(timeout=300) for run in runs]
        results = [(run.returncode, out, err) for run, (out, err) in zip(runs, outputs, strict=True)]
        assert [code for code, _, _ in results] == [0] * 5, [err for _, _, err in results]
        servers = _chroma_servers(state)
        assert len(servers) == 1, servers
        assert {json.loads(out)["pid"] for _, out, _ in results} == set(servers)
    finally:
        down = run_toolkit("chroma", "down")
    assert "chroma: stopped" in down.stdout, down.stdout + down.stderr
    assert not _chroma_servers(state)


def test_a_pid_file_from_another_checkout_is_not_ours(isolated: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-checkout"
    other.mkdir()
    port = free_port()
    try:
        theirs = _up_json("--port", str(port), cwd=other)["pid"]
        (isolated / ".toolkit").mkdir(mode=0o700)
        ours = isolated / ".toolkit" / "chroma.pid"
        shutil.copy(other / ".toolkit" / "chroma.pid", ours)

        status = run_toolkit("chroma", "status", "--json")
        assert json.loads(status.stdout)["pid"] is None
        down = run_toolkit("chroma", "down")
        assert down.returncode == 0 and "was not running" in down.stdout, down.stdout + down.stderr
        assert alive(theirs)

        ours.unlink(missing_ok=True)
        ours.symlink_to(other / ".toolkit" / "chroma.pid")  # through a link: neither followed nor its target removed
        assert "was not running" in run_toolkit("chroma", "down").stdout
        assert alive(theirs) and (other / ".toolkit" / "chroma.pid").is_file()

        # the same server, its pid file naming another data path: not the server that file describes
        record = json.loads((other / ".toolkit" / "chroma.pid").read_text())
        assert not ours.is_symlink()  # the stale link itself was removed
        ours.unlink(missing_ok=True)
        ours.write_text(json.dumps({**record, "path": str(isolated / "some-data")}))
        assert "was not running" in run_toolkit("chroma", "down").stdout and alive(theirs)
    finally:
        run_toolkit("chroma", "down", cwd=other)
    assert not alive(theirs)


# what `up` takes here besides --port and --json, and what `status` adds after the pid, for each service
UP_ARGS = {"chroma": CURRENT, "s3": ("--no-export",)}
STATUS_TAIL = {"chroma": "; format 1 (chromadb 1.x (current))", "s3": ""}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_status_down_and_logs_follow_the_server_to_its_port(isolated: Path, name: str) -> None:
    """Started on a port of its own: status (with --port, without it, and on another port), logs and down
    all find it there, for every service alike."""
    port, other = free_port(), free_port()
    up = run_toolkit(name, "up", *UP_ARGS[name], "--port", str(port), "--json")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        started = json.loads(up.stdout)
        pid = started["pid"]
        if name == "s3":  # --no-export
            assert started["env_changed"] is False and not (isolated / ".env").exists()

        for asked in (["--port", str(port)], []):  # without --port it follows the server to its port
            here = run_toolkit(name, "status", *asked)
            assert here.returncode == 0, here.stdout + here.stderr
            assert here.stdout.strip() == f"{name}: running at http://127.0.0.1:{port} (pid {pid}){STATUS_TAIL[name]}"
        found = json.loads(run_toolkit(name, "status", "--json").stdout)
        assert found["running"] and found["pid"] == pid and found["url"] == f"http://127.0.0.1:{port}"

        elsewhere = run_toolkit(name, "status", "--port", str(other))
        assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr  # not running there, and it could tell
        assert f"nothing answers at http://127.0.0.1:{other}" in elsewhere.stdout
        assert f"the toolkit's {name} server runs at http://127.0.0.1:{port} (pid {pid})" in elsewhere.stdout
        state = json.loads(run_toolkit(name, "status", "--port", str(other), "--json").stdout)
        assert state["running"] is False and state["url"] == f"http://127.0.0.1:{other}"
        assert run_toolkit(name, "logs").stdout.strip()
    finally:
        down = run_toolkit(name, "down")
    assert down.stdout.strip() == f"{name}: stopped (was at http://127.0.0.1:{port})", down.stdout + down.stderr
    stopped = run_toolkit(name, "status", "--port", str(port))
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"{name}: stopped"), stopped.stdout
    assert not alive(pid) and not processes(MARKERS[name], under=isolated / ".toolkit")
    assert (isolated / ".toolkit" / f"{name}.log").is_file()


def test_a_failed_up_stops_only_what_it_started(isolated: Path) -> None:
    failed = run_toolkit("chroma", "up", *CURRENT, "--timeout", "0.2")  # chromadb needs seconds to start
    assert failed.returncode == 5, failed.stdout + failed.stderr
    assert not _chroma_servers(isolated / ".toolkit") and not (isolated / ".toolkit" / "chroma.pid").exists()

    pid = _up_json()["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)  # ours, but not answering: a later up times out on it
        try:
            stuck = run_toolkit("chroma", "up", *CURRENT, "--timeout", "2")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert alive(pid), "a failed up stopped a server it did not start"
        assert stuck.returncode == 5 and "left running" in stuck.stderr, stuck.stdout + stuck.stderr
        assert run_toolkit("chroma", "status").returncode == 0

        # an older toolkit's plain-integer pid file still names it
        (isolated / ".toolkit" / "chroma.pid").write_text(f"{pid}\n")
        assert _up_json()["pid"] == pid
    finally:
        down = run_toolkit("chroma", "down")
    assert "chroma: stopped" in down.stdout and not alive(pid)


def test_s3_up_keeps_the_keys_in_env(isolated: Path) -> None:
    env = isolated / ".env"
    env.write_text("# mine\nAWS_ACCESS_KEY_ID=AKIAUSERSOWNKEY\nAWS_SECRET_ACCESS_KEY='users-own-secret'\nOTHER=1\n")
    port = free_port()
    try:
        up = run_toolkit("s3", "up", "--port", str(port))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "kept AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in up.stdout
        text = env.read_text()
        assert "AWS_ACCESS_KEY_ID=AKIAUSERSOWNKEY" in text and "users-own-secret" in text and "testing" not in text
        assert f"TOOLKIT_S3_ENDPOINT='http://127.0.0.1:{port}'" in text and "# mine" in text and "OTHER=1" in text
        smoked = run_toolkit("smoke", "--backend", "lancedb-s3", "-n", "5", "--dim", "8")  # moto takes any keys
        assert smoked.returncode == 0, smoked.stdout + smoked.stderr

        moved = run_toolkit("s3", "up", "--port", str(free_port()), "--timeout", "5")
        assert moved.returncode == 2 and f"already runs at http://127.0.0.1:{port}" in moved.stderr, moved.stderr
        assert run_toolkit("s3", "status").returncode == 0
    finally:
        assert "s3: stopped" in run_toolkit("s3", "down").stdout

    fresh = isolated / "fresh"
    fresh.mkdir()
    up = run_toolkit("s3", "up", "--port", str(free_port()), cwd=fresh)
    try:
        assert up.returncode == 0 and "kept" not in up.stdout, up.stdout + up.stderr
        assert "AWS_ACCESS_KEY_ID='testing'" in (fresh / ".env").read_text()
    finally:
        run_toolkit("s3", "down", cwd=fresh)
