"""The pytest plugin's ``archival_store`` fixture, as a user meets it: a test file of their own in a project of
its own, run by a real pytest in a subprocess (the plugin loads from its entry point), over real backends: an
embedded Postgres, a real Chroma server (``chroma run``), real moto S3, local, LanceDB and Chroma directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, processes

pytestmark = pytest.mark.slow

# one line per test: which backend and table it had, where, in which process; and what it saw
USER_TESTS = '''
import json, os

import pytest

from toolkit.backends import open_store

RECORD = os.environ["ARCHIVAL_RECORD"]
DONE = {{}}  # backend -> the location of a test that finished (its table is dropped by now)


def record(store, **more):
    with open(RECORD, "a") as f:
        f.write(json.dumps({{"backend": store.backend, "table": store.table, "uri": store.uri,
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), **more}}) + "\\n")


{marker}
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_insert_and_search(archival_store, archival_backend, seed):
    assert archival_store.backend == archival_backend
    assert archival_store.count() == 0  # an empty table of its own, whatever the tests before it wrote
    passages = archival_store.passages(20, dim=8, seed=seed)
    assert archival_store.insert(passages) == 20
    assert archival_store.count() == 20
    hits = archival_store.query(passages[3].embedding, k=5)
    assert hits[0].id == passages[3].id
    assert {{hit.id for hit in hits}} <= {{p.id for p in passages}}
    DONE[archival_backend] = archival_store.location
    record(archival_store)


{marker}
def test_table_of_an_earlier_test_is_dropped(archival_store, archival_backend):
    earlier = DONE.get(archival_backend)
    if earlier is not None and archival_backend != "postgres":  # postgres: the whole database goes
        with open_store(earlier) as store:
            assert not store.exists(), f"{{earlier.table}} outlived its test"
        record(archival_store, checked=earlier.table)
'''


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A real pytest in ``project``, importing this checkout's toolkit, with a basetemp of its own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's xdist worker
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", "-rs",
                           "--basetemp", str(project.parent / "basetemp"), *args],
                          cwd=project, capture_output=True, text=True, timeout=900,
                          env={**clean, "PYTHONPATH": str(REPO), "ARCHIVAL_RECORD": str(project / "record.jsonl"),
                               **(env or {})})


def write_tests(project: Path, marker: str = "") -> None:
    (project / "test_archival.py").write_text(USER_TESTS.format(marker=marker))


def records(project: Path) -> list[dict[str, str]]:
    path = project / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def left_running(root: Path) -> dict[int, str]:
    """Processes whose working directory is under ``root``: servers a run started and did not stop."""
    return {pid: cmd for pid, cmd in processes("", under=root).items() if pid != os.getpid()}  # not this test


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


ALL = ("local", "postgres", "lancedb", "chroma", "chroma-http", "lancedb-s3")


def test_every_backend_by_marker_each_test_in_its_own_table_and_servers_stopped(isolated: Path) -> None:
    write_tests(isolated, marker=f"@pytest.mark.archival_backends{ALL!r}")

    result = run_pytest(isolated, "-v", env={"TOOLKIT_ENGINE": "embedded"})

    assert result.returncode == 0, outcome(result)
    assert f"{3 * len(ALL) + len(ALL)} passed" in result.stdout, outcome(result)
    for backend in ALL:  # ids are the backend names
        assert f"test_insert_and_search[{backend}-1] PASSED" in result.stdout, outcome(result)
    seen = records(isolated)
    searched = [r for r in seen if "checked" not in r]
    assert sorted(r["backend"] for r in searched) == sorted(ALL * 3)
    assert len({r["table"] for r in searched}) == len(searched)  # every test a table of its own
    assert {r["backend"] for r in seen if "checked" in r} == set(ALL) - {"postgres"}
    chroma_servers = {r["uri"] for r in searched if r["backend"] == "chroma-http"}
    s3_prefixes = {r["uri"] for r in searched if r["backend"] == "lancedb-s3"}
    assert len(chroma_servers) == 1 and len(s3_prefixes) == 3  # one server for the run; a prefix per test
    assert "toolkit: stopped the test run's chroma and s3 servers" in result.stdout
    # the Chroma and moto servers, and the embedded Postgres the run started: all stopped
    assert left_running(isolated.parent) == {}


def test_toolkit_backends_option_over_two_xdist_workers_shares_one_server_per_run(isolated: Path) -> None:
    write_tests(isolated)  # no marker: the option chooses
    (isolated / "test_marked.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.archival_backends('local', 'postgres')\n"
        "def test_marked(archival_store):\n"
        "    assert archival_store.backend == 'local'  # postgres is not selected: deselected, never run\n")

    result = run_pytest(isolated, "-n", "2", "--toolkit-backends", "local,chroma-http,lancedb-s3")

    assert result.returncode == 0, outcome(result)
    assert "2 workers [13 items]" in result.stdout and "13 passed" in result.stdout, outcome(result)  # postgres: not run
    searched = [r for r in records(isolated) if "checked" not in r]
    assert sorted(r["backend"] for r in searched) == sorted(("local", "chroma-http", "lancedb-s3") * 3)
    assert len({r["table"] for r in searched}) == len(searched)
    assert len({r["table"].rsplit("_", 2)[0] for r in searched}) == 1  # one run id, shared by the workers
    chroma = [r for r in searched if r["backend"] == "chroma-http"]
    assert len({r["uri"] for r in chroma}) == 1, chroma  # whichever workers ran them: one server
    assert {r["worker"] for r in searched} == {"gw0", "gw1"}
    assert left_running(isolated.parent) == {}


def test_default_is_local_and_ini_option_selects(isolated: Path) -> None:
    write_tests(isolated)

    result = run_pytest(isolated, "-v")

    assert result.returncode == 0, outcome(result)
    assert "test_insert_and_search[local-1] PASSED" in result.stdout, outcome(result)
    assert {r["backend"] for r in records(isolated)} == {"local"}

    (isolated / "record.jsonl").unlink()
    (isolated / "pytest.ini").write_text("[pytest]\ntoolkit_backends = lancedb, chroma\n")
    result = run_pytest(isolated, "-v")

    assert result.returncode == 0, outcome(result)
    assert {r["backend"] for r in records(isolated)} == {"lancedb", "chroma"}


def test_unknown_backend_is_a_usage_error_listing_the_known_ones(isolated: Path) -> None:
    write_tests(isolated)

    result = run_pytest(isolated, "--toolkit-backends", "local,lancdb")

    assert result.returncode == 4, outcome(result)  # pytest's usage error
    assert result.stderr.strip().splitlines() == [
        "ERROR: toolkit: --toolkit-backends names unknown archival backend 'lancdb'; "
        "choose from local, postgres, chroma, chroma-http, lancedb, lancedb-s3, parquet (or all)"]

    write_tests(isolated, marker="@pytest.mark.archival_backends('local', 'postgress')")
    result = run_pytest(isolated)

    assert result.returncode == 2, outcome(result)  # a collection error, in one line
    assert ("toolkit: @pytest.mark.archival_backends('local', 'postgress') names unknown archival backend "
            "'postgress'; choose from local, postgres") in result.stdout, outcome(result)
    assert records(isolated) == []


def test_backend_without_its_extra_is_skipped_naming_the_pip_command(isolated: Path) -> None:
    write_tests(isolated)
    # as if neither toolkit[chroma] nor toolkit[s3] were installed: find_spec finds nothing
    (isolated / "conftest.py").write_text("import sys\nsys.modules['chromadb'] = None\nsys.modules['moto'] = None\n")

    result = run_pytest(isolated, "--toolkit-backends", "chroma,chroma-http,lancedb-s3,local")

    assert result.returncode == 0, outcome(result)
    assert "4 passed, 12 skipped" in result.stdout, outcome(result)
    assert "toolkit: the chroma backend needs the chromadb package, which is not installed; " \
           "pip install 'toolkit[chroma]'" in result.stdout
    assert "the lancedb-s3 backend's test server (s3) needs the moto package" in result.stdout
    assert "pip install 'toolkit[s3]'" in result.stdout
    assert left_running(isolated.parent) == {}


def test_plugin_off_means_no_fixture(isolated: Path) -> None:
    write_tests(isolated)

    result = run_pytest(isolated, "-p", "no:toolkit")

    assert result.returncode == 1, outcome(result)
    assert "fixture 'archival_store' not found" in result.stdout, outcome(result)


def test_ctrl_c_mid_test_still_stops_the_servers_and_drops_nothing_it_should_not(isolated: Path) -> None:
    import signal

    from tests.support import wait_until

    (isolated / "test_slow.py").write_text(
        "import os, time, pytest\n\n"
        "@pytest.mark.archival_backends('chroma-http', 'lancedb-s3')\n"
        "def test_slow(archival_store):\n"
        "    archival_store.insert(archival_store.passages(3))\n"
        "    if archival_store.backend == 'lancedb-s3':\n"
        "        open(os.environ['ARCHIVAL_RECORD'], 'w').write('ready')\n"
        "        time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp",
                                str(isolated.parent / "basetemp")], cwd=isolated, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
                                    "PYTHONPATH": str(REPO), "ARCHIVAL_RECORD": str(isolated / "ready")})
    try:
        wait_until(lambda: (isolated / "ready").exists() or process.poll() is not None, 300, "the slow test")
        assert process.poll() is None, process.communicate()[0]
        assert len(left_running(isolated.parent)) >= 2  # the Chroma and moto servers, up while the test runs
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "KeyboardInterrupt" in output, output
    assert left_running(isolated.parent) == {}


def test_a_helper_server_is_stopped_by_the_last_process_using_it(tmp_path: Path) -> None:
    """Two processes of one run (two ``Stores`` on one run directory, as two xdist workers): the first to
    leave keeps the server up for the other, which stops it; then a new process starts it again."""
    from toolkit.testing.stores import Stores

    first, second = Stores("0123456789ab", "gw0", tmp_path), Stores("0123456789ab", "gw1", tmp_path)
    server = first.service("chroma")
    assert second.service("chroma").server.url == server.server.url  # the one the first started, wherever it listens
    assert server.server.healthy()

    assert first.close() == []
    assert server.server.healthy()  # the second still holds it
    table = second.take("chroma-http")
    assert table.count() == 0
    second.give_back(table)
    assert second.close() == ["chroma"]
    assert not server.server.healthy()
    assert left_running(tmp_path) == {}

    third = Stores("0123456789ab", "gw2", tmp_path)
    try:
        assert third.service("chroma").server.healthy()
    finally:
        assert third.close() == ["chroma"]
    assert left_running(tmp_path) == {}
