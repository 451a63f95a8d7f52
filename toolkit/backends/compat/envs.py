"""Isolated Python environments holding an older client (room: backends/compat/), built with uv on first use.

One directory per environment under the clients directory (``<state dir>/clients`` unless
``TOOLKIT_CLIENTS_DIR`` says otherwise), named by what it holds and a digest of its requirements and
of this interpreter, so a change of either builds a new one. Building happens in a scratch directory
that is renamed into place only once the client imports, under a lock: concurrent first uses build it
once, and an interrupted build leaves nothing that looks usable.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit import proc
from toolkit.errors import BackendError, MissingPackageError
from toolkit.extras import EXTRAS

READY = ".toolkit-ready"


@dataclass(frozen=True)
class ClientEnv:
    """An environment: a name for messages, what to install, and a statement that must then run."""

    name: str  # "chromadb 0.5"
    requirements: tuple[str, ...]
    probe: str  # python code run in the new environment before it counts as built
    # packages as the index had them then: the client's own dependencies unpinned upwards have since
    # broken it (chromadb 0.5's server under FastAPI 0.116+ reads every request body as a string)
    exclude_newer: str

    def directory(self, clients_dir: Path) -> Path:
        key = "\n".join((*self.requirements, self.exclude_newer, sys.version))
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return clients_dir / f"{self.name.replace(' ', '-')}-{digest}"


# chromadb 0.5.23 is what `pip install pymemgpt==0.3.25` resolves today (chromadb>=0.5,<0.6); its numpy
# pin: chromadb 0.5 predates numpy 2. 0.4.24 is the last release of the generation MemGPT 0.2 used.
CHROMA = {
    "0.4": ClientEnv("chromadb 0.4", ("chromadb==0.4.24", "numpy<2"), "import chromadb", "2024-04-30T00:00:00Z"),
    "0.5": ClientEnv("chromadb 0.5", ("chromadb==0.5.23", "numpy<2"), "import chromadb", "2025-01-15T00:00:00Z"),
}


def python(env: ClientEnv, clients_dir: Path, *, progress: Callable[[str], None] | None = None) -> Path:
    """The interpreter of ``env``, building the environment first when it is not there yet."""
    home = env.directory(clients_dir)
    if (home / READY).is_file():
        return home / "bin" / "python"
    try:
        clients_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(clients_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot create {clients_dir} for the {env.name} environment: {exc.strerror}",
                           hint="set TOOLKIT_CLIENTS_DIR (or TOOLKIT_STATE_DIR) to a writable directory") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same environment
        if not (home / READY).is_file():
            _build(env, home, progress)
    finally:
        os.close(lock)
    return home / "bin" / "python"


def _build(env: ClientEnv, home: Path, progress: Callable[[str], None] | None) -> None:
    scratch = home.with_name(f"{home.name}.building-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    for stale in home.parent.glob(f"{home.name}.building-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    if progress:
        progress(f"building the {env.name} environment in {home} (first use only)...")
    started = time.monotonic()
    uv = uv_binary()
    try:
        _step([uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(scratch)], env)
        _step([uv, "pip", "install", "--quiet", "--python", str(scratch / "bin" / "python"),
               "--exclude-newer", env.exclude_newer, *env.requirements], env)
        _step([str(scratch / "bin" / "python"), "-c", env.probe], env)
        (scratch / READY).write_text(" ".join(env.requirements) + "\n")
        shutil.rmtree(home, ignore_errors=True)  # a directory without READY: an older, broken build
        scratch.rename(home)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if progress:
        progress(f"built the {env.name} environment in {time.monotonic() - started:.1f}s")


def _step(argv: list[str], env: ClientEnv) -> None:
    done = proc.run(argv, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise BackendError(f"cannot build the {env.name} environment: {last}",
                           hint="it is installed once from the package index (PyPI): check the network, "
                                "or UV_INDEX_URL for a mirror")


def uv_binary() -> str:
    """uv: from the chroma extra's wheel, else PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise MissingPackageError("the older client's environment needs the uv package, which is not installed",
                              hint=EXTRAS["chroma"].install)
