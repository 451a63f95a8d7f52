"""Configuration, resolved once: flags > environment (``TOOLKIT_*``) > ``.env`` > what the last ``toolkit up``
here used (``RECORDED``: its port, Docker names, database parameters) > defaults (the Chroma port: that of
the toolkit's Chroma server running here, then 8000). ``sources`` says where each value came from, so a
value the toolkit itself wrote into .env (``toolkit s3 up``'s endpoint) is not taken for the user's choice.

``resolve()`` builds one frozen ``Settings``; nothing else in the package reads ``os.environ`` for
toolkit settings. To add a setting, add a field to ``Settings`` and one row to ``FIELDS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from toolkit import exports
from toolkit.errors import ConfigError, UsageError
from toolkit.state import exported, last_up
from toolkit.urls import PgUrl

ENGINES = ("auto", "docker", "embedded", "external")
RUNNING_SERVER = "the toolkit's running {} server"  # the source of a port taken from a server's pid file
WRITTEN_BY_TOOLKIT = "{} (written by the toolkit)"  # the source of a .env value a toolkit command wrote
LAST_UP = "last `toolkit up`"  # the source of a value the last `toolkit up` here used
CHOSEN = "chosen by `toolkit up`"  # a default another project or server held: this project's own


@dataclass(frozen=True)
class DbParams:
    """The database the engines must provide (its role, password, name, address); defaults are the
    seed's ``run_postgres.sh``. Not to be confused with a store ``Spec`` (where archival data lives)."""

    user: str = "memgpt"
    password: str = "memgpt"
    database: str = "memgpt"
    host: str = "localhost"  # host written into the URL
    port: int = 8888
    bind: str = "127.0.0.1"  # address the server listens on

    def url(self, host: str | None = None, port: int | None = None) -> PgUrl:
        return PgUrl(self.user, self.password, host or self.host, port or self.port, self.database)


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    env_file: Path
    state_dir: Path
    db: DbParams = field(default_factory=DbParams)
    engine: str = "auto"
    external_url: str | None = None  # engine "external": an already-running server
    timeout: float = 60.0
    image: str = "pgvector/pgvector:pg16"
    container: str = "memgpt-db-test"
    volume: str = "memgpt_db_test"
    chroma_host: str = "127.0.0.1"
    chroma_port: int = 8000
    chroma_path: Path | None = None  # None: state_dir / "chroma"
    lancedb_uri: str | None = None  # None: project_dir / ".lancedb"
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_allow_http: bool = False
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    memgpt_config: Path | None = None  # None: ~/.memgpt/config
    archival_format: str = "auto"  # auto | memgpt | current: what new Chroma/LanceDB data is written as
    clients_dir: Path | None = None  # None: state_dir / "clients" (isolated envs of older clients)
    switch_engine: bool = False  # up: start an engine other than the one holding the data (an empty database)
    export: tuple[str, ...] = exports.DEFAULT  # the clients whose variables up writes and env prints (exports.py)

    # where each value came from ("flag", "environment", ".env", a record of the toolkit's: RUNNING_SERVER,
    # WRITTEN_BY_TOOLKIT, LAST_UP, CHOSEN); a default has none. For `toolkit status`/doctor, and to tell the
    # user's choice
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # recorded values that the last `up` chose itself (defaults, or its own when a default was held)
    chosen: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)

    def user_chose(self, *names: str) -> bool:
        """Did the user give any of these settings (a flag, the environment, a line of .env the toolkit
        did not write)? A server at an address the user chose may be used whoever started it; at the
        toolkit's defaults only a server the toolkit started here may be."""
        return any(self.sources.get(name) in ("flag", "environment", self.env_file.name) for name in names)

    def with_db(self, **changes: Any) -> Settings:
        return replace(self, db=replace(self.db, **changes))

    def may_choose(self, name: str) -> bool:
        """May ``up`` replace this value when another server or project holds it? Only when nobody gave
        it: a default, or a value an earlier ``up`` chose the same way. A given value is never replaced."""
        return name not in self.sources or name in self.chosen

    def value(self, name: str) -> Any:
        return getattr(self.db, name[3:]) if name.startswith("db.") else getattr(self, name)

    def choosing(self, values: Mapping[str, Any]) -> Settings:
        """These settings with ``values`` (field names) that ``up`` chose, marked as chosen."""
        top = {k: v for k, v in values.items() if not k.startswith("db.")}
        db = replace(self.db, **{k[3:]: v for k, v in values.items() if k.startswith("db.")})
        return replace(self, db=db, sources={**self.sources, **dict.fromkeys(values, CHOSEN)},
                       chosen=self.chosen | set(values), **top)

    def recorded(self, engine: str) -> tuple[dict[str, Any], list[str]]:
        """What ``state.record_up`` keeps of these settings for ``engine``: its values by record key (the
        password only when not the default; Docker's names only for Docker), and the keys chosen."""
        values = {key: self.value(name) for name, key in RECORDED.items()
                  if engine == "docker" or name not in DOCKER_ONLY}
        if values.get("password") == DbParams.password:
            del values["password"]
        return values, [RECORDED[name] for name in RECORDED if RECORDED[name] in values and self.may_choose(name)]

    @property
    def chroma_dir(self) -> Path:
        return self.chroma_path or self.state_dir / "chroma"

    @property
    def clients_path(self) -> Path:
        return self.clients_dir or self.state_dir / "clients"

    @property
    def lancedb_location(self) -> str:
        return self.lancedb_uri or str(self.project_dir / ".lancedb")

    @property
    def memgpt_config_path(self) -> Path:
        return self.memgpt_config or Path.home() / ".memgpt" / "config"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in output. URL passwords are always masked by pattern; a
        password equal to the role or database name (the seed's memgpt/memgpt) is not masked as free
        text, or every mention of the role would vanish too."""
        password = self.db.password if self.db.password not in (self.db.user, self.db.database) else None
        return tuple(s for s in (password, self.s3_secret_access_key) if s)


# Each parser's ValueError says what is wrong with the value in a few words; the message adds the
# setting's help after "expected", so the words must not say it again (nor Python's own words: "invalid
# literal for int() with base 10").

def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError("not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError("not a port number (1-65535)")
    return port


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a number") from None
    if not number > 0:  # also NaN
        raise ValueError("not greater than 0")
    return number


def _engine(value: str) -> str:
    if value not in ENGINES:
        raise ValueError("no such engine")
    return value


def _format(value: str) -> str:
    if value.strip().lower() not in ("auto", "memgpt", "current"):
        raise ValueError("no such format")
    return value.strip().lower()


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not true or false (nor 1/0, yes/no, on/off)")


def _nonempty(value: str) -> str:
    if not value:
        raise ValueError("no value")
    return value


def _app_user(value: str) -> str:
    # the engines make "postgres" the superuser: an application role by that name would be the superuser
    # itself, with the application's password (COPY TO PROGRAM runs shell commands)
    if _nonempty(value) == "postgres":
        raise ValueError("that is the superuser's name")
    return value


@dataclass(frozen=True)
class Field:
    name: str  # "db.port" for DbParams fields
    env: str  # environment / .env variable
    parse: Callable[[str], Any] = str
    help: str = ""
    # an empty variable means "unset" (CI templates expand missing values to ""), except where an empty
    # value can only be a mistake that must not silently become the default (an empty password)
    empty_is_unset: bool = True

    def given_in(self, values: Mapping[str, str]) -> bool:
        return self.env in values and (values[self.env] != "" or not self.empty_is_unset)


FIELDS: tuple[Field, ...] = (
    Field("engine", "TOOLKIT_ENGINE", _engine, "auto | docker | embedded | external"),
    Field("db.user", "TOOLKIT_PG_USER", _app_user, "application role, not postgres (default memgpt)"),
    Field("db.password", "TOOLKIT_PG_PASSWORD", _nonempty, "its password, not empty (default memgpt)",
          empty_is_unset=False),
    Field("db.database", "TOOLKIT_PG_DATABASE", _nonempty, "database name (default memgpt)"),
    Field("db.port", "TOOLKIT_PG_PORT", _port, "port on this machine (default 8888)"),
    Field("db.host", "TOOLKIT_PG_HOST", _nonempty, "host written into the URL (default localhost)"),
    Field("db.bind", "TOOLKIT_PG_BIND", _nonempty, "address the server listens on (default 127.0.0.1)"),
    Field("external_url", "TOOLKIT_PG_URL", _nonempty, "engine external: URL of a running server"),
    Field("timeout", "TOOLKIT_TIMEOUT", _positive_float,
          "seconds to wait for readiness, and for a table lock in backup/restore (default 60)"),
    Field("state_dir", "TOOLKIT_STATE_DIR", Path, "data, logs, pid files (default ./.toolkit)"),
    Field("image", "TOOLKIT_PG_IMAGE", _nonempty, "Docker image (default pgvector/pgvector:pg16)"),
    Field("container", "TOOLKIT_PG_CONTAINER", _nonempty, "Docker container (default memgpt-db-test)"),
    Field("volume", "TOOLKIT_PG_VOLUME", _nonempty, "Docker volume (default memgpt_db_test)"),
    Field("chroma_host", "TOOLKIT_CHROMA_HOST", _nonempty, "Chroma server host (default 127.0.0.1)"),
    Field("chroma_port", "TOOLKIT_CHROMA_PORT", _port, "Chroma server port (default 8000)"),
    Field("chroma_path", "TOOLKIT_CHROMA_PATH", Path, "Chroma data dir (default ./.toolkit/chroma)"),
    Field("lancedb_uri", "TOOLKIT_LANCEDB_URI", _nonempty, "LanceDB dir or s3:// URI (default ./.lancedb)"),
    Field("s3_endpoint", "TOOLKIT_S3_ENDPOINT", _nonempty, "S3-compatible endpoint URL for LanceDB"),
    Field("s3_region", "TOOLKIT_S3_REGION", _nonempty, "S3 region"),
    Field("s3_allow_http", "TOOLKIT_S3_ALLOW_HTTP", _bool, "allow plain-http S3 endpoints"),
    Field("s3_access_key_id", "AWS_ACCESS_KEY_ID", _nonempty, "S3 access key"),
    Field("s3_secret_access_key", "AWS_SECRET_ACCESS_KEY", _nonempty, "S3 secret key"),
    Field("memgpt_config", "MEMGPT_CONFIG_PATH", Path, "MemGPT config file (default ~/.memgpt/config)"),
    Field("archival_format", "TOOLKIT_ARCHIVAL_FORMAT", _format,
          "auto | memgpt | current: format of new Chroma/LanceDB data (default auto)"),
    Field("clients_dir", "TOOLKIT_CLIENTS_DIR", Path, "isolated envs of older clients (default ./.toolkit/clients)"),
    Field("switch_engine", "TOOLKIT_SWITCH_ENGINE", _bool,
          "up: start another engine than the one holding the data, with an empty database"),
    Field("export", "TOOLKIT_EXPORT", exports.parse_names,
          f"a comma list of {', '.join(exports.EXPORTS)}: whose variables up writes and env prints (default memgpt)"),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
# what `toolkit up` records and later commands use, below .env (setting -> key in the state record); not the
# bind address: a server exposed to the network with --bind once is not exposed again by a plain `up`
RECORDED = {"db.port": "port", "db.user": "user", "db.password": "password", "db.database": "database",
            "db.host": "host", "container": "container", "volume": "volume", "image": "image"}
DOCKER_ONLY = ("container", "volume", "image")


def read_dotenv(path: Path) -> dict[str, str]:
    """The key/values of a .env file, or {} when there is none; ConfigError when it cannot be one (a
    directory, binary, not UTF-8: python-dotenv would raise UnicodeDecodeError, or pass NUL bytes on)."""
    import io

    from dotenv import dotenv_values

    fix = "save it as UTF-8 text of KEY=value lines, or move it away (or point --env-file elsewhere)"
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a .env file",
                          hint="move it away, or point --env-file (TOOLKIT_ENV_FILE) at a file")
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
                          hint=fix) from None
    if "\x00" in text:
        raise ConfigError(f"{path} is not a text file (it holds NUL bytes)", hint=fix)
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def resolve(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    project_dir: Path | None = None,
) -> Settings:
    """Resolve every setting once. ``flags`` maps field names (``db.port``) to values; None means unset."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ

    root = Path(flags.pop("project_dir", None) or environ.get("TOOLKIT_PROJECT_DIR") or project_dir or Path.cwd())
    root = root.expanduser().absolute()
    env_file = Path(flags.pop("env_file", None) or environ.get("TOOLKIT_ENV_FILE") or root / ".env").expanduser()
    if not env_file.is_absolute():
        env_file = root / env_file
    dotenv = read_dotenv(env_file)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in FIELDS:
        if setting.name in flags:
            raw, origin = flags.pop(setting.name), "flag"
        elif setting.given_in(environ):
            raw, origin = environ[setting.env], "environment"
        elif setting.given_in(dotenv):
            raw, origin = dotenv[setting.env], str(env_file.name)
        else:
            continue
        try:
            value = setting.parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            where = "--" + setting.name.split(".")[-1].replace("_", "-") if origin == "flag" else f"{setting.env} ({origin})"
            raise UsageError(f"invalid value {raw!r} for {where}: {exc}",
                             hint=f"expected {setting.help}") from None
        values[setting.name] = value
        sources[setting.name] = origin
    if flags:
        raise UsageError(f"unknown setting(s): {', '.join(sorted(flags))}")

    state_dir = Path(values.pop("state_dir", root / ".toolkit")).expanduser()
    if not state_dir.is_absolute():
        state_dir = root / state_dir
    record = last_up(state_dir)
    chosen = set()
    for name, key in RECORDED.items():
        # below .env, above the default: what the last `toolkit up` here used (its server's)
        if name in values or key not in record:
            continue
        try:
            value = FIELD_BY_NAME[name].parse(record[key]) if isinstance(record[key], str) else record[key]
        except ValueError:
            continue  # a record edited by hand: the default, as without one
        values[name], sources[name] = value, LAST_UP
        if key in record.get("chosen", ()):
            chosen.add(name)
    top = {k: v for k, v in values.items() if not k.startswith("db.")}
    if "chroma_port" not in values:
        # below .env, above the default: the port the toolkit's Chroma server of this checkout runs on
        from toolkit.services import pidfile

        running = pidfile.running(state_dir, "chroma")
        if running is not None and running.port is not None:
            top["chroma_port"], sources["chroma_port"] = running.port, RUNNING_SERVER.format("chroma")
    written = exported(state_dir)
    for setting in FIELDS:
        if sources.get(setting.name) == env_file.name and written.get(setting.env) == dotenv.get(setting.env):
            sources[setting.name] = WRITTEN_BY_TOOLKIT.format(env_file.name)
    db = DbParams(**{k[3:]: v for k, v in values.items() if k.startswith("db.")})
    for key in ("chroma_path", "memgpt_config", "clients_dir"):
        if key in top:
            path = Path(top[key]).expanduser()
            top[key] = path if path.is_absolute() else root / path
    known = {f.name for f in fields(Settings)}
    assert set(top) <= known, set(top) - known
    return Settings(project_dir=root, env_file=env_file, state_dir=state_dir, db=db, sources=sources,
                    chosen=frozenset(chosen), **top)
