"""The CLI against a clumsy user and a hostile shell: values a float parser takes but no one means, an
output that cannot be written, questions asked with no one (no terminal) to answer them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import run_toolkit


@pytest.mark.parametrize("args", [
    ["up", "--timeout", "nan"],
    ["up", "--timeout", "NaN"],
    ["chroma", "up", "--timeout", "nan"],
    ["smoke", "--timeout", "nan"],
])
def test_a_timeout_that_is_not_a_number_is_refused(args: list[str]) -> None:
    """float("nan") parses, and NaN > 0 and NaN < 0 are both false: a range check lets it through, and a
    wait until "now >= deadline" never ends. TOOLKIT_TIMEOUT=nan is refused; the flag must be too."""
    done = run_toolkit(*args, "--engine", "external", "--url", "postgresql://a:b@127.0.0.1:1/db") if args[0] == "up" \
        else run_toolkit(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toolkit: error: ") and "--timeout" in lines[0], done.stderr
    assert "not a number of seconds" in lines[0], lines[0]


@pytest.mark.parametrize("args", [["--help"], ["env"], ["status", "--json"], ["up", "-h"], ["--version"]])
def test_an_output_that_cannot_be_written_is_a_plain_error_not_a_bug(args: list[str], tmp_path: Path) -> None:
    """stdout on a full disk (/dev/full) fails every write with ENOSPC: that is this machine's state, not a
    bug in the toolkit. One line saying so, exit 1; no "internal error", no crash log to report."""
    crash_dir = tmp_path / "tmp"
    crash_dir.mkdir()
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "toolkit", *args], stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, "TMPDIR": str(crash_dir)}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "toolkit: error: cannot write the output: No space left on device", done.stderr
    assert list(crash_dir.iterdir()) == []  # no crash log


def test_configure_with_its_input_ending_says_so_and_changes_nothing(isolated: Path) -> None:
    """`toolkit configure` in CI (stdin /dev/null, or answers piped that run out) without --no-input: the
    input ends at a question. Nobody interrupted anything (not 130): say which question went unanswered
    and how to run without questions, exit 1, and write no config."""
    config = isolated / "memgpt-config"
    for stdin in ("", "postgres\n"):
        done = run_toolkit("configure", "--no-check", input=stdin, env={"MEMGPT_CONFIG_PATH": str(config)})
        assert done.returncode == 1, done.stdout + done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("toolkit: error: the input ended before an answer to "), last
        assert "--no-input" in last and "interrupted" not in done.stderr, last
        assert not config.exists()


@pytest.mark.usefixtures("embedded_down_after")
def test_up_no_export_does_not_call_another_url_in_env_current(isolated: Path) -> None:
    """`up --no-export` writes nothing; when .env holds some other URL, the closing line must not say that
    URL "is current" (a user would then eval a stale one)."""
    env_file = isolated / ".env"
    env_file.write_text("PGVECTOR_TEST_DB_URL='postgresql+pg8000://memgpt:memgpt@localhost:1/elsewhere'\n")
    done = run_toolkit("up", "--engine", "embedded", "--no-export")
    assert done.returncode == 0, done.stderr
    assert "is current" not in done.stdout, done.stdout
    assert "not written to .env (--no-export)" in done.stdout, done.stdout
    assert "localhost:1/elsewhere" in env_file.read_text()


def test_ctrl_c_during_smoke_stops_it_and_drops_its_table(isolated: Path) -> None:
    """Ctrl-C while a check runs: the check is told to stop, drops its table, and the command exits 130.
    The checks run in threads: a main thread that raised at once left its check's table behind, and an
    exit with a thread inside NumPy's BLAS could hang for good in OpenBLAS's exit handler."""
    import signal

    from tests.support import spawn_toolkit, wait_until

    archival = Path.home() / ".memgpt" / "archival"
    victim = spawn_toolkit("smoke", "--backend", "local", "-n", "60000", "--dim", "1536", "--timeout", "3600")
    try:
        wait_until(lambda: list(archival.glob("toolkit_smoke_*")) or victim.poll() is not None, 600,
                   "the check's table", interval=0.01)
        assert victim.poll() is None, victim.communicate()
        victim.send_signal(signal.SIGINT)
        out, err = victim.communicate(timeout=600)
    finally:
        victim.kill()
    assert victim.returncode == 130, out + err
    assert err.strip().splitlines()[-1] == "toolkit: interrupted", err
    assert list(archival.glob("toolkit_smoke_*")) == []  # dropped on the way out


def test_a_question_is_asked_on_stderr_so_a_redirected_stdout_does_not_hide_it(isolated: Path, tmp_path: Path) -> None:
    """`toolkit down --purge > log` at a terminal: the question must reach the user (stderr, as the
    progress and errors do), not the file, or the command just seems to hang."""
    import os
    import pty

    from tests.support import spawn_toolkit

    (isolated / ".toolkit" / "embedded" / "pgdata").mkdir(parents=True)  # data to ask about
    (isolated / ".toolkit" / "embedded" / "pgdata" / "PG_VERSION").write_text("18\n")
    primary, secondary = pty.openpty()
    try:
        victim = spawn_toolkit("down", "--purge", "--engine", "embedded", cwd=isolated, stdin=secondary)
        os.close(secondary)
        os.write(primary, b"n\n")
        out, err = victim.communicate(timeout=120)
    finally:
        os.close(primary)
    assert victim.returncode == 1, out + err
    assert "[y/N]" in err and "[y/N]" not in out, (out, err)
    assert "nothing was changed" in err
