"""The Postgres+pgvector backend (room: backends/): MemGPT's ``memgpt_archival_memory_agent`` layout.

Columns as MemGPT's connector creates them; embeddings live in ``vector(4096)``, zero-padded on write
and cut back to ``embedding_dim`` on read. Writes COPY (binary) straight into the table inside a
savepoint, as fast as a bulk load when the ids are new (a load, a migration); when one exists already,
the savepoint is rolled back and the batch is COPYed into a temporary table and upserted from there
(``INSERT ... ON CONFLICT (id) DO UPDATE``). psycopg 3 with the pgvector adapter; search is exact L2
(``<->``), as MemGPT orders.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from toolkit.backends import _kind
from toolkit.backends._util import StoreBase, check_encodable, dim_mismatch, dumps, matrix, to_utc, unique_by_id, uuid_or_none
from toolkit.backends.base import MAX_EMBEDDING_DIM, Filters, Passage, Spec
from toolkit.errors import BackendError, UsageError, error_line
from toolkit.urls import parse as parse_url
from toolkit.urls import redact

if TYPE_CHECKING:
    import numpy as np
    import psycopg

    from toolkit.backends.base import Prompt, Scratch, StoreLocation
    from toolkit.memgpt_config import ArchivalStorage
    from toolkit.settings import Settings

NAME = "postgres"
TITLE = "Postgres+pgvector"
MEMGPT_TYPE = "postgres"
SCHEMES = ("postgresql", "postgres", "postgresql+*")
WORD = "postgres"  # the Postgres `toolkit up` provisioned
OWN_QUERY = True
EXAMPLE = "a Postgres URL (postgresql://...)"
SERVER = "toolkit up"
SERVICE = None
EXTRA = None  # in the base install
FORMATS: dict[str, str] = {}  # one format
ALIASES: dict[str, str] = {}
URL_ENV = "PGVECTOR_TEST_DB_URL"
_EXAMPLE_URL = "postgresql+pg8000://{user}:{password}@{ip}:5432/{database}"  # as `memgpt configure` shows it

COLUMNS = ("id", "user_id", "text", "doc_id", "agent_id", "data_source", "embedding", "embedding_dim",
           "embedding_model", "metadata_", "created_at")
TYPES = ("uuid", "uuid", "varchar", "uuid", "uuid", "varchar", "vector", "int8", "varchar", "json", "timestamptz")
DDL = """CREATE TABLE IF NOT EXISTS {table} (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, text varchar, doc_id uuid, agent_id uuid,
    data_source varchar, embedding vector(4096), embedding_dim bigint, embedding_model varchar,
    metadata_ json, created_at timestamptz DEFAULT now())"""
COPY_ROWS = 2000  # rows per COPY statement within one insert
# pg_advisory_xact_lock(LOCK_CLASS, hashtext(name)) serializes the toolkit's own DDL on one name
LOCK_CLASS = 0x746B6974  # "tkit"


# -- the backend: SPECs, MemGPT's words, checks (the Backend Protocol) -------------------------------

def open_store(location: StoreLocation) -> PostgresStore:
    return PostgresStore(location)


def parse(rest: str | None, raw: str, settings: Settings) -> Spec:
    if rest is None:  # the word: the URL `toolkit up` exported, read as any SPEC, and a Postgres one
        from toolkit import specs

        url = provisioned_url(settings).strip()
        spec = specs.parse(url, settings) if "://" in url else None  # =postgres would name itself
        if spec is None or spec.backend != NAME:
            raise UsageError(f"{URL_ENV} is {redact(url)!r}, not a Postgres URL",
                             hint="run `toolkit up` to write it, or give the URL in --from/--to")
        return spec
    return Spec(NAME, parse_url(raw).libpq)


def provisioned_url(settings: Settings) -> str:
    """The URL `toolkit up` exported: environment, then the project's .env, then the settings' defaults."""
    import os

    from toolkit.settings import read_dotenv

    url = os.environ.get(URL_ENV) or read_dotenv(settings.env_file).get(URL_ENV)
    return url or settings.db.url().render("pg8000")


def default_spec(settings: Settings) -> Spec:
    return parse(None, WORD, settings)


def render(spec: Spec) -> str:
    return parse_url(spec.location).render("pg8000")


def identity(spec: Spec) -> tuple[str, ...]:
    url = parse_url(spec.location)
    host = "127.0.0.1" if url.host in ("localhost", "::1") else url.host
    return (NAME, host, str(url.port), url.database)


def to_memgpt(spec: Spec) -> ArchivalStorage:
    from toolkit.memgpt_config import ArchivalStorage

    return ArchivalStorage("postgres", "", render(spec))


def from_memgpt(storage: ArchivalStorage, settings: Settings) -> Spec:
    from toolkit import specs

    if not storage.uri:
        raise UsageError("MemGPT config selects postgres but has no uri", hint="run `toolkit configure`")
    return specs.parse(storage.uri, settings)


def from_choice(uri: str, path: str, settings: Settings) -> Spec:
    from toolkit import specs

    return specs.parse(uri or provisioned_url(settings), settings)


def ask(uri: str | None, path: str | None, old: ArchivalStorage | None, settings: Settings,
        prompt: Prompt) -> tuple[str | None, str | None]:
    if uri is not None:
        return uri, path
    fallback = old.uri if old is not None and old.type == MEMGPT_TYPE and old.uri else provisioned_url(settings)
    answer = prompt(f"Enter postgres connection string (e.g. {_EXAMPLE_URL}) [{redact(fallback)}]", default="",
                    show_default=False)  # the default is shown redacted: never echo a password
    return answer or fallback, path


def endpoint(location: StoreLocation) -> tuple[str, int] | None:
    url = parse_url(location.location)
    return url.host, url.port


holds_nothing = _kind.not_known_empty
guarded = _kind.unguarded
describe_data = _kind.one_format


def scratch_spec(scratch: Scratch) -> Spec:
    """A database of the test's own."""
    return Spec(NAME, parse_url(scratch.database()).libpq)


class PostgresStore(StoreBase):
    name = "postgres"
    reads_while_writing = True  # another connection reads committed rows, from shared buffers

    def __init__(self, location: StoreLocation) -> None:
        self.url = parse_url(location.location)
        self.table = location.table
        self.where = f"{redact(self.url.render('plain'))} table {self.table}"
        self._conn: psycopg.Connection[Any] | None = None
        self._dim: int | None = None  # embedding_dim of the rows already in the table
        self._subvector = False  # pgvector >= 0.7: read only embedding_dim floats, not all 4096

    # -- connection ------------------------------------------------------------------------------

    @contextmanager
    def _cursor(self, *, binary: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        import psycopg

        try:
            with self._connection().cursor(binary=binary) as cur:
                yield cur
        except psycopg.OperationalError as exc:
            self.close()
            raise BackendError(f"lost the connection to Postgres at {self.where}: {error_line(exc)}",
                               hint="is it still running? `toolkit status`, then `toolkit up`") from None
        except psycopg.DataError as exc:  # SQLSTATE class 22: bad text (NUL bytes), JSON, numbers
            raise BackendError(f"Postgres rejected the data for {self.where}: {error_line(exc)}",
                               hint="check the embedding dimension and the passage fields") from None
        except psycopg.Error as exc:  # permissions, a table of another shape, a read-only server...
            raise BackendError(f"Postgres refused an operation on {self.where}: {error_line(exc)}",
                               hint="check the role's privileges and the table's layout (`toolkit psql`)") from None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        import psycopg

        try:
            conn = psycopg.connect(self.url.libpq, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise BackendError(f"cannot connect to Postgres at {redact(self.url.render('plain'))}: "
                               f"{error_line(exc)}",
                               hint="start it with `toolkit up` (or `make db-up`), or check PGVECTOR_TEST_DB_URL") \
                from None
        try:
            self._ensure_extension(conn)
            from pgvector.psycopg import register_vector

            register_vector(conn)
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            self._subvector = row is not None and _version(row[0]) >= (0, 7)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _ensure_extension(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        from toolkit.bootstrap import EXTENSION  # the statements every engine's bootstrap runs

        assert EXTENSION.exists is not None
        if conn.execute(EXTENSION.exists).fetchone():
            return
        try:
            # two first connections at once would both pass IF NOT EXISTS, and one fail on pg_extension's
            # unique index: the advisory lock (per database, as extensions are) makes the second wait
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext('extension vector'))", [LOCK_CLASS])
                conn.execute(EXTENSION.sql)
        except psycopg.errors.UniqueViolation:  # created at this moment by a client that takes no lock
            if not conn.execute(EXTENSION.exists).fetchone():
                raise
        except psycopg.Error as exc:
            raise BackendError(f"the vector extension is missing in database {self.url.database!r} "
                               f"({error_line(exc)})",
                               hint="run `toolkit up` (it creates it), or as a superuser: CREATE EXTENSION vector;") \
                from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- helpers ---------------------------------------------------------------------------------

    def _ident(self) -> Any:
        from psycopg import sql

        return sql.Identifier(self.table)

    def _sql(self, text: str, **parts: Any) -> Any:
        from psycopg import sql

        return sql.SQL(text).format(table=self._ident(), **parts)

    def _where(self, filters: Filters | None) -> tuple[Any, list[Any]]:
        from psycopg import sql

        conditions = (filters.as_dict() if filters else {})
        if not conditions:
            return sql.SQL(""), []
        clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in conditions)
        return clause, list(conditions.values())

    def _existing_dim(self, cur: psycopg.Cursor[Any]) -> int | None:
        """The dimension of the rows already stored; also checks the column is MemGPT's vector(4096)."""
        if self._dim is not None:
            return self._dim
        row = cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                          "WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
                          [self._ident().as_string(cur)]).fetchone()
        if row is None:
            return None
        if row[0] != f"vector({MAX_EMBEDDING_DIM})":
            raise BackendError(f"table {self.table} has column embedding {row[0]}, not MemGPT's "
                               f"vector({MAX_EMBEDDING_DIM})", hint="use another table (--table) or migrate it")
        found = cur.execute(self._sql("SELECT embedding_dim FROM {table} LIMIT 1")).fetchone()
        self._dim = int(found[0]) if found and found[0] is not None else None
        return self._dim

    def _create_table(self, cur: psycopg.Cursor[Any]) -> None:
        """CREATE TABLE IF NOT EXISTS, safe against another session creating it at the same moment (two
        migrations into a new table): both would pass IF NOT EXISTS and one fail on pg_type's unique index.
        Only while the table is missing, a lock held to the end of this transaction makes the others wait."""
        import psycopg

        if self._table_exists(cur):
            return
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema() || '.' || %s))",
                    [LOCK_CLASS, self.table])
        try:
            with cur.connection.transaction():
                cur.execute(self._sql(DDL))
        except psycopg.errors.UniqueViolation:  # created at this moment by a client that takes no lock
            if not self._table_exists(cur):
                raise

    def _table_exists(self, cur: psycopg.Cursor[Any]) -> bool:
        row = cur.execute("SELECT to_regclass(%s) IS NOT NULL", [self._ident().as_string(cur)]).fetchone()
        return bool(row and row[0])

    def _rows(self, cur: psycopg.Cursor[Any]) -> list[Passage]:
        return [_passage(row) for row in cur.fetchall()]

    # -- the Protocol ----------------------------------------------------------------------------

    def insert(self, passages: Iterable[Passage]) -> int:
        import numpy as np
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Json

        batch = unique_by_id(passages)
        if not batch:
            return 0
        vectors = matrix(batch)
        dim = vectors.shape[1]
        check_encodable(batch, f"postgres table {self.table}")  # psycopg cannot encode it
        padded = np.zeros((len(batch), MAX_EMBEDDING_DIM), dtype=np.float32)
        padded[:, :dim] = vectors
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in COLUMNS[1:])
        with self._cursor() as cur, cur.connection.transaction():
            self._create_table(cur)
            existing = self._existing_dim(cur)
            if existing is not None and existing != dim:
                raise dim_mismatch(f"postgres table {self.table}", existing, dim)

            def copy_into(target: Any) -> None:
                for start in range(0, len(batch), COPY_ROWS):
                    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, columns)) as copy:
                        copy.set_types(list(TYPES))
                        for i in range(start, min(start + COPY_ROWS, len(batch))):
                            p = batch[i]
                            copy.write_row((p.id, p.user_id, p.text, p.doc_id, p.agent_id, p.data_source, padded[i],
                                            dim, p.embedding_model, Json(p.metadata or {}, dumps=dumps),
                                            to_utc(p.created_at)))

            # new ids (the common case: a load, a migration) COPY straight into the table, as fast as a
            # raw bulk load; if any id exists already, the savepoint rolls that back and we upsert instead
            try:
                with cur.connection.transaction():
                    copy_into(self._ident())
            except psycopg.errors.UniqueViolation:
                cur.execute(self._sql("CREATE TEMP TABLE _toolkit_stage (LIKE {table}) ON COMMIT DROP"))
                copy_into(sql.Identifier("_toolkit_stage"))
                cur.execute(sql.SQL("INSERT INTO {table} ({cols}) SELECT {cols} FROM _toolkit_stage "
                                    "ON CONFLICT (id) DO UPDATE SET {updates}").format(
                    table=self._ident(), cols=columns, updates=updates))
        self._dim = dim
        return len(batch)

    def query(self, embedding: Sequence[float] | np.ndarray, k: int, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        if k <= 0 or not self.exists():
            return []
        q = np.asarray(embedding, dtype=np.float32)
        with self._cursor(binary=True) as cur:
            dim = self._existing_dim(cur)
            if dim is None:
                return []
            if q.size != dim:
                raise dim_mismatch(f"postgres table {self.table}", dim, q.size)
            padded = np.zeros(MAX_EMBEDDING_DIM, dtype=np.float32)
            padded[:dim] = q
            where, params = self._where(filters)
            cur.execute(self._sql("SELECT {cols} FROM {table}{where} ORDER BY embedding <-> %s LIMIT %s",
                                  cols=_select_list(self._subvector), where=where), [*params, padded, k])
            return self._rows(cur)

    def count(self, filters: Filters | None = None) -> int:
        if not self.exists():
            return 0
        where, params = self._where(filters)
        with self._cursor() as cur:
            row = cur.execute(self._sql("SELECT count(*) FROM {table}{where}", where=where), params).fetchone()
            return int(row[0]) if row else 0

    def scan(self, batch_size: int) -> Iterator[list[Passage]]:
        if not self.exists():
            return
        last: uuid.UUID | None = None
        while True:
            with self._cursor(binary=True) as cur:
                if last is None:
                    cur.execute(self._sql("SELECT {cols} FROM {table} ORDER BY id LIMIT %s", cols=_select_list(self._subvector)),
                                [batch_size])
                else:
                    cur.execute(self._sql("SELECT {cols} FROM {table} WHERE id > %s ORDER BY id LIMIT %s",
                                          cols=_select_list(self._subvector)), [last, batch_size])
                rows = self._rows(cur)
            if not rows:
                return
            yield rows
            last = rows[-1].id

    def get(self, ids: Iterable[uuid.UUID]) -> list[Passage]:
        wanted = list(dict.fromkeys(i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in ids))
        if not wanted or not self.exists():
            return []
        with self._cursor(binary=True) as cur:
            cur.execute(self._sql("SELECT {cols} FROM {table} WHERE id = ANY(%s)", cols=_select_list(self._subvector)),
                        [wanted])
            found = {p.id: p for p in self._rows(cur)}
        return [found[i] for i in wanted if i in found]

    def delete(self, ids: Iterable[uuid.UUID]) -> int:
        wanted = [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in ids]
        if not wanted or not self.exists():
            return 0
        with self._cursor() as cur:
            cur.execute(self._sql("DELETE FROM {table} WHERE id = ANY(%s)"), [wanted])
            return cur.rowcount

    def drop(self) -> None:
        with self._cursor() as cur:
            cur.execute(self._sql("DROP TABLE IF EXISTS {table}"))
        self._dim = None

    def exists(self) -> bool:
        with self._cursor() as cur:
            return self._table_exists(cur)


def _select_list(subvector: bool = False) -> Any:
    from psycopg import sql

    columns: list[Any] = [sql.Identifier(c) for c in COLUMNS]
    if subvector:  # 2.7x fewer bytes for 1536-dim rows: a scan reads at disk speed, not 4096 floats a row
        columns[COLUMNS.index("embedding")] = sql.SQL(
            f"CASE WHEN embedding_dim BETWEEN 1 AND {MAX_EMBEDDING_DIM} "
            "THEN subvector(embedding, 1, embedding_dim::int) ELSE embedding END")
    return sql.SQL(", ").join(columns)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _passage(row: tuple[Any, ...]) -> Passage:
    import numpy as np

    values = dict(zip(COLUMNS, row, strict=True))
    dim = values["embedding_dim"]
    raw = values["embedding"]
    vector = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw, dtype=np.float32)
    return Passage(id=values["id"], user_id=values["user_id"], text=values["text"],
                   doc_id=uuid_or_none(values["doc_id"]), agent_id=uuid_or_none(values["agent_id"]),
                   data_source=values["data_source"], embedding=vector[:dim] if dim else vector,
                   embedding_model=values["embedding_model"], metadata=_json(values["metadata_"]),
                   created_at=values["created_at"])


def _json(value: Any) -> dict[str, Any]:
    import json

    if value is None:
        return {}
    if isinstance(value, (bytes, str)):
        value = json.loads(value)
    return dict(value)


# -- the archival tables of a whole database (for `toolkit backup` / `restore`) ----------------------

def archival_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables in the connection's current schema with MemGPT's passage layout (every column of
    ``COLUMNS``, ``embedding`` a vector): what ``passages`` reads and ``migrate``'s checksum covers."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY(%s) "
        "AND (a.attname <> 'embedding' OR format_type(a.atttypid, NULL) = 'vector') "
        "GROUP BY c.relname HAVING count(*) = %s ORDER BY c.relname", [list(COLUMNS), len(COLUMNS)]).fetchall()
    return [row[0] for row in rows]


def passages(conn: psycopg.Connection[Any], table: str, batch_size: int = 1000) -> Iterator[list[Passage]]:
    """Every passage of ``table`` (one of ``archival_tables``), in batches, through a server-side cursor in
    the connection's transaction (``conn`` must not be in autocommit: a backup reads in the snapshot
    pg_dump dumps). The vector adapter is registered on ``conn``."""
    from pgvector.psycopg import register_vector
    from psycopg import sql

    register_vector(conn)
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    subvector = row is not None and _version(row[0]) >= (0, 7)
    query = sql.SQL("SELECT {cols} FROM {table}").format(cols=_select_list(subvector), table=sql.Identifier(table))
    with conn.cursor(name="toolkit_passages", binary=True) as cur:
        cur.execute(query)
        while rows := cur.fetchmany(batch_size):
            yield [_passage(row) for row in rows]
