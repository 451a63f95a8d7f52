"""`toolkit backup` / `toolkit restore` against real servers: the restore drill (backup, purge, up, restore:
the same rows), --into, the question before replacing data, bad dumps that change nothing, Ctrl-C mid-dump,
and dumps that cross engines (embedded <-> Docker)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_toolkit, spawn_toolkit, wait_until

ARCHIVAL = "memgpt_archival_memory_agent"
RECALL = "memgpt_recall_memory_agent"
TABLES = (ARCHIVAL, RECALL, "plain_notes")


def _url(env: dict[str, str] | None = None, database: str = "memgpt") -> str:
    port = (env or {}).get("TOOLKIT_PG_PORT") or os.environ["TOOLKIT_PG_PORT"]
    return f"postgresql://memgpt:memgpt@127.0.0.1:{port}/{database}"


def _sql(url: str, query: str) -> Any:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query)
        return cursor.fetchall() if cursor.description else None


def _fill(url: str, rows: int = 40) -> None:
    """Every table kind: MemGPT's archival passages (through the backend), a recall-memory table, a plain one."""
    import numpy as np

    from toolkit.backends.base import Passage, StoreLocation
    from toolkit.backends.postgres import PostgresStore

    store = PostgresStore(StoreLocation("postgres", url, ARCHIVAL))
    user = uuid.uuid4()
    store.insert([Passage(id=uuid.uuid4(), user_id=user, text=f"passage {i} \u00e9", metadata={"i": i},
                          embedding=np.random.default_rng(i).random(16).astype("float32")) for i in range(rows)])
    store.close()
    _sql(url, f"CREATE TABLE {RECALL} (id uuid PRIMARY KEY, user_id uuid, agent_id uuid, role varchar, text varchar, "
              "embedding vector(4096), embedding_dim bigint, created_at timestamptz DEFAULT now());"
              f"INSERT INTO {RECALL} (id, user_id, role, text) SELECT gen_random_uuid(), gen_random_uuid(), 'user', "
              f"'said ' || g FROM generate_series(1, {rows}) g;"
              "CREATE TABLE plain_notes (n serial PRIMARY KEY, note text, at date);"
              "INSERT INTO plain_notes (note, at) VALUES ('first', '2024-01-02'), (NULL, NULL), ('it''s', '1999-12-31')")


def _contents(url: str) -> dict[str, list[str]]:
    return {t: [r[0] for r in _sql(url, f"SELECT t::text FROM {t} t ORDER BY 1")] for t in TABLES}


def _checksums(result: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {t["name"]: (t["rows"], t["checksum"]) for t in result["tables"]}


def _up(env: dict[str, str] | None = None, *args: str) -> None:
    done = run_toolkit("up", *args, env=env)
    assert done.returncode == 0, done.stderr


def _backup(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run_toolkit("backup", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def filled(embedded_down_after: Path) -> dict[str, Any]:
    """An embedded server holding every table kind, and its backup (the default file)."""
    _up(None, "--engine", "embedded")
    _fill(_url())
    return _backup()


def test_restore_drill_brings_back_every_row(filled: dict[str, Any], isolated: Path) -> None:
    before = _contents(_url())
    dump = Path(filled["file"])
    assert dump.parent == isolated / "backups" and dump.name.startswith("memgpt-") and dump.suffix == ".dump"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(filled["record"]).stat().st_mode) == 0o600
    assert stat.S_IMODE(dump.parent.stat().st_mode) == 0o700
    assert (dump.parent / ".gitignore").read_text().splitlines()[-1] == "*"
    assert dump.read_bytes().startswith(b"PGDMP") and filled["bytes"] == dump.stat().st_size
    recorded = _checksums(filled)
    assert recorded[f"public.{ARCHIVAL}"][0] == 40 and recorded["public.plain_notes"][0] == 3
    assert [t["archival"] for t in filled["tables"]] == [True, False, False]
    # the archival checksum is the one `toolkit migrate` computes
    from toolkit.backends.base import StoreLocation
    from toolkit.backends.postgres import PostgresStore
    from toolkit.migrate import Checksum

    store, checksum = PostgresStore(StoreLocation("postgres", _url(), ARCHIVAL)), Checksum()
    for batch in store.scan(7):
        checksum.update(batch)
    store.close()
    assert recorded[f"public.{ARCHIVAL}"] == (40, checksum.hexdigest())

    assert run_toolkit("down", "--purge", "--yes").returncode == 0
    _up()
    assert _sql(_url(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    done = run_toolkit("restore", str(dump), "--json")  # an empty database: nothing to ask about
    assert done.returncode == 0, done.stderr
    restored = json.loads(done.stdout)
    assert restored["verified"] is True and restored["replaced"] == []
    assert _checksums(restored) == recorded
    assert _contents(_url()) == before
    # MemGPT's store reads it as before: vectors, ids, search
    store = PostgresStore(StoreLocation("postgres", _url(), ARCHIVAL))
    assert store.count() == 40 and len(store.query([0.5] * 16, 3)) == 3
    store.close()


def test_restore_asks_before_replacing_and_without_yes_changes_nothing(filled: dict[str, Any]) -> None:
    _sql(_url(), "INSERT INTO plain_notes (note) VALUES ('after the backup')")
    changed = _contents(_url())
    refused = run_toolkit("restore", filled["file"])  # no terminal, no --yes
    assert refused.returncode == 1
    assert "re-run with --yes" in refused.stderr and "plain_notes" in refused.stderr
    assert _contents(_url()) == changed
    done = run_toolkit("restore", filled["file"], "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert f"public.{ARCHIVAL}" in json.loads(done.stdout)["replaced"]
    assert [r for r in _contents(_url())["plain_notes"] if "after the backup" in r] == []


def test_restore_into_a_new_database_leaves_the_first_alone(filled: dict[str, Any]) -> None:
    _sql(_url(), "DELETE FROM plain_notes")
    original = _contents(_url())
    done = run_toolkit("restore", filled["file"], "--into", "memgpt copy")
    assert done.returncode == 0, done.stderr
    assert "into new database memgpt copy" in done.stdout and "verified against its record" in done.stdout
    assert _contents(_url(database="memgpt%20copy"))["plain_notes"] != []
    assert _contents(_url()) == original
    again = run_toolkit("restore", filled["file"], "--into", "memgpt copy")
    assert again.returncode == 2 and "database 'memgpt copy' exists" in again.stderr


def _forge_newer(dump: Path, target: Path) -> None:
    data = dump.read_bytes()  # "PGDMP", then the archive version: major, minor, revision
    target.write_bytes(data[:5] + bytes([1, 99, 0]) + data[8:])


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated with its record", "truncated without a record",
                                  "header only", "newer archive version", "a directory", "a FIFO"])
def test_a_bad_dump_is_refused_in_one_line_and_changes_nothing(filled: dict[str, Any], isolated: Path,
                                                               case: str) -> None:
    dump = Path(filled["file"])
    bad = isolated / "bad.dump"
    if case == "garbage":
        bad.write_text("not a dump\n")
    elif case.startswith("truncated"):
        data = dump.read_bytes()
        bad.write_bytes(data[:len(data) * 6 // 10])  # the TOC whole, the data cut: pg_restore fails mid-way
        if case == "truncated with its record":
            (isolated / "bad.dump.json").write_text(Path(filled["record"]).read_text())
    elif case == "header only":
        bad.write_bytes(dump.read_bytes()[:300])
    elif case == "newer archive version":
        _forge_newer(dump, bad)
    elif case == "a directory":
        bad.mkdir()
    elif case == "a FIFO":
        os.mkfifo(bad)  # was waited on forever
    _sql(_url(), "INSERT INTO plain_notes (note) VALUES ('kept')")
    before = _contents(_url())
    done = run_toolkit("restore", str(bad), "--yes")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    expected = {"missing": "no dump at", "garbage": "not a pg_dump custom-format archive",
                "truncated with its record": "damaged or truncated", "truncated without a record": "truncated or damaged",
                "header only": "not a readable dump", "newer archive version": "newer pg_dump (archive format 1.99)",
                "a directory": "is a directory", "a FIFO": "is not a regular file"}[case]
    assert expected in errors[0]
    assert _contents(_url()) == before


def test_backup_never_replaces_a_file_unless_forced(filled: dict[str, Any], isolated: Path) -> None:
    target = isolated / "mine.dump"
    target.write_text("precious")
    refused = run_toolkit("backup", str(target))
    assert refused.returncode == 2 and "exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == "precious" and not (isolated / "mine.dump.json").exists()
    forced = _backup(str(target), "--force")
    assert target.read_bytes().startswith(b"PGDMP") and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _checksums(forced) == _checksums(filled)
    assert [p.name for p in isolated.iterdir() if ".partial-" in p.name] == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_backup_leaves_no_file(embedded_down_after: Path, sig: signal.Signals) -> None:
    _up(None, "--engine", "embedded")
    # enough rows that pg_dump is still writing when the signal comes
    _sql(_url(), "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 40) AS t FROM generate_series(1, 400000) g")
    project = embedded_down_after
    target = project / "out.dump"
    child = spawn_toolkit("backup", str(target), env={"PYTHONUNBUFFERED": "1"})

    def partial_written() -> bool:
        return any(p.name.startswith(".out.dump.partial-") and p.stat().st_size > 0 for p in project.iterdir())

    wait_until(partial_written, 120, "pg_dump writing the partial file")
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == (130 if sig == signal.SIGINT else 143), stderr
    assert sorted(p.name for p in project.iterdir() if "out.dump" in p.name) == []
    assert _sql(_url(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'") == [(0,)]


def test_backup_and_restore_say_start_the_server_first(isolated: Path) -> None:
    for argv in (("backup",), ("restore", str(isolated / "x.dump"))):
        if argv[0] == "restore":
            (isolated / "x.dump").write_bytes(b"PGDMP" + bytes([1, 16, 0]))
        done = run_toolkit(*argv, "--json")
        assert done.returncode == 5, done.stderr
        assert "toolkit up" in done.stderr and "memgpt:memgpt" not in done.stderr


# -- across engines ---------------------------------------------------------------------------------

def _docker_env(settings: Any) -> dict[str, str]:
    return {"TOOLKIT_PG_IMAGE": settings.image, "TOOLKIT_PG_CONTAINER": settings.container,
            "TOOLKIT_PG_VOLUME": settings.volume, "TOOLKIT_PG_PORT": str(settings.db.port)}


@pytest.mark.docker
def test_a_dump_crosses_engines_embedded_to_docker_and_back(dsettings: Any, embedded_down_after: Path,
                                                            isolated: Path) -> None:
    _up(None, "--engine", "embedded")
    _fill(_url())
    before = _contents(_url())
    from_embedded = _backup(str(isolated / "embedded.dump"))

    docker = _docker_env(dsettings)
    _up(docker, "--engine", "docker", "--switch-engine", "--no-export")
    done = run_toolkit("restore", from_embedded["file"], "--engine", "docker", "--json", env=docker)
    assert done.returncode == 0, done.stderr
    assert _checksums(json.loads(done.stdout)) == _checksums(from_embedded)
    assert _contents(_url(docker)) == before

    _sql(_url(docker), "INSERT INTO plain_notes (note) VALUES ('written on docker')")
    from_docker = _backup(str(isolated / "docker.dump"), "--engine", "docker", env=docker)
    done = run_toolkit("restore", from_docker["file"], "--engine", "embedded", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert _checksums(json.loads(done.stdout)) == _checksums(from_docker)
    assert _contents(_url()) == _contents(_url(docker))
    done = run_toolkit("restore", from_embedded["file"], "--engine", "docker", "--into", "copy", env=docker)
    assert done.returncode == 0 and "into new database copy" in done.stdout, done.stderr
    assert _contents(_url(docker, "copy")) == before
    assert run_toolkit("down", "--purge", "--yes", "--engine", "docker", env=docker).returncode == 0


def test_a_default_name_already_taken_gets_a_suffix(filled: dict[str, Any], isolated: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from toolkit.backup import default_file
    from toolkit.settings import resolve

    settings, now = resolve({}), datetime.now(timezone.utc)
    # every name the next minute would give is taken (a backup a moment ago in the same second)
    taken = {default_file(settings, "memgpt", now + timedelta(seconds=s)) for s in range(60)}
    for path in taken:
        path.write_text("someone's")
    made = Path(_backup()["file"])
    assert made not in taken and made.stem.endswith("-2") and made.with_name(made.stem[:-2] + ".dump") in taken
    assert all(path.read_text() == "someone's" for path in taken)
    assert default_file(settings, "my db/../x").name.startswith("my_db_.._x-")


def test_external_engine_uses_a_local_tool_of_a_fitting_version(filled: dict[str, Any], isolated: Path) -> None:
    url = _url()
    result = _backup(str(isolated / "ext.dump"), "--engine", "external", "--url", url)
    assert result["tool"].startswith("pg_dump 18") and _checksums(result) == _checksums(filled)
    done = run_toolkit("restore", result["file"], "--engine", "external", "--url", url, "--yes")
    assert done.returncode == 0 and "verified against its record" in done.stdout, done.stderr
    assert "memgpt:memgpt" not in done.stdout + done.stderr


def test_a_target_without_the_vector_extension_is_refused_before_anything_changes(filled: dict[str, Any]) -> None:
    from toolkit.engines.embedded import EmbeddedEngine
    from toolkit.settings import resolve

    admin = EmbeddedEngine(resolve({"engine": "embedded"})).admin().url.with_address(host="127.0.0.1")
    _sql(admin.libpq, "CREATE DATABASE novec TEMPLATE template0 OWNER memgpt")
    target = _url(database="novec")
    _sql(target, "CREATE TABLE plain_notes (n int); INSERT INTO plain_notes VALUES (7)")
    done = run_toolkit("restore", filled["file"], "--engine", "external", "--url", target, "--yes")
    assert done.returncode == 5, done.stderr
    assert "needs the vector extension, which database 'novec' lacks" in done.stderr
    assert _sql(target, "SELECT n FROM plain_notes") == [(7,)]


def test_an_interrupted_restore_changes_nothing(embedded_down_after: Path) -> None:
    _up(None, "--engine", "embedded")
    _sql(_url(), "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 40) AS t FROM generate_series(1, 400000) g")
    dump = _backup()["file"]
    _sql(_url(), "DELETE FROM big WHERE g > 10")
    child = spawn_toolkit("restore", dump, "--yes")
    wait_until(lambda: _sql(_url(), "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_restore%' "
                                    "AND query LIKE 'COPY%'") == [(1,)], 120, "pg_restore copying rows")
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    wait_until(lambda: _sql(_url(), "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_restore%'")
               == [(0,)], 60, "pg_restore's session to end")
    assert _sql(_url(), "SELECT count(*) FROM big") == [(10,)]


def test_the_backup_benchmark_runs_both_sides_and_prints_ratios(isolated: Path) -> None:
    """bench/backup.py keeps running (no timing is checked: this machine's load decides it)."""
    import subprocess
    import sys

    from tests.support import REPO

    done = subprocess.run([sys.executable, str(REPO / "bench" / "backup.py"), "--rows", "50", "--dim", "8", "--reps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["backup", "restore", "dump size"]
    assert all("ratio" in line for line in done.stdout.splitlines())


def test_a_table_the_role_cannot_read_fails_in_one_line_and_leaves_no_file(filled: dict[str, Any], isolated: Path) -> None:
    from toolkit.engines.embedded import EmbeddedEngine
    from toolkit.settings import resolve

    admin = EmbeddedEngine(resolve({"engine": "embedded"})).admin().url.with_address(host="127.0.0.1")
    admin_app_db = admin.libpq.rsplit("/", 1)[0] + "/memgpt"
    _sql(admin_app_db, "CREATE TABLE secret (x int); INSERT INTO secret VALUES (1)")  # the superuser's
    done = run_toolkit("backup", str(isolated / "x.dump"))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("toolkit: ")]
    assert len(errors) == 1 and "secret" in errors[0] and "internal error" not in errors[0], done.stderr
    assert [p.name for p in isolated.iterdir() if p.name.startswith(("x.dump", ".x.dump"))] == []


def test_into_without_the_rights_it_needs_leaves_no_database(filled: dict[str, Any]) -> None:
    from toolkit.engines.embedded import EmbeddedEngine
    from toolkit.settings import resolve

    admin = EmbeddedEngine(resolve({"engine": "embedded"})).admin().url.with_address(host="127.0.0.1")
    external = ("--engine", "external", "--url", _url())
    refused = run_toolkit("restore", filled["file"], *external, "--into", "copy")  # the role may not CREATEDB
    assert refused.returncode == 1 and "cannot create database 'copy'" in refused.stderr, refused.stderr
    _sql(admin.libpq, "ALTER ROLE memgpt CREATEDB")  # it may now, but not create the extension
    refused = run_toolkit("restore", filled["file"], *external, "--into", "copy")
    assert refused.returncode == 5 and "vector extension in the new database 'copy'" in refused.stderr, refused.stderr
    assert _sql(admin.libpq, "SELECT datname FROM pg_database WHERE datname = 'copy'") == []


@pytest.mark.parametrize("answer", [b"n\n", b"y\n"])
def test_at_a_terminal_restore_asks_and_a_no_changes_nothing(filled: dict[str, Any], answer: bytes) -> None:
    import pty

    _sql(_url(), "INSERT INTO plain_notes (note) VALUES ('after the backup')")
    changed = _contents(_url())
    primary, secondary = pty.openpty()
    try:
        child = spawn_toolkit("restore", filled["file"], stdin=secondary)
        os.close(secondary)
        os.write(primary, answer)
        out, err = child.communicate(timeout=180)
    finally:
        os.close(primary)
    assert "Replace database 'memgpt' (it holds 3 tables" in err and "[y/N]" in err, err
    if answer == b"n\n":
        assert child.returncode == 1 and "nothing was changed" in err
        assert _contents(_url()) == changed
    else:
        assert child.returncode == 0 and "verified against its record" in out, err
        assert _contents(_url()) != changed


@pytest.mark.parametrize("edit", [{"tables": "public.plain_notes"}, {"tables": None}, {"tables": [1, 2]},
                                  {"tables": [{"name": "public.plain_notes"}]}, {"bytes": "many"},
                                  {"tables": [{"name": "public.plain_notes", "rows": "3", "checksum": "x"}]}])
def test_a_record_of_the_wrong_shape_is_refused_before_anything_changes(filled: dict[str, Any], isolated: Path,
                                                                        edit: dict[str, Any]) -> None:
    """An edited record used to pass the first checks, the restore replaced the database, and only the
    comparison afterwards crashed (internal error 70)."""
    record = Path(filled["record"])
    (isolated / "edited.dump").write_bytes(Path(filled["file"]).read_bytes())
    (isolated / "edited.dump.json").write_text(json.dumps({**json.loads(record.read_text()), **edit}))
    _sql(_url(), "INSERT INTO plain_notes (note) VALUES ('kept')")
    before = _contents(_url())
    done = run_toolkit("restore", str(isolated / "edited.dump"), "--yes")
    assert done.returncode == 2, done.stderr
    assert "edited.dump.json is a damaged toolkit backup record" in done.stderr, done.stderr
    assert _contents(_url()) == before


def test_a_restore_blocked_by_another_session_gives_up_and_says_whose(filled: dict[str, Any]) -> None:
    """An agent idle in a transaction holds a lock on a table the restore drops: the restore waited forever."""
    import psycopg

    _sql(_url(), "INSERT INTO plain_notes (note) VALUES ('kept')")
    before = _contents(_url())
    with psycopg.connect(_url(), application_name="an agent") as agent:
        agent.execute("SELECT count(*) FROM plain_notes")  # ACCESS SHARE, held until its transaction ends
        done = run_toolkit("restore", filled["file"], "--yes", env={"TOOLKIT_TIMEOUT": "1"})
        agent.rollback()
    assert done.returncode == 3, done.stderr
    assert "database 'memgpt' is in use" in done.stderr and "an agent, idle in transaction" in done.stderr, done.stderr
    assert "nothing was changed" in done.stderr
    assert _contents(_url()) == before


def test_a_backup_blocked_by_an_exclusive_lock_gives_up_and_leaves_no_file(filled: dict[str, Any], isolated: Path) -> None:
    import psycopg

    with psycopg.connect(_url()) as migration:
        migration.execute("LOCK TABLE plain_notes IN ACCESS EXCLUSIVE MODE")  # an ALTER TABLE, a VACUUM FULL
        done = run_toolkit("backup", str(isolated / "x.dump"), env={"TOOLKIT_TIMEOUT": "1"})
        migration.rollback()
    assert done.returncode == 3, done.stderr
    assert "another session holds a lock on a table of database 'memgpt'" in done.stderr, done.stderr
    assert "public.plain_notes" in done.stderr
    assert [p.name for p in isolated.iterdir() if p.name.startswith(("x.dump", ".x.dump"))] == []


def test_backups_at_once_each_get_a_name_of_their_own(filled: dict[str, Any], isolated: Path) -> None:
    """Started in the same second they chose the same default name, and all but one failed after dumping
    ("exists; give another FILE", though the user gave none)."""
    children = [spawn_toolkit("backup", "--json") for _ in range(5)]
    outcomes = [(child.communicate(timeout=300), child.returncode) for child in children]
    assert [code for _, code in outcomes] == [0] * 5, [err for (_, err), _ in outcomes]
    files = {json.loads(out)["file"] for (out, _), _ in outcomes}
    assert len(files) == 5 and all(Path(f).exists() and Path(f + ".json").exists() for f in files)
    assert all(_checksums(json.loads(out)) == _checksums(filled) for (out, _), _ in outcomes)


@pytest.mark.parametrize("case", ["backups is a file", "backups is someone else's", "an unwritable directory"])
def test_a_place_it_cannot_write_is_one_line(filled: dict[str, Any], isolated: Path, case: str) -> None:
    backups = isolated / "backups"
    args: tuple[str, ...] = ()
    shutil.rmtree(backups)
    if case == "backups is a file":
        backups.write_text("mine")
    elif case == "backups is someone else's":
        if os.geteuid() != 0:
            pytest.skip("giving a directory away needs root")
        elsewhere = isolated.parent / "theirs"
        elsewhere.mkdir(mode=0o777)
        os.chown(elsewhere, 65534, 65534)
        backups.symlink_to(elsewhere)
    else:
        if os.geteuid() != 0:
            readonly = isolated / "ro"
            readonly.mkdir(mode=0o500)
            args = (str(readonly / "x.dump"),)
        else:
            args = ("/proc/x.dump",)  # root may write anywhere but there
    done = run_toolkit("backup", *args)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("toolkit: ")]
    assert len(errors) == 1 and "internal error" not in errors[0], done.stderr
    if case == "backups is someone else's":
        assert "belongs to uid 65534" in errors[0] and list((isolated.parent / "theirs").iterdir()) == []


@pytest.mark.parametrize("case", ["a link to /dev/null", "a FIFO", "its record's name is a directory"])
def test_force_never_puts_a_file_in_place_of_a_device_or_fifo(filled: dict[str, Any], isolated: Path, case: str) -> None:
    """`toolkit backup /dev/stdout` said "exists; replace it with --force", and --force replaced the link
    (as root: the system's /dev/stdout) with a regular file."""
    target = isolated / "out.dump"
    if case == "a link to /dev/null":
        target.symlink_to("/dev/null")
    elif case == "a FIFO":
        os.mkfifo(target)
    else:
        (isolated / "out.dump.json").mkdir()
    for args in ((), ("--force",)):
        done = run_toolkit("backup", str(target), *args)
        assert done.returncode == 2, done.stderr
        assert "is not a regular file" in done.stderr and "replace it with --force" not in done.stderr, done.stderr
    if case == "a link to /dev/null":
        assert target.is_symlink() and os.readlink(target) == "/dev/null"
    elif case == "a FIFO":
        assert stat.S_ISFIFO(target.lstat().st_mode)
    else:
        assert not target.exists()


def test_a_declined_restore_creates_not_even_the_extension(filled: dict[str, Any]) -> None:
    """The vector extension was created in the target (by a role allowed to) before the question, so a
    "no" still changed the database."""
    from toolkit.engines.embedded import EmbeddedEngine
    from toolkit.settings import resolve

    admin = EmbeddedEngine(resolve({"engine": "embedded"})).admin().url.with_address(host="127.0.0.1")
    _sql(admin.libpq, "CREATE DATABASE novec TEMPLATE template0")
    target = admin.libpq.rsplit("/", 1)[0] + "/novec"  # a superuser: it may create the extension
    _sql(target, "CREATE TABLE keep (x int)")
    refused = run_toolkit("restore", filled["file"], "--engine", "external", "--url", target)  # no terminal
    assert refused.returncode == 1 and "re-run with --yes" in refused.stderr, refused.stderr
    assert _sql(target, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == []
    done = run_toolkit("restore", filled["file"], "--engine", "external", "--url", target, "--yes")
    assert done.returncode == 0 and "verified against its record" in done.stdout, done.stderr


def test_a_record_that_is_no_file_is_refused_rather_than_read_forever(filled: dict[str, Any], isolated: Path) -> None:
    """A FIFO was read forever (the restore hung); a link to /dev/zero, until memory ran out (not run here:
    on a regression it would take the machine's memory)."""
    (isolated / "odd.dump").write_bytes(Path(filled["file"]).read_bytes())
    os.mkfifo(isolated / "odd.dump.json")
    done = run_toolkit("restore", str(isolated / "odd.dump"), "--yes")
    assert done.returncode == 2 and "odd.dump.json is not a toolkit backup record" in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["", "n" * 64])
def test_into_a_name_the_server_would_refuse_or_cut_is_one_line(filled: dict[str, Any], name: str) -> None:
    done = run_toolkit("restore", filled["file"], "--into", name)
    assert done.returncode == 2 and "a database name is 1 to 63 bytes" in done.stderr, done.stderr
    assert _sql(_url(), "SELECT count(*) FROM pg_database WHERE datname LIKE 'nnn%'") == [(0,)]


def test_the_summary_line_says_the_size_for_people(filled: dict[str, Any], isolated: Path) -> None:
    """"(41332489 bytes, 1 tables, ...)": the size in KiB/MiB, the counts in words that agree."""
    done = run_toolkit("backup", str(isolated / "said.dump"))
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert re.search(r"\(\d+\.\d (KiB|MiB), \d+ tables?, \d+ rows?\) in ", first), first  # a dump is over 1 KiB
    assert not re.search(r"\b1 tables\b|\b1 rows\b", first), first


def test_restores_at_once_take_turns_and_each_verifies(filled: dict[str, Any]) -> None:
    """Two restores at once: the check of one began before the other committed, and Postgres found each
    replaced table by the newest catalog but read its rows in the older snapshot: "0 rows", exit 7, for a
    restore that had worked. They take turns now (a backup meanwhile too), and every one verifies."""
    children = [spawn_toolkit("restore", "--yes", "--json", filled["file"]) for _ in range(3)]
    children.append(spawn_toolkit("backup", "--json"))
    done = [(child, *child.communicate(timeout=300)) for child in children]
    for child, _out, err in done:
        assert child.returncode == 0, err
    for _, out, _ in done[:3]:
        assert json.loads(out)["verified"] is True
        assert _checksums(json.loads(out)) == _checksums(filled)
