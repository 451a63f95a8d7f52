"""Engines room: Postgres+pgvector in a Docker container, through the Docker SDK.

What ``db/run_postgres.sh`` did by hand, with what it lacked: the port published on 127.0.0.1 only
(``--bind`` to widen it), readiness through ``health.py`` plus the container's own state (an exiting
or restarting container fails the wait at once, with its log tail), no ``--rm`` (a failed start leaves
a container to inspect), labels so the toolkit only ever touches its own containers and volumes.

Inside the server, bootstrap's statements (toolkit/bootstrap.py, the same for every engine) run as
a psql script through the official image's contract: copied into ``/docker-entrypoint-initdb.d``
before the first start, the superuser creates the application role (not a superuser), its database
and the ``vector`` extension over the container's socket, before the port ever answers. The same
script runs through ``docker exec`` when an existing volume lacks them. The superuser's password is
random and never kept, so nothing reaches the superuser from outside the container.

Progress (an image pull or build, a container recreated) goes to the caller's ``progress`` callback.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

from toolkit import __version__, bootstrap, state
from toolkit.engines.base import Admin, Choice, Endpoint, EngineStatus, Progress, quiet
from toolkit.engines.docker_image import OFFLINE_IMAGE
from toolkit.errors import (
    EngineUnavailableError,
    ImageUnavailableError,
    InUseError,
    NotReadyError,
    ToolkitError,
    UsageError,
    error_line,
)
from toolkit.health import PgProbe, Transient, wait_ready
from toolkit.ports import check_free, connect_host, in_use_error, own_port, port_holder, port_is_free
from toolkit.settings import DbParams, Settings

LABEL = "com.toolkit"  # label prefix: .managed, .project, .version, .config
DATA_DIR = "/var/lib/postgresql/data"
SUPERUSER = "postgres"
STOP_TIMEOUT = 30
PING_TIMEOUT = 3  # seconds; `toolkit up` with engine auto pays it when no engine answers
BUILD_IMAGE = "memgpt-pg-test:latest"  # `toolkit up --build` (the seed's pg-test)
ASIDE = "-replaced"  # suffix of a container kept aside while its replacement starts
# the container's environment variables that carry bootstrap's values (psql variable -> variable)
ENV_OF = {"toolkit_user": "TOOLKIT_APP_USER", "toolkit_password": "TOOLKIT_APP_PASSWORD", "toolkit_database": "TOOLKIT_APP_DB"}

# Sourced by the image's entrypoint on first start (or run through `docker exec sh -c`): the superuser,
# over the local socket, runs bootstrap's statements (toolkit/bootstrap.py). Values come from the
# environment into psql variables, so psql quotes them (:'x' literal, :"x" identifier) and no password
# sits in the script. psql reads each through printf, a shell builtin: a value is never in any
# process's argv (`ps` on the host lists the container's processes too).
def superuser_psql_sh(sql: str, env_of: Mapping[str, str], *, options: str = "-v ON_ERROR_STOP=1 -q") -> str:
    """A shell script running ``sql`` through psql as the image's superuser on the maintenance database, each
    psql variable ``var`` of ``env_of`` read from the environment variable it maps to."""
    return ("psql " + options + ' --username "${POSTGRES_USER:-postgres}" --dbname ' + bootstrap.MAINTENANCE_DB
            + " <<'EOSQL'\n"
            + "".join(f'\\set {var} `printf %s "${env}"`\n' for var, env in env_of.items())
            + sql + "EOSQL\n")


BOOTSTRAP_SH = ("# toolkit bootstrap: application role (not a superuser), its database, the vector extension\n"
                + superuser_psql_sh(bootstrap.psql_script(),
                                    {var: ENV_OF[var] for var in bootstrap.psql_variables(DbParams())}))


def docker_host() -> str:
    """Where the SDK will connect, for messages: DOCKER_HOST, else the active docker context."""
    # DOCKER_HOST / DOCKER_CONTEXT are Docker's own variables; we honour them exactly as the CLI does
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_context(os.environ.get("DOCKER_CONTEXT"))
        if context is not None and context.Host:
            return str(context.Host)
    except Exception:  # noqa: BLE001 - a broken context file: fall back to the default socket
        pass
    return "unix:///var/run/docker.sock"


_UNREACHABLE: dict[str, tuple[float, str]] = {}  # docker host -> when and why its ping failed, in this process
UNREACHABLE_FOR = 10.0  # seconds a failed ping stands for (one command's worth; a library user may retry later)


def _reason(exc: BaseException) -> str:
    """One line saying why no engine answers."""
    host = docker_host()
    text = str(exc)
    where = host.removeprefix("unix://")
    if "FileNotFoundError" in text or "No such file" in text:
        return f"no Docker engine: {where} does not exist (is Docker installed and dockerd running?)"
    if "PermissionError" in text or "Permission denied" in text:
        return f"permission denied on {where} (add your user to the docker group, or use sudo)"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return f"the Docker daemon at {host} is not running (connection refused)"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"the Docker daemon at {host} did not answer within {PING_TIMEOUT}s"
    return f"the Docker engine at {host} does not answer: {error_line(exc)}"


def client(timeout: float = 60) -> Any:
    """A Docker SDK client honouring DOCKER_HOST and the active docker context; raises with the reason."""
    try:
        import docker
    except ImportError:
        raise EngineUnavailableError("the docker Python package is not installed", hint="run `make venv`") from None
    host = docker_host()
    failed = _UNREACHABLE.get(host)
    if failed and time.monotonic() - failed[0] < UNREACHABLE_FOR:  # asked a moment ago: a ping would cost its timeout again
        raise EngineUnavailableError(failed[1], hint="start Docker, or use --engine embedded")
    try:
        # version "auto" asks the daemon for its API version: that round trip is the ping, with the short
        # timeout (a socket that accepts but never answers must not cost a minute); later calls get `timeout`
        api = docker.from_env(timeout=min(timeout, PING_TIMEOUT))
    except Exception as exc:  # noqa: BLE001 - every failure here means "no usable engine"
        reason = _reason(exc)
        _UNREACHABLE[host] = (time.monotonic(), reason)
        raise EngineUnavailableError(reason, hint="start Docker, or use --engine embedded") from None
    api.api.timeout = timeout
    return api


def docker_available(settings: Settings | None = None) -> str | None:
    """None when a Docker engine answers a ping, else the one-line reason (for engine auto)."""
    try:
        client(timeout=PING_TIMEOUT).close()
    except EngineUnavailableError as exc:
        return exc.message
    return None


def volume_exists(settings: Settings) -> bool | None:
    """Does the settings' volume exist? None when no engine answers, or it fails."""
    from docker.errors import NotFound

    try:
        api = client(timeout=PING_TIMEOUT)
    except EngineUnavailableError:
        return None
    try:
        api.volumes.get(settings.volume)
        return True
    except NotFound:
        return False
    except Exception:  # noqa: BLE001 - a daemon error: unknown, like no daemon
        return None
    finally:
        api.close()


def image_unobtainable(settings: Settings) -> str | None:
    """None when ``up`` could have the settings' image (it is here, the toolkit builds it, or the registry
    has it: asked without pulling), else why not, in the words ``up`` would fail with. For doctor."""
    from docker.errors import ImageNotFound

    image = settings.image
    try:
        api = client(timeout=10)
    except EngineUnavailableError as exc:
        return exc.message
    try:
        try:
            api.images.get(image)
            return None
        except ImageNotFound:
            if image == OFFLINE_IMAGE:
                return None  # up builds it
        api.api.inspect_distribution(image)
        return None
    except Exception as exc:  # noqa: BLE001 - offline, unknown image, a daemon error: up would fail the same way
        return f"image {image} is not here and pulling it failed: {error_line(exc)}"
    finally:
        api.close()


def container_publishing(settings: Settings, port: int) -> tuple[str, str | None] | None:
    """The running container publishing ``port`` (its name, and the toolkit project it belongs to, if any);
    None when none does or no engine answers. For doctor: docker-proxy holds the port, the container is who."""
    try:
        api = client(timeout=PING_TIMEOUT)
    except EngineUnavailableError:
        return None
    try:
        found = _publishing(api, port)
    except Exception:  # noqa: BLE001 - best effort, as the OS's process table
        return None
    finally:
        api.close()
    return (found.name, found.labels.get(f"{LABEL}.project")) if found is not None else None


def _publishing(api: Any, port: int) -> Any:
    """The running container that publishes ``port`` on this machine, or None."""
    for container in api.containers.list():
        for bindings in (container.ports or {}).values():
            if any(str(b.get("HostPort")) == str(port) for b in bindings or ()):
                return container
    return None


F = TypeVar("F", bound=Callable[..., Any])


def daemon_errors(func: F) -> F:
    """A daemon that fails a request (500, a read timeout, the socket gone) is an engine that cannot run
    here, in one line: not a bug of ours (exit 70). Errors we handle are caught before they get here."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from docker.errors import APIError, DockerException
        from requests.exceptions import RequestException

        try:
            return func(*args, **kwargs)
        except (APIError, DockerException, RequestException) as exc:
            raise EngineUnavailableError(f"the Docker engine at {docker_host()} failed a request: {error_line(exc)}",
                                         hint="check `docker info` and the daemon's log, then retry") from None

    return wrapper  # type: ignore[return-value]


def labels(settings: Settings) -> dict[str, str]:
    return {f"{LABEL}.managed": "true", f"{LABEL}.project": str(settings.project_dir),
            f"{LABEL}.version": __version__}


class DockerEngine:
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = settings.db
        self._client: Any = None
        self._container: Any = None
        self._restarts = 0
        self._started = False  # this call started the container: wait for its server to say it is ready
        self._progress: Progress = quiet

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client()
        return self._client

    # --- Engine protocol -------------------------------------------------------------------------

    @daemon_errors
    def up(self, *, progress: Progress = quiet) -> Endpoint:
        self._progress = progress
        container = self._find(recover=True)
        if container is not None and container.status == "paused":
            # `docker pause` froze it: up means "make it serve" (and the port check would blame it on itself)
            container.unpause()
            container.reload()
        if container is not None and container.labels.get(f"{LABEL}.config") != self._config_key():
            self._replace(container)
        elif container is not None and container.status == "running":
            self._ready(container)
        else:
            self._check_volume_free(container)
            self._check_port()
            container = container or self._create()
            self._start(container)
            self._ready(container)
        return self.endpoint()

    def endpoint(self) -> Endpoint:
        return Endpoint(self.db.url())

    @daemon_errors
    def choose_free(self) -> list[Choice]:
        """Names and port of this project's own where nobody gave them and another holds the default
        (another checkout's ``memgpt-db-test``, a container the toolkit did not make, a volume another
        project's or a running foreign container's, a port anyone's): the default suffixed with a hash of
        the project dir (stable), a port derived the same way. An unlabelled volume by the default name
        (the seed's run_postgres.sh made it) is still adopted, as always."""
        s = self.settings
        self._check_not_moved()
        chosen: list[Choice] = []
        container = s.container
        if s.may_choose("container"):
            container, holder = self._own_name(s.container, "-", self._container_holder)
            if holder is not None:
                chosen.append(Choice("container", container, s.container, holder))
        if s.may_choose("volume"):
            volume, holder = self._own_name(s.volume, "_", lambda name: self._volume_holder(name, container))
            if holder is not None:
                chosen.append(Choice("volume", volume, s.volume, holder))
        if s.may_choose("db.port") and not self._publishes(container, self.db.port) \
                and not port_is_free(self.db.bind, self.db.port):
            found = self._container_on(self.db.port)
            holder = found[0] if found else port_holder(self.db.port) or "another process"
            chosen.append(Choice("db.port", own_port(self.db.bind, str(s.project_dir)), self.db.port, holder))
        return chosen

    def _check_not_moved(self) -> None:
        """This checkout's record names a volume whose label names a project dir that is gone: the checkout
        was moved (or renamed), and its data is in that volume. Names of its own would start an empty
        database here, and the data would seem lost: refuse, saying where it is."""
        from docker.errors import NotFound

        recorded = state.last_up(self.settings.state_dir).get("volume")
        if not recorded:
            return
        try:
            volume = self.client.volumes.get(recorded)
        except NotFound:
            return
        owner = (volume.attrs.get("Labels") or {}).get(f"{LABEL}.project")
        if owner is not None and owner != str(self.settings.project_dir) and not os.path.exists(owner):
            raise _moved("volume", recorded, owner)

    def _own_name(self, name: str, sep: str, holder: Callable[[str], str | None]) -> tuple[str, str | None]:
        """``name`` when nobody else holds it, else the first of name-<hash>, name-<hash>-2, ... that nobody
        does; and who holds ``name`` (None: nobody)."""
        held_by = holder(name)
        if held_by is None:
            return name, None
        tag = hashlib.sha256(str(self.settings.project_dir).encode()).hexdigest()[:6]
        for n in range(1, 10):
            candidate = f"{name}{sep}{tag}" + (f"{sep}{n}" if n > 1 else "")
            if holder(candidate) is None:
                return candidate, held_by
        raise InUseError(f"{name} and nine names of this project's own are held by others",
                         hint="give this project its own names with TOOLKIT_PG_CONTAINER and TOOLKIT_PG_VOLUME")

    def _container_holder(self, name: str) -> str | None:
        """Who holds the container name ``name``, when not this project."""
        from docker.errors import NotFound

        try:
            return self._foreign(self.client.containers.get(name))
        except NotFound:
            return None

    def _foreign(self, container: Any) -> str | None:
        """Who ``container`` belongs to, when not to this project."""
        owner = container.labels.get(f"{LABEL}.project")
        if container.labels.get(f"{LABEL}.managed") != "true":
            return f"a container the toolkit did not create ({container.status})"
        if owner is not None and owner != str(self.settings.project_dir):
            return f"the toolkit project at {owner}"
        return None

    def _volume_holder(self, name: str, container: str) -> str | None:
        """Who holds the volume ``name``, when not this project: another project's label, or (unlabelled) a
        running container other than ours (``container``) mounting it."""
        from docker.errors import NotFound

        try:
            volume = self.client.volumes.get(name)
        except NotFound:
            return None
        owner = (volume.attrs.get("Labels") or {}).get(f"{LABEL}.project")
        if owner == str(self.settings.project_dir):
            return None  # this project's data: never traded for an empty volume (up refuses a foreign mount)
        if owner is not None:
            return f"the toolkit project at {owner}"
        for other in self.client.containers.list(filters={"volume": name}):
            if other.name != container:
                return f"the running container {other.name}"
        return None

    def _publishes(self, name: str, port: int) -> bool:
        """Does our container ``name`` (running or paused) publish ``port``? Then the port is ours."""
        from docker.errors import NotFound

        try:
            found = self.client.containers.get(name)
        except NotFound:
            return False
        bindings = (found.ports or {}).get("5432/tcp") or ()
        return self._foreign(found) is None and any(str(b.get("HostPort")) == str(port) for b in bindings)

    @daemon_errors
    def down(self, *, purge: bool = False) -> None:
        container = self._find()
        serving = _mounted_volume(container) if container is not None else None
        if purge and serving is not None and serving != self.settings.volume:
            raise UsageError(f"container {container.name} serves volume {serving}, not TOOLKIT_PG_VOLUME="
                             f"{self.settings.volume}: --purge would delete neither what you named nor what runs",
                             hint=f"drop TOOLKIT_PG_VOLUME to purge {serving}, or `toolkit down` first, then purge "
                                  f"{self.settings.volume}")
        if container is not None:
            container.stop(timeout=STOP_TIMEOUT)
            container.remove(force=True)
        if purge:
            self._remove_volume(self.settings.volume)

    @daemon_errors
    def down_all(self, *, purge: bool = False) -> list[str]:
        """Remove every container (and with ``purge`` every volume) labelled as this project's."""
        wanted = [f"{key}={value}" for key, value in labels(self.settings).items() if not key.endswith(".version")]
        removed = []
        for container in self.client.containers.list(all=True, filters={"label": wanted}):
            if container.status == "paused":
                container.unpause()
            container.stop(timeout=STOP_TIMEOUT)  # a clean shutdown (a checkpoint), not SIGKILL's crash recovery
            container.remove(force=True)
            removed.append(f"container {container.name}")
        if purge:
            for volume in self.client.volumes.list(filters={"label": wanted}):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
        return removed

    @daemon_errors
    def status(self) -> EngineStatus:
        container = self._find()
        extra: dict[str, Any] = {"container": self.settings.container, "volume": self.settings.volume,
                                 "image": self.settings.image, "docker_host": docker_host()}
        if container is None:
            return EngineStatus(self.name, False, f"no container {self.settings.container}", extra)
        state = container.attrs["State"]
        extra.update(id=container.short_id, state=state["Status"], health=state.get("Health", {}).get("Status"),
                     image=container.attrs["Config"]["Image"], volume=_mounted_volume(container) or self.settings.volume)
        published = [b.get("HostPort") for b in (container.ports or {}).get("5432/tcp") or ()]
        if published and str(published[0]).isdigit():
            extra["port"] = int(published[0])  # where it runs, whatever the settings say now
        running = state["Status"] == "running"
        where = f"{self.db.bind}:{self.db.port}" if running else f"exit code {state.get('ExitCode')}"
        detail = f"container {container.name} ({container.short_id}) {state['Status']}, {where}, " \
                 f"volume {extra['volume']}"
        return EngineStatus(self.name, running, detail, extra)

    @daemon_errors
    def logs(self, tail: int = 100) -> str:
        container = self._container or self._find()
        if container is None or tail <= 0:
            return ""
        return str(container.logs(tail=tail).decode("utf-8", "replace"))

    def psql_argv(self, url: str) -> list[str]:
        if shutil.which("psql"):
            return ["psql", url]
        if shutil.which("docker"):
            # no local psql: the container's, over its socket (the application role, local trust)
            tty = ["-t"] if sys.stdin.isatty() else []
            return ["docker", "exec", "-i", *tty, self.settings.container, "psql", "-U", self.db.user,
                    "-d", self.db.database]
        raise EngineUnavailableError("no psql on this machine and no docker CLI to use the container's",
                                     hint="install a Postgres client (apt-get install postgresql-client)")

    def tool(self, name: str) -> str:
        # a local tool over the published port: the image's own may lack it (the official image has them,
        # the offline one only the server's), and one local tool of a fitting version serves every image
        from toolkit.engines.tools import fitting_tool

        return str(fitting_tool(name, self.endpoint().url.with_address(host=connect_host(self.db.bind))))

    @daemon_errors
    def admin(self) -> Admin:
        """A role for tests (``<user>_tests``) and a template with the ``vector`` extension, set up by the
        superuser through ``docker exec`` when missing: see toolkit/engines/docker_admin.py."""
        from toolkit.engines import docker_admin

        container = self._find()
        name = self.settings.container
        if container is None:
            raise NotReadyError(f"no container {name}: the Docker engine's server is not up",
                                hint="run `toolkit up --engine docker` first")
        if container.status != "running":
            raise NotReadyError(f"container {name} is {container.status}, not running",
                                hint="run `toolkit up --engine docker` first")
        return docker_admin.ensure(self.settings, container, self.endpoint().url)

    # --- lifecycle -------------------------------------------------------------------------------

    def _find(self, *, recover: bool = False) -> Any:
        """Our container, or None; ``recover``: finish a replacement an interrupted ``up`` left half done."""
        container = self._get(self.settings.container)
        if recover:
            aside = self._get(self.settings.container + ASIDE)
            if aside is not None and container is None:  # interrupted before its replacement existed: put it back
                aside.rename(self.settings.container)
                aside.reload()
                container = aside
            elif aside is not None:  # the replacement exists: the data is in the volume, the old container is spare
                aside.remove(force=True)
        return container

    def _get(self, name: str) -> Any:
        from docker.errors import NotFound

        try:
            container = self.client.containers.get(name)
        except NotFound:
            return None
        if container.labels.get(f"{LABEL}.managed") != "true":
            raise InUseError(f"container {container.name} exists but was not created by the toolkit; leaving it alone",
                             hint=f"remove it (docker rm -f {container.name}) or pick another name with "
                                  "TOOLKIT_PG_CONTAINER")
        self._check_project("container", container.name, container.labels)
        return container

    def _check_project(self, kind: str, name: str, found: dict[str, str]) -> None:
        """The default names are the same in every checkout: never take over another project's."""
        owner = found.get(f"{LABEL}.project")
        if owner is not None and owner != str(self.settings.project_dir):
            if not os.path.exists(owner):  # moved or renamed: its data is still labelled with the old path
                raise _moved(kind, name, owner)
            raise InUseError(
                f"{kind} {name} belongs to the toolkit project at {owner}; leaving it alone",
                hint="run `toolkit down` there, or give this project its own names with TOOLKIT_PG_CONTAINER and "
                     "TOOLKIT_PG_VOLUME" if kind == "container" else
                     "give this project its own volume with TOOLKIT_PG_VOLUME, or purge it from that project")

    def _config_key(self) -> str:
        s = self.settings
        key = "|".join(map(str, (s.image, s.volume, self.db.bind, self.db.port, self.db.user, self.db.database)))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _replace(self, old: Any) -> None:
        """Settings changed (port, image, ...): a new container on the same volume keeps the data. What the new
        one needs is checked before the old one is touched; the old one waits aside (stopped, renamed) until
        the new one is ready, and is put back, as it was, when the new one cannot start."""
        volume = _mounted_volume(old)
        moving = volume is not None and volume != self.settings.volume
        if moving and not self.settings.switch_engine:
            raise UsageError(f"container {old.name} serves volume {volume}; TOOLKIT_PG_VOLUME={self.settings.volume} "
                             "would put an empty database in its place",
                             hint=f"drop TOOLKIT_PG_VOLUME to keep using {volume}, or pass --switch-engine to serve "
                                  f"{self.settings.volume} (the data in {volume} stays there)")
        self._ensure_image()
        self._check_volume_free(old)
        published = [(b.get("HostIp"), str(b.get("HostPort"))) for b in (old.ports or {}).get("5432/tcp") or ()]
        if (self.db.bind, str(self.db.port)) not in published:
            self._check_port()
        kept = f"now serving volume {self.settings.volume}; {volume} is kept" if moving else "data kept"
        self._progress(f"recreating container {old.name} for the new settings ({kept})")
        running = old.status == "running"
        try:
            if running:
                old.stop(timeout=STOP_TIMEOUT)  # a clean shutdown first: no crash recovery at the next start
            old.rename(self.settings.container + ASIDE)
            self._container = new = self._create()
            self._start(new)
            self._ready(new)
        except BaseException:  # Ctrl-C included: the old container, under its name, as it was
            self._put_back(old, running=running)
            raise
        old.remove(force=True)

    def _put_back(self, old: Any, *, running: bool) -> None:
        """Undo a replacement at whatever step it stopped: whatever took the name since (a new container,
        possibly created by the daemon after an interrupted request returned) goes, the old one comes back."""
        from docker.errors import APIError

        name = self.settings.container
        for attempt in range(3):
            old.reload()
            if old.name == name:
                break
            taken = self._get(name)
            if taken is not None and taken.id != old.id:
                taken.remove(force=True)
            try:
                old.rename(name)
                break
            except APIError as exc:
                if exc.status_code != 409 or attempt == 2:
                    raise
        if running:
            # a stop the interrupted call had sent may still be under way in the daemon: let it finish
            # (stop waits for it, and is a no-op on a stopped container), or it would stop the one we start
            old.stop(timeout=STOP_TIMEOUT)
            old.start()

    def _ready(self, container: Any) -> None:
        """Wait until ``container`` serves the application role; create what the volume lacks (one made
        with other settings, or by the seed's script)."""
        self._container = container
        self._restarts = container.attrs.get("RestartCount", 0)
        bootstrap.ready_or_bootstrap(self._wait, self._bootstrap)

    def _create(self) -> Any:
        from docker.errors import APIError

        self._ensure_image()
        self._ensure_volume()
        db = self.db
        env = {"POSTGRES_USER": SUPERUSER, "POSTGRES_DB": bootstrap.MAINTENANCE_DB,
               # nobody needs the superuser's password: bootstrap uses the local socket
               "POSTGRES_PASSWORD": secrets.token_urlsafe(24), **_bootstrap_env(db)}
        try:
            container = self.client.containers.create(
                self.settings.image, name=self.settings.container, environment=env, detach=True,
                labels={**labels(self.settings), f"{LABEL}.config": self._config_key()},
                ports={"5432/tcp": (db.bind, db.port)},
                volumes={self.settings.volume: {"bind": DATA_DIR, "mode": "rw"}},
            )
        except APIError as exc:
            if exc.status_code != 409:
                raise
            # the name was taken a moment ago (another checkout with the default names): whose is it?
            try:
                self._find()  # raises when it is not this project's
            except ToolkitError as exc:
                raise InUseError(exc.message, hint=exc.hint) from None  # in use: `up` may choose a name of its own
            raise InUseError(f"container {self.settings.container} was created meanwhile by another toolkit process",
                             hint="run `toolkit up` again") from None
        try:
            container.put_archive("/docker-entrypoint-initdb.d", _tar({"zz-toolkit-bootstrap.sh": BOOTSTRAP_SH}))
        except BaseException:
            container.remove(force=True)  # never leave a container that would start without its bootstrap
            raise
        return container

    def _start(self, container: Any) -> None:
        from docker.errors import APIError

        try:
            container.start()
            self._started = True
        except APIError as exc:
            text = str(exc.explanation or exc)
            if "port is already allocated" in text or "address already in use" in text:
                raise in_use_error(self.db.bind, self.db.port, holder=self._container_on) from None
            raise NotReadyError(f"container {container.name} did not start: {text}",
                                hint=f"see `docker logs {container.name}`") from None
        container.reload()

    def _wait(self) -> None:
        probe = PgProbe(self.db.url(host=connect_host(self.db.bind)))

        def says_ready_then_probe() -> None:
            self._says_ready()
            probe()

        wait_ready(says_ready_then_probe, timeout=self.settings.timeout,
                   what=f"postgres (docker: {self.settings.container})", alive=self._alive, log_tail=self.logs,
                   secrets=self.settings.secrets)

    def _says_ready(self) -> None:
        """A container this call started is probed only once the server it runs last logged that it accepts
        connections: a connection while it starts up is refused with a FATAL line in its log. (The image's
        first start runs a socket-only server first; probing that one reaches nobody, so logs no FATAL.) A
        log without these lines (another language) holds nothing back."""
        started = self._container.attrs.get("State", {}).get("StartedAt", "") if self._started else ""
        if not started:
            return
        import calendar

        since = calendar.timegm(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S"))
        text = self._container.logs(since=since, tail=200).decode("utf-8", "replace")
        start = text.rfind("starting PostgreSQL")
        if start >= 0 and "ready to accept connections" not in text[start:]:
            raise Transient("start", f"container {self._container.name}: the server is starting up")

    def _alive(self) -> str | None:
        container = self._container
        container.reload()
        state = container.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            return f"container {container.name} exited with code {state.get('ExitCode')}"
        if state.get("Restarting") or container.attrs.get("RestartCount", 0) > self._restarts:
            return f"container {container.name} is restarting"
        return None

    def _bootstrap(self) -> list[str]:
        """Bootstrap's statements through psql in the container, as the superuser over the local socket
        (see toolkit/bootstrap.py for why not through libpq from here); returns what it created."""
        db = self.db
        code, output = self._container.exec_run(
            ["sh", "-c", BOOTSTRAP_SH], user=SUPERUSER, environment={**_bootstrap_env(db), "POSTGRES_USER": SUPERUSER})
        text = output.decode("utf-8", "replace")
        if code != 0:
            raise NotReadyError(f"bootstrapping role {db.user!r} and database {db.database!r} failed",
                                detail=text, hint="check the settings against this volume, or start over with --purge")
        return bootstrap.created_in(text)

    # --- image, volume, port ---------------------------------------------------------------------

    def _ensure_image(self) -> None:
        from docker.errors import ImageNotFound

        image = self.settings.image
        try:
            self.client.images.get(image)
            return
        except ImageNotFound:
            pass
        if image == OFFLINE_IMAGE:
            from toolkit.engines.docker_image import build_image

            build_image(self.client, image, progress=self._progress)
            return
        pull(self.client, image, progress=self._progress)

    def _ensure_volume(self) -> None:
        from docker.errors import NotFound

        try:
            volume = self.client.volumes.get(self.settings.volume)
        except NotFound:
            # create returns an existing volume as it is: another checkout may have made it a moment ago
            volume = self.client.volumes.create(self.settings.volume, labels=labels(self.settings))
        # an unlabelled volume (the seed's run_postgres.sh made one by this name) is adopted: its data is kept
        self._check_project("volume", volume.name, volume.attrs.get("Labels") or {})

    def _check_volume_free(self, ours: Any = None) -> None:
        """Two postmasters on one data directory corrupt it, and Postgres cannot tell: in each container
        the other's postmaster.pid names pid 1, which is itself, so the file looks stale. A volume that a
        running container other than ours mounts (compose's, another checkout's) is never mounted again."""
        for other in self.client.containers.list(filters={"volume": self.settings.volume}):
            if ours is not None and other.id == ours.id:
                continue
            project = other.labels.get("com.docker.compose.project")
            who = f"container {other.name}" + (f" of compose project {project}" if project else "")
            raise InUseError(f"volume {self.settings.volume} is mounted by the running {who}: a second server on "
                             "it would corrupt the data", hint=f"stop that one first (docker stop {other.name}), or "
                                                               "give this project its own volume with TOOLKIT_PG_VOLUME")

    def _remove_volume(self, name: str) -> None:
        from docker.errors import NotFound

        try:
            volume = self.client.volumes.get(name)
        except NotFound:
            return
        found = volume.attrs.get("Labels") or {}
        if found.get(f"{LABEL}.managed") != "true":
            raise ToolkitError(f"volume {name} was not created by the toolkit; leaving it alone",
                               hint=f"delete it yourself with `docker volume rm {name}`")
        self._check_project("volume", name, found)
        volume.remove(force=True)

    def _check_port(self) -> None:
        check_free(self.db.bind, self.db.port, holder=self._container_on)

    def _container_on(self, port: int) -> tuple[str, str] | None:
        """The running container publishing ``port``, and how to stop it."""
        found = _publishing(self.client, port)
        return (f"container {found.name}", f"`docker stop {found.name}`") if found is not None else None


def _moved(kind: str, name: str, owner: str) -> InUseError:
    """A container or volume of a project dir that is gone: most likely this checkout, moved or renamed."""
    return InUseError(f"{kind} {name} belongs to the toolkit project at {owner}, a directory that no longer exists "
                      "(was this checkout moved?)",
                      hint=f"move the checkout back to {owner} to use its database (or to copy its data out with "
                           "`toolkit migrate`); TOOLKIT_PG_VOLUME=another-name starts an empty database here")


def _bootstrap_env(db: DbParams) -> dict[str, str]:
    """bootstrap's values, in the variables BOOTSTRAP_SH hands psql."""
    return {ENV_OF[var]: value for var, value in bootstrap.psql_variables(db).items()}


def _mounted_volume(container: Any) -> str | None:
    """The volume a container holds its data in (what it serves, whatever the settings say now)."""
    mounts = container.attrs.get("Mounts") or ()
    return next((m.get("Name") for m in mounts if m.get("Destination") == DATA_DIR and m.get("Type") == "volume"), None)


def pull(api: Any, image: str, progress: Progress = quiet) -> None:
    """Pull, reporting a live total (at most every 0.2 s) and a line per finished layer; one line with the
    way out when it fails."""
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    layers: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    last = 0.0
    try:
        for event in api.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise RuntimeError(event["error"])
            layer, status = event.get("id", ""), event.get("status", "")
            detail = event.get("progressDetail") or {}
            if detail.get("total"):
                layers[layer] = (detail.get("current", 0), detail["total"])
            finished = status in ("Pull complete", "Already exists") and layer not in done
            if finished:
                done.add(layer)
            now = time.monotonic()
            if finished or now - last > 0.2:
                last = now
                got = sum(layers[k][1] if k in done else layers[k][0] for k in layers) / 1e6
                total = sum(t for _, t in layers.values()) / 1e6
                progress(f"pulling {image}: {len(done)} layers done, {got:.1f}/{total:.1f} MB", live=not finished)
        api.images.get(image)
        progress(f"pulled {image}")
    except Exception as exc:  # noqa: BLE001 - offline, rate limit, unknown image: the same way out
        raise ImageUnavailableError(
            f"image {image} is not here and pulling it failed: {error_line(exc)}",
            hint=f"no registry? build one locally with `toolkit image build`, then use --image {OFFLINE_IMAGE} "
                 "(or TOOLKIT_PG_IMAGE)") from None


def build_for_up(settings: Settings, *, base: str | None = None, tag: str = BUILD_IMAGE) -> Settings:
    """`toolkit up --build`: the settings to run the freshly built db/Dockerfile image with."""
    from dataclasses import replace

    if settings.engine not in ("auto", "docker"):
        raise UsageError(f"--build needs the docker engine, not {settings.engine!r}", hint="drop --engine or use docker")
    return replace(settings, image=build_db_image(settings, base=base, tag=tag), engine="docker")


def build_db_image(settings: Settings, *, base: str | None = None, tag: str = BUILD_IMAGE) -> str:
    """`toolkit up --build`: build db/Dockerfile (the seed's pg-test image); returns the tag."""
    from pathlib import Path

    from docker.errors import APIError, BuildError

    for root in (settings.project_dir, Path(__file__).resolve().parents[2]):
        if (root / "db" / "Dockerfile").is_file():
            break
    else:
        raise ToolkitError("no db/Dockerfile in the project", hint="run from the toolkit checkout")
    api = client()
    try:
        api.images.build(path=str(root / "db"), tag=tag, rm=True, buildargs={"BASE": base} if base else None,
                         labels={f"{LABEL}.version": __version__})
    except (BuildError, APIError) as exc:
        raise EngineUnavailableError(f"building db/Dockerfile failed: {getattr(exc, 'msg', exc)}",
                                     hint=f"no registry? `toolkit image build` and --image {OFFLINE_IMAGE}") from None
    return tag


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
