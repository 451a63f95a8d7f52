"""Files the toolkit rewrites that are not its own (MemGPT's config, .env), and stores two writers share:
what a hostile or careless setup does to them (a device or FIFO in their place, another user's file, a
password in a readable file, two migrations at once)."""

from __future__ import annotations

import os
import stat
import threading
from contextlib import closing
from pathlib import Path

import pytest

from tests.backend_support import passages
from tests.support import run_toolkit
from toolkit import envfile, memgpt_config
from toolkit.backends import StoreLocation, open_store
from toolkit.errors import ConfigError
from toolkit.memgpt_config import ArchivalStorage

ROOT = os.geteuid() == 0
SECRET_URI = "postgresql+pg8000://memgpt:s3cretPW@127.0.0.1:5432/memgpt"


def _null_device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own: never the real one


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_path_that_is_no_file_is_refused_not_replaced(tmp_path: Path, kind: str) -> None:
    if kind == "device" and not ROOT:
        pytest.skip("creating a device node needs root")
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "config"
    os.mkfifo(path) if kind == "fifo" else _null_device(path)
    done = run_toolkit("configure", "--backend", "local", "--path", str(tmp_path / "a"), "--no-input", "--no-check",
                       env={"MEMGPT_CONFIG_PATH": str(path)}, timeout=30)  # a FIFO read would never end
    assert done.returncode == ConfigError.exit_code and done.stderr.count("\n") == 1, done.stderr
    assert "is not a regular file" in done.stderr
    mode = path.lstat().st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    assert [p.name for p in path.parent.iterdir()] == ["config"]  # no backup, no temp file beside it


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_env_file_that_is_no_file_is_refused_not_replaced(tmp_path: Path, kind: str) -> None:
    if kind == "device" and not ROOT:
        pytest.skip("creating a device node needs root")
    path = tmp_path / "env"
    os.mkfifo(path) if kind == "fifo" else _null_device(path)
    raised: list[BaseException] = []

    def write() -> None:
        try:
            envfile.write(path, {"PGVECTOR_TEST_DB_URL": SECRET_URI})
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    writer = threading.Thread(target=write, daemon=True)  # reading a FIFO would block: never the test run
    writer.start()
    writer.join(30)
    assert not writer.is_alive(), "envfile.write blocked on the FIFO"
    assert len(raised) == 1 and isinstance(raised[0], ConfigError) and "not a regular file" in raised[0].message
    mode = path.lstat().st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)


def test_a_password_written_into_a_readable_config_makes_it_private(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[defaults]\npreset = memgpt_chat\n")
    config.chmod(0o644)  # as MemGPT leaves it
    backup = memgpt_config.write(config, ArchivalStorage("local", "/data/archival", ""))
    assert stat.S_IMODE(config.stat().st_mode) == 0o644  # nothing secret in it: the user's mode stays
    assert backup is not None and stat.S_IMODE(backup.stat().st_mode) == 0o600
    backup = memgpt_config.write(config, ArchivalStorage("postgres", "", SECRET_URI))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # others could read the password
    assert backup is not None and stat.S_IMODE(backup.stat().st_mode) == 0o600


@pytest.mark.skipif(not ROOT, reason="writing another user's file needs root")
def test_root_rewriting_a_users_config_leaves_it_theirs(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    config = tmp_path / "config"
    config.write_text("[defaults]\npreset = memgpt_chat\n")
    os.chown(config, nobody.pw_uid, nobody.pw_gid)
    config.chmod(0o600)
    memgpt_config.write(config, ArchivalStorage("local", "/data/archival", ""))
    st = config.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o600)


@pytest.mark.parametrize("dry_run", [False, True])
def test_migrate_switch_checks_the_config_before_copying(tmp_path: Path, dry_run: bool) -> None:
    source, destination = tmp_path / "src", tmp_path / "dst"
    with closing(open_store(StoreLocation("local", str(source), "t_switch"))) as store:
        store.insert(passages(20, 8))
    config = tmp_path / "config"
    config.write_bytes(b"[archival_storage]\ntype = local\n\xff\xfe binary\n")
    done = run_toolkit("migrate", "--from", f"local://{source}", "--to", f"local://{destination}", "--table", "t_switch",
                       "--switch", *(["--dry-run"] if dry_run else []), env={"MEMGPT_CONFIG_PATH": str(config)})
    assert done.returncode == ConfigError.exit_code and "is not UTF-8 text" in done.stderr, done.stderr
    assert not destination.exists()  # refused before anything was copied


def test_a_lancedb_table_is_created_under_the_writers_lock(tmp_path: Path) -> None:
    # two creators at once each committed an Overwrite: the late one failed the other's append, or
    # replaced the rows it had added (a count of 10 of 40, no error)
    import time

    from toolkit.backends._util import directory_lock

    location = StoreLocation("lancedb", str(tmp_path / "lance"), "t_race")
    failures: list[BaseException] = []

    store = open_store(location)
    assert store.count() == 0  # lancedb imported and connected before the window below

    def write() -> None:
        try:
            with closing(store):
                store.insert(passages(10, 8))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    with directory_lock(tmp_path / "lance", "test"):  # another writer's lock
        writer = threading.Thread(target=write)
        writer.start()
        for _ in range(20):  # the table must not appear while the lock is held
            assert not (tmp_path / "lance" / "t_race.lance").exists()
            time.sleep(0.05)
    writer.join()
    assert not failures
    with closing(open_store(location)) as reader:
        assert reader.count() == 10


def test_two_writers_into_one_lancedb_table_store_each_row_once(tmp_path: Path) -> None:
    # two merge_insert at once both find an id new and both insert it: the table held it twice
    rows = passages(300, 8)
    location = StoreLocation("lancedb", str(tmp_path / "lance"), "t_race")
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with closing(open_store(location)) as store:
                for start in range(0, len(rows), 30):
                    store.insert(rows[start:start + 30])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not failures
    with closing(open_store(location)) as store:
        assert store.count() == len(rows)
        assert sorted(p.id for batch in store.scan(100) for p in batch) == sorted(p.id for p in rows)
