"""The state directory's lifecycle lock: one ``up`` / ``down`` / purge / bootstrap at a time.

CI runners start several jobs in one checkout at once; without this, two cold ``up`` run two initdb
on one data directory. The lock is an ``flock`` on ``<state_dir>/.lock``: the kernel releases it
when its holder exits, however it exits (kill -9 included), so a stale lock cannot exist.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.errors import ConfigError, ToolkitError

POLL = 0.02


class LockTimeout(ToolkitError):
    """Another toolkit process held the state dir longer than we were willing to wait."""


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state dir (0700: it holds data, logs and secrets), or say in one line why it cannot be.

    A state dir someone else owns is refused, and one others may write is closed to them: whoever can
    plant files in it (a symlink named ``.lock``, a fake data dir) could make us write or read through
    them, as root even."""
    elsewhere = "or point --state-dir / TOOLKIT_STATE_DIR elsewhere"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        link = state_dir.lstat()
        st = state_dir.stat()
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"the state dir {state_dir} (or a parent) is a file, not a directory",
                          hint=f"move that file away, {elsewhere}") from None
    except FileNotFoundError:  # a dangling symlink
        raise ConfigError(f"the state dir {state_dir} is a symlink to nothing",
                          hint=f"create its target or remove the link, {elsewhere}") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the state dir {state_dir}: {exc.strerror or exc}",
                          hint=f"fix its permissions, {elsewhere}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the state dir {state_dir} is a file, not a directory", hint=f"move that file away, {elsewhere}")
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"the state dir {state_dir} is a symlink made by uid {link.st_uid}, not by you",
                          hint=f"remove that link (whoever made it chooses where we write), {elsewhere}")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"the state dir {state_dir} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
                          hint=f"only its owner may use it: run as that user, remove it, {elsewhere}")
    if st.st_mode & 0o002:
        raise ConfigError(f"the state dir {state_dir} is writable by every user (mode {stat.S_IMODE(st.st_mode):o}): "
                          "a shared directory, not a state dir", hint=f"use a directory of its own, {elsewhere}")
    if st.st_mode & 0o020:
        state_dir.chmod(stat.S_IMODE(st.st_mode) & ~0o020)  # ours: the group may not plant files in it


@contextmanager
def state_lock(state_dir: Path, purpose: str, *, timeout: float, name: str = ".lock") -> Iterator[None]:
    """Hold the lifecycle lock of ``state_dir`` for the block; wait up to ``timeout`` seconds for it.
    ``name``: a lock of its own (a background server's), so its up/down never wait for the database's."""
    ensure_state_dir(state_dir)
    path = state_dir / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                          hint="the state dir must be writable by you; fix its permissions, "
                               "or point --state-dir / TOOLKIT_STATE_DIR elsewhere") from None
    try:
        _acquire(fd, path, timeout)
        # who holds it, for the message a waiting process prints
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {purpose}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            holder = _holder(fd)
            raise LockTimeout(f"another toolkit process ({holder}) has held {path} for over {timeout:g}s",
                              hint="wait for it to finish, or stop it; the lock goes with its process")
        time.sleep(POLL)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return "pid unknown"
    return f"pid {text[0]}, `toolkit {' '.join(text[1:])}`" if text else "pid unknown"
