"""Backup room: dump the project's database to a file and restore it, through the tools of a version that
fits the server (the engine that runs it knows where they are: ``Engine.tool``).

A backup is a ``pg_dump`` custom-format archive plus a record beside it (``FILE.json``, 0600): the dump's
size and SHA-256, and every table's row count and checksum (archival tables: ``migrate``'s ``Checksum``;
others: a digest of their rows' text), taken in the very snapshot pg_dump dumps (``--snapshot``). A sidecar
rather than a self-verifying read of the dump's own data: the record is what the database held, read by
the same code that checks the restore, and the SHA-256 tells a truncated or changed file before anything
is dropped. A restore without its record still works, and says it could not verify.

Restore is all or nothing: one transaction (``--single-transaction``), dropping only what the dump
recreates (``--clean --if-exists``), owners and grants left to the target (``--no-owner --no-privileges``,
so a dump crosses engines and roles). Extensions are left out of the restore list: the application role may
not drop or create ``vector``; the target has it already (``toolkit up``'s bootstrap; ``--into``: the
admin creates the new database with it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.engines.base import Progress, quiet
from toolkit.errors import InUseError, MigrationError, NotReadyError, ToolkitError, UsageError, error_line
from toolkit.urls import PgUrl, redact

if TYPE_CHECKING:
    import psycopg

    from toolkit.engines.base import Engine
    from toolkit.settings import Settings

RECORD_FORMAT = "toolkit-backup 1"
MAGIC = b"PGDMP"
BACKUPS_DIR = "backups"
_RECORD_MAX = 64 << 20
_NAME_MAX = 63  # bytes: the server cuts longer names (NAMEDATALEN - 1)
_STATEMENT_LINES = 20  # of pg_restore's stderr kept as an error's detail
_DUMPING = re.compile(r'^pg_dump: (?:dumping contents of table|processing data for table) "(.+)"')
_RESTORING = re.compile(r'^pg_restore: processing data for table "(.+)"')
_ARCHIVE_VERSION = re.compile(r"unsupported version \(([\d.]+)\) in file header")
_LOCK_HINT = "TOOLKIT_TIMEOUT sets how long to wait (default 60 s)"

# a confirmation the command gives: returns when the user agrees, raises (Declined) when not
Confirm = Callable[[str], None]


@dataclass(frozen=True)
class TableRecord:
    name: str  # schema.table
    rows: int
    checksum: str
    archival: bool  # MemGPT's passage layout: checksum is migrate's


@dataclass
class BackupResult:
    file: Path
    record: Path
    database: str
    bytes: int
    sha256: str
    server_major: int
    tool: str
    tables: list[TableRecord]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "file": str(self.file), "record": str(self.record)}


@dataclass
class RestoreResult:
    file: Path
    database: str
    created: bool  # --into: a new database
    tables: list[TableRecord]
    verified: bool  # False: no record to verify against (a mismatch raises)
    replaced: list[str] = field(default_factory=list)  # tables the target held before
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "file": str(self.file)}


# -- backup ----------------------------------------------------------------------------------------

def default_file(settings: Settings, database: str, now: datetime | None = None) -> Path:
    """``backups/<database>-<UTC YYYYmmddTHHMMSSZ>.dump`` under the project dir."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", database).lstrip(".") or "database"
    return settings.project_dir / BACKUPS_DIR / f"{safe}-{stamp}.dump"


def record_path(file: Path) -> Path:
    return file.with_name(file.name + ".json")


def backup(settings: Settings, file: Path | None = None, *, force: bool = False, progress: Progress = quiet) -> BackupResult:
    """Dump the project's database to ``file`` (default ``default_file``), 0600 from its first byte, under
    its final name only once pg_dump succeeded; write its record beside it. ``force``: replace an existing
    file."""
    from toolkit import engines

    started = time.monotonic()
    engine, _ = engines.select(settings)
    url = engine.endpoint().url
    major = _server_major(url)
    tool = engine.tool("pg_dump")
    alternatives: list[Path] = []
    if file is None:
        first = default_file(settings, url.database)
        _make_backups_dir(first.parent)
        # two backups in one second: the second is -2 (chosen again when the dump is placed: two at once)
        names = [first, *(first.with_stem(f"{first.stem}-{n}") for n in range(2, 100))]
        free = [name for name in names if not name.exists() and not record_path(name).exists()] or [first]
        file, alternatives = free[0], free[1:]
    file = Path(os.path.abspath(file))
    if not file.parent.is_dir():
        raise UsageError(f"cannot write {file}: no directory {file.parent}", hint="create it, or give another FILE")
    for path in (file, record_path(file)):
        if path.exists() and not path.is_file():
            # /dev/stdout, a FIFO, a directory: --force would put a file in its place (as root, /dev's own)
            raise UsageError(f"{path} is not a regular file (a device, FIFO or directory, or a link to one); "
                             "a backup and its record are files of their own",
                             hint="give the path of a new file; --force replaces only a regular file")
        if (path.exists() or path.is_symlink()) and not force:
            raise UsageError(f"{path} exists", hint="give another FILE, or replace it with --force")
    with _turn(url, shared=True, timeout=settings.timeout), _connect(url) as conn, _partial(file) as (fd, partial):
        # one snapshot for the census and the dump: the counts describe exactly the rows dumped
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # the census waits for a locked table no longer than pg_dump does: when pg_dump gives up before the
        # census's query started, cancelling it comes too early, and it would wait forever
        _lock_timeout(conn, settings.timeout)
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        # a table another session holds exclusively (ALTER, VACUUM FULL) would make pg_dump wait forever
        # gzip level 1, not pg_dump's 6: embeddings are float noise that no level shrinks much, and MemGPT's zero
        # padding to 4096 shrinks at any level; measured 6x faster for 10% more bytes (bench/backup.py)
        argv = [tool, "--format=custom", "--compress=1", "--verbose", "--no-password", f"--snapshot={snapshot}",
                f"--lock-wait-timeout={_milliseconds(settings.timeout)}", "--dbname", url.render("plain", password=False)]
        progress("dumping, and counting rows and computing checksums beside it...")
        tables = _beside(lambda: census(conn), conn,
                         lambda: _run(argv, url, progress, _DUMPING, "dumping", stdout=fd, what="pg_dump",
                                      lock_wait=settings.timeout))
        os.fsync(fd)
        conn.rollback()
        digest, size = _sha256(partial)
        file = _place(partial, file, force=force, alternatives=alternatives)
    version = _tool_version(tool)
    record = {"format": RECORD_FORMAT, "database": url.database, "server_major": major,
              "tool": version, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "bytes": size, "sha256": digest, "tables": [asdict(t) for t in tables]}
    from toolkit.perms import replace_file

    replace_file(record_path(file), (json.dumps(record, indent=2) + "\n").encode())
    return BackupResult(file, record_path(file), url.database, size, digest, major, version, tables,
                        time.monotonic() - started)


def _beside(count: Callable[[], list[TableRecord]], conn: psycopg.Connection[Any],
            dump: Callable[[], None]) -> list[TableRecord]:
    """``count`` on a thread while ``dump`` runs here (the two read one snapshot: the backup takes the
    longer of them, not their sum). When the dump fails or we are interrupted, the count's query is
    cancelled before we go on."""
    import threading

    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["tables"] = count()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="toolkit-backup-census", daemon=True)
    worker.start()
    try:
        dump()
        worker.join()
    except BaseException:
        conn.cancel_safe()
        worker.join(timeout=30)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["tables"])


def _make_backups_dir(path: Path) -> None:
    """The default directory: 0700, with a .gitignore of its own, so no checkout commits a dump. One that
    is not ours is refused: its owner could swap a dump for another, or plant a symlink we would write
    through."""
    try:
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = path.stat().st_uid
        if owner != os.geteuid():
            raise UsageError(f"{path} belongs to uid {owner}, not to you (uid {os.geteuid()})",
                             hint="move it away, or give a FILE in a directory of yours")
        ignore = path / ".gitignore"
        if not ignore.exists() and not ignore.is_symlink():
            ignore.write_text("# toolkit backups: never committed\n*\n")
    except OSError as exc:
        raise UsageError(f"cannot make the backups directory {path}: {exc.strerror or exc}",
                         hint="move away what is in its place, or give a FILE") from None


@contextmanager
def _partial(file: Path) -> Iterator[tuple[int, Path]]:
    """A new file beside ``file`` (O_EXCL, 0600 whatever the umask), removed unless ``_place`` moved it."""
    partial = file.with_name(f".{file.name}.partial-{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write in {file.parent}: {exc.strerror or exc}",
                         hint="give a FILE in a directory you can write") from None
    try:
        os.fchmod(fd, 0o600)  # an ACL's default or a umask never widens it
        yield fd, partial
    finally:
        os.close(fd)
        partial.unlink(missing_ok=True)


def _place(partial: Path, file: Path, *, force: bool, alternatives: list[Path]) -> Path:
    """Put the dump under ``file`` (or, when that name was taken meanwhile, the first free of
    ``alternatives``: the default names); the name it got."""
    if force:
        os.replace(partial, file)
        return file
    for name in (file, *alternatives):
        if name is not file and record_path(name).exists():
            continue
        try:
            os.link(partial, name)  # fails if the name appeared meanwhile: never overwritten without --force
        except FileExistsError:
            continue
        return name
    raise UsageError(f"{file} exists", hint="give another FILE, or replace it with --force")


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# -- the census: what a backup records and a restore checks -----------------------------------------

def census(conn: psycopg.Connection[Any], progress: Progress = quiet) -> list[TableRecord]:
    """Every user table's row count and checksum, in ``conn``'s transaction (not autocommit)."""
    import psycopg

    from toolkit.backends.postgres import archival_tables

    schema = conn.execute("SELECT current_schema()").fetchone()
    archival = {f"{schema[0] if schema else 'public'}.{name}" for name in archival_tables(conn)}
    records = []
    for nsp, rel in _user_tables(conn):
        name = f"{nsp}.{rel}"
        progress(f"checksumming {name}", live=True)
        try:
            records.append(_table_record(conn, nsp, rel, archival=name in archival))
        except psycopg.errors.LockNotAvailable:
            raise InUseError(f"another session holds a lock on table {name} of database {conn.info.dbname!r}",
                             hint="wait for that session to end, then try again; "
                                  + _LOCK_HINT) from None
        except psycopg.Error as exc:
            raise ToolkitError(f"cannot read table {name} in database {conn.info.dbname!r}: {error_line(exc)}",
                               hint="the application role must be able to read every table it backs up") from None
    return records


def _lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    """In ``conn``'s transaction, wait at most ``seconds`` for a lock."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{_milliseconds(seconds)}ms"])


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))  # 0 would mean "wait forever" to Postgres


def _table_record(conn: psycopg.Connection[Any], nsp: str, rel: str, *, archival: bool) -> TableRecord:
    from psycopg import sql

    from toolkit.backends.postgres import passages
    from toolkit.migrate import Checksum

    if archival:
        checksum = Checksum()
        for batch in passages(conn, rel):
            checksum.update(batch)
        return TableRecord(f"{nsp}.{rel}", checksum.count, checksum.hexdigest(), True)
    # rows as text, digested one by one, the digests in order: the same rows give the same digest
    row = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
                               "FROM (SELECT md5(t::text) AS h FROM {}.{} t) d").format(
                                   sql.Identifier(nsp), sql.Identifier(rel))).fetchone()
    assert row is not None
    return TableRecord(f"{nsp}.{rel}", int(row[0]), str(row[1]), False)


def _user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Tables outside the system schemas that no extension owns."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = "
        "'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1, 2").fetchall()
    return [(r[0], r[1]) for r in rows]


# -- restore ---------------------------------------------------------------------------------------

def restore(settings: Settings, file: Path, *, into: str | None = None, confirm: Confirm,
            progress: Progress = quiet) -> RestoreResult:
    """Restore ``file`` into the project's database (``into``: a new database of that name), all or nothing,
    then check every table against the backup's record. ``confirm`` is asked before anything the target
    holds is replaced."""
    from toolkit import engines

    started = time.monotonic()
    if into is not None and not 0 < len(into.encode()) <= _NAME_MAX or into is not None and "\0" in into:
        raise UsageError(f"--into {into!r}: a database name is 1 to {_NAME_MAX} bytes (longer ones are cut by the "
                         "server)", hint="choose another name")
    file = Path(os.path.abspath(file))
    record = check_archive(file)
    engine, _ = engines.select(settings)
    url = engine.endpoint().url
    _server_major(url)  # the server answers (NotReadyError naming `toolkit up` when not) before anything else
    tool = engine.tool("pg_restore")
    listing = _listing(tool, file)
    with ExitStack() as turns:
        replaced: list[str] = []
        if into is not None:
            url = _create_database(engine, url, into)
        else:
            turns.enter_context(_turn(url, shared=False, timeout=settings.timeout))  # from the question to the check
            with _connect(url) as conn:
                replaced = [f"{n}.{r}" for n, r in _user_tables(conn)]
                if replaced:  # asked before anything changes, the extension included
                    shown = ", ".join(replaced[:5]) + (f" and {len(replaced) - 5} more" if len(replaced) > 5 else "")
                    confirm(f"replace database {url.database!r} (it holds {len(replaced)} tables: {shown}) with {file.name}")
                if re.search(r"^\d+; \d+ \d+ EXTENSION - vector ", listing, re.M):
                    _ensure_vector(conn, url.database)
        try:
            with tempfile.NamedTemporaryFile("w", prefix="toolkit-restore-", suffix=".list") as chosen:
                chosen.write(_without_extensions(listing))
                chosen.flush()
                argv = [tool, "--single-transaction", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                        "--verbose", "--no-password", "--use-list", chosen.name,
                        "--dbname", url.render("plain", password=False), str(file)]
                application = f"pg_restore (toolkit {os.getpid()})"
                with _lock_watch(url, application, settings.timeout) as blockers:
                    try:
                        _run(argv, url, progress, _RESTORING, "restoring", what="pg_restore", file=file,
                             application=application)
                    except ToolkitError:
                        if not blockers:
                            raise
                        raise InUseError(f"database {url.database!r} is in use: the restore waited {settings.timeout:g} s "
                                         f"for a lock held by {', '.join(blockers)}; nothing was changed",
                                         hint="end those sessions (or wait for them), then restore again; "
                                              + _LOCK_HINT) from None
        except BaseException:
            if into is not None:
                _drop_database(engine, into)  # a failed --into leaves no half-made database behind
            raise
        progress("verifying: counting rows and computing checksums...")
        with _connect(url) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            _lock_timeout(conn, settings.timeout)
            tables = census(conn, progress)
            conn.rollback()
        if record is not None:
            _verify(record, tables, file, url.database)
        return RestoreResult(file, url.database, into is not None, tables, record is not None, replaced,
                             time.monotonic() - started)


_TURN = int.from_bytes(b"tkbackup", "big", signed=True)  # the advisory lock's key (Postgres scopes it to a database)


@contextmanager
def _turn(url: PgUrl, *, shared: bool, timeout: float) -> Iterator[None]:
    """Backups and restores of one database take turns: a restore waits for the backups and the restore under
    way, backups run side by side. Two restores at once made one of them fail its check (exit 7) though both
    worked: Postgres finds a table by the newest catalog but reads its rows in the reader's snapshot, so a
    check that began before the other restore committed counted its new table as empty."""
    with _connect(url) as conn:
        conn.autocommit = True  # a session lock, held until the connection closes
        take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        deadline = time.monotonic() + timeout
        while not conn.execute(f"SELECT {take}(%s)", [_TURN]).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() >= deadline:
                raise InUseError(f"another toolkit {'restore' if shared else 'backup or restore'} of database "
                                 f"{url.database!r} is under way (waited {timeout:g} s)",
                                 hint="let it finish, then try again; " + _LOCK_HINT)
            time.sleep(0.1)
        yield


@contextmanager
def _lock_watch(url: PgUrl, application: str, timeout: float) -> Iterator[list[str]]:
    """Cancel the restore once it has waited ``timeout`` seconds for a lock another session holds (an
    agent idle in a transaction holds one as long as it likes), and say whose: pg_restore sets its own
    ``lock_timeout`` to 0, so it cannot be told to give up. Yields the blocking sessions, filled when it
    cancelled. Best effort: when the watching connection fails, the restore goes on unwatched."""
    import threading

    import psycopg

    blockers: list[str] = []
    done = threading.Event()

    def watch() -> None:
        waiting: dict[int, float] = {}  # pid of pg_restore's backend -> since when it waits for a lock
        try:
            with psycopg.connect(url.libpq, autocommit=True, connect_timeout=10) as conn:
                while not done.wait(0.2):
                    rows = conn.execute("SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE "
                                        "application_name = %s AND wait_event_type = 'Lock'", [application]).fetchall()
                    now = time.monotonic()
                    waiting = {pid: waiting.get(pid, now) for pid, _ in rows}
                    for pid, held_by in rows:
                        if held_by and now - waiting[pid] >= timeout:
                            who = conn.execute("SELECT pid, usename, coalesce(nullif(application_name, ''), '?'), "
                                               "coalesce(state, '?') FROM pg_stat_activity WHERE pid = ANY(%s)",
                                               [held_by]).fetchall()
                            blockers[:] = [f"pid {p} (user {u}, {a}, {st})" for p, u, a, st in who] or \
                                [f"pid {p}" for p in held_by]
                            conn.execute("SELECT pg_cancel_backend(%s)", [pid])
                            return
        except psycopg.Error:
            pass

    watcher = threading.Thread(target=watch, name="toolkit-restore-locks", daemon=True)
    watcher.start()
    try:
        yield blockers
    finally:
        done.set()
        watcher.join(timeout=15)


def check_archive(file: Path) -> dict[str, Any] | None:
    """A readable pg_dump custom-format archive at ``file``, whole when its record says how it should be: the
    record, None when it has none."""
    import stat

    try:
        if not stat.S_ISREG(file.stat().st_mode) and not file.is_dir():  # a FIFO would be waited on forever
            raise UsageError(f"{file} is not a regular file (a device or FIFO); a dump is read twice (checked, "
                             "then restored)", hint="give the path of a file `toolkit backup` wrote")
        with open(file, "rb") as handle:
            head = handle.read(len(MAGIC) + 3)
    except FileNotFoundError:
        raise UsageError(f"no dump at {file}", hint="give the path of a file `toolkit backup` wrote") from None
    except IsADirectoryError:
        raise UsageError(f"{file} is a directory, not a dump", hint="give the path of a file `toolkit backup` wrote") \
            from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not head.startswith(MAGIC):
        raise UsageError(f"{file} is not a pg_dump custom-format archive (no PGDMP header)",
                         hint="give a file `toolkit backup` (or pg_dump -Fc) wrote")
    record = _read_record(file)
    if record is not None:
        digest, size = _sha256(file)
        if digest != record.get("sha256"):
            what = f"{size} bytes, its record says {record.get('bytes')}" if size != record.get("bytes") else \
                "its SHA-256 differs from its record's"
            raise UsageError(f"{file} is damaged or truncated ({what})",
                             hint=f"restore another backup; nothing was changed (the record is {record_path(file).name})")
    return record


def _read_record(file: Path) -> dict[str, Any] | None:
    import stat

    path = record_path(file)
    try:
        st = path.stat()
        # a FIFO would be read forever, a link to /dev/zero until memory ran out; a record is a few KB
        if not stat.S_ISREG(st.st_mode) or st.st_size > _RECORD_MAX:
            raise UsageError(f"{path} is not a toolkit backup record (not a regular file, or over "
                             f"{_RECORD_MAX >> 20} MiB)", hint="move it away to restore without it")
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the backup's record {path}: {error_line(exc)}",
                         hint="move it away to restore without verifying against it") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise UsageError(f"{path} is not a toolkit backup record", hint="move it away to restore without it")
    # checked before anything is restored: a record that cannot be compared would fail only once the
    # database had been replaced
    tables = record.get("tables")
    if not (isinstance(record.get("sha256"), str) and _is_count(record.get("bytes")) and isinstance(tables, list)
            and all(isinstance(t, dict) and isinstance(t.get("name"), str) and _is_count(t.get("rows"))
                    and isinstance(t.get("checksum"), str) for t in tables)):
        raise UsageError(f"{path} is a damaged toolkit backup record (a field is missing or of the wrong type)",
                         hint="move it away to restore without verifying against it; nothing was changed")
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _listing(tool: str, file: Path) -> str:
    """``pg_restore -l``: the archive's table of contents; its header's refusals said in one line."""
    done = subprocess.run([tool, "--list", str(file)], capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout
    said = done.stderr.strip().splitlines()
    newer = _ARCHIVE_VERSION.search(done.stderr)
    if newer:
        raise UsageError(f"{file} was written by a newer pg_dump (archive format {newer.group(1)}) than "
                         f"{_tool_version(tool)} reads; nothing was changed",
                         hint="restore it with a pg_restore as new as that pg_dump, into a server of its version")
    raise UsageError(f"{file} is not a readable dump: {redact(said[-1] if said else 'pg_restore failed')}",
                     hint="it may be truncated or damaged; restore another backup")


def _without_extensions(listing: str) -> str:
    """The list with extensions and their comments commented out: the application role can neither drop
    nor create ``vector``; the target database has it."""
    entry = re.compile(r"^\d+; \d+ \d+ (EXTENSION|COMMENT - EXTENSION) ")
    return "".join(f";{line}\n" if entry.match(line) else f"{line}\n" for line in listing.splitlines())


def _ensure_vector(conn: psycopg.Connection[Any], database: str) -> None:
    """The dump's tables need ``vector``, which the restore leaves out: the target must have it (``toolkit
    up`` created it; a server managed elsewhere may allow the application role to)."""
    import psycopg

    from toolkit.bootstrap import EXTENSION

    try:
        conn.execute(EXTENSION.sql)
        conn.commit()
    except psycopg.Error as exc:
        raise NotReadyError(f"the dump needs the vector extension, which database {database!r} lacks "
                            f"({error_line(exc, last=True)})",
                            hint="run `toolkit up` (it creates it), or as a superuser: CREATE EXTENSION vector;") from None


def _verify(record: dict[str, Any], tables: list[TableRecord], file: Path, database: str) -> None:
    now = {t.name: t for t in tables}
    wrong = []
    for want in record.get("tables", []):
        got = now.get(want["name"])
        if got is None:
            wrong.append(f"{want['name']} is missing")
        elif (got.rows, got.checksum) != (want["rows"], want["checksum"]):
            wrong.append(f"{want['name']} has {got.rows} rows, checksum {got.checksum[:12]} "
                         f"(backup: {want['rows']} rows, {want['checksum'][:12]})")
    if wrong:
        raise MigrationError(f"the restore into database {database!r} does not match {file.name}'s record: "
                             + "; ".join(wrong[:5]), hint="compare with `toolkit psql`; restore again with --yes")


def _create_database(engine: Engine, url: PgUrl, name: str) -> PgUrl:
    """A new database ``name`` owned by the application role, with the vector extension; refused if it exists."""
    import psycopg
    from psycopg import sql

    admin = engine.admin()
    try:
        with psycopg.connect(admin.url.libpq, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                raise UsageError(f"database {name!r} exists", hint="--into takes a new database's name; choose another")
            template = admin.vector_template or "template1"
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(template), sql.Identifier(admin.owner)))
        target = replace(url, database=name)
    except psycopg.Error as exc:
        raise ToolkitError(f"cannot create database {name!r}: {error_line(exc, last=True)}",
                           hint="the role must be allowed to create databases (CREATEDB)") from None
    try:
        if admin.vector_template is None:
            with psycopg.connect(replace(admin.url, database=name).libpq, autocommit=True, connect_timeout=10) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except BaseException as exc:
        _drop_database(engine, name)  # no half-made database left behind
        if not isinstance(exc, psycopg.Error):
            raise
        raise NotReadyError(f"cannot create the vector extension in the new database {name!r}: "
                            f"{error_line(exc, last=True)}",
                            hint="a superuser must create it (CREATE EXTENSION vector), or restore without --into") \
            from None
    return target


def _drop_database(engine: Engine, name: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(engine.admin().url.libpq, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error:
        pass  # the restore's own error says more


# -- running the tools -----------------------------------------------------------------------------

def _server_major(url: PgUrl) -> int:
    from toolkit.engines.tools import server_major

    return server_major(url)


def _tool_version(tool: str) -> str:
    """``pg_dump 18.1`` (it says ``pg_dump (PostgreSQL) 18.1``)."""
    said = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
    return said.replace(" (PostgreSQL)", "") or Path(tool).name


@contextmanager
def _connect(url: PgUrl) -> Iterator[psycopg.Connection[Any]]:
    import psycopg

    try:
        conn = psycopg.connect(url.libpq, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise NotReadyError(f"cannot connect to database {url.database!r} at {url.host}:{url.port}: "
                            f"{error_line(exc, last=True)}", hint="is it running? `toolkit status`, then `toolkit up`") \
            from None
    try:
        yield conn
    finally:
        conn.close()


def _run(argv: list[str], url: PgUrl, progress: Progress, table_line: re.Pattern[str], verb: str, *,
         what: str, stdout: int | None = None, file: Path | None = None, lock_wait: float = 0.0,
         application: str | None = None) -> None:
    """Run a pg tool with the password in its environment (never argv), a progress line per table from its
    --verbose stderr; killed if we are interrupted. Its failure in one line, its last lines as detail."""
    env = {**os.environ, "PGPASSWORD": url.password, "PGCONNECT_TIMEOUT": "10"}
    if application:
        env["PGAPPNAME"] = application
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, errors="replace", env=env)
    tail: list[str] = []
    try:
        assert child.stderr is not None
        for line in child.stderr:
            line = line.rstrip("\n")
            found = table_line.match(line)
            if found:
                progress(f"{verb} {found.group(1)}")
            elif line:
                tail = [*tail[1 - _STATEMENT_LINES:], line]
        code = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    if code == 0:
        return
    errors = [line for line in tail if "error" in line.lower() or "fatal" in line.lower()] or tail or ["no output"]
    said = redact(errors[0] if what == "pg_restore" else errors[-1], (url.password,))
    if what == "pg_dump" and "due to statement timeout" in said and any("LOCK TABLE" in line for line in tail):
        locked = next(line for line in tail if "LOCK TABLE" in line).split("LOCK TABLE ", 1)[1].split(" IN ")[0]
        if len(locked) > 200:  # pg_dump locks its tables in batches: one of them is held
            locked = locked[:200] + "..."
        raise InUseError(f"another session holds a lock on a table of database {url.database!r} (pg_dump waited "
                         f"{lock_wait:g} s to lock {locked})", hint="wait for that session to end, then back up again; "
                         + _LOCK_HINT)
    if what == "pg_dump" and "server version mismatch" in said:
        raise ToolkitError(f"pg_dump cannot dump this server: {said}",
                           hint="install a pg_dump of the server's major version or newer")
    if what == "pg_restore" and ("could not read input file" in said or "end of file" in said or "unexpected end" in said):
        raise UsageError(f"{file} is truncated or damaged ({said.removeprefix('pg_restore: error: ')}); nothing was changed",
                         hint="restore another backup")
    suffix = "; nothing was changed (the restore runs in one transaction)" if what == "pg_restore" else ""
    raise ToolkitError(f"{what} failed ({code}): {said}{suffix}", detail=redact("\n".join(tail), (url.password,)))
