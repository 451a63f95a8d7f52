"""File permissions that never open a window: secrets 0600 from their first byte, and access for the
embedded server's system user granted to that user alone (a POSIX ACL entry), never to "others".
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

from toolkit.errors import ToolkitError

# Linux's system.posix_acl_access xattr: a version header, then (tag, perm, id) entries sorted by tag, id
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_X = 0o1


def write_private(path: Path, text: str, *, uid: int | None = None, gid: int | None = None) -> None:
    """Create ``path`` 0600 (given to ``uid``/``gid`` before any byte is in it) and write ``text``.

    An existing file is replaced: a file someone else made (perhaps readable, perhaps a symlink) is
    never written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if uid is not None:
            os.fchown(fd, uid, gid if gid is not None else -1)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def replace_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once, 0600: see ``replace_file``."""
    replace_file(path, text.encode())


def check_replaceable(path: Path, what: str) -> os.stat_result | None:
    """``path``'s stat when it is a regular file, None when nothing is there; ConfigError for anything
    else (a device, a FIFO, a directory): replacing ``/dev/null`` by a file, or reading a FIFO that never
    ends, is never what the user meant. ``what`` names the file in the message."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (the write says why it cannot create it)
        return None
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return st
    from toolkit.errors import ConfigError

    raise ConfigError(f"{what} {path} is not a regular file (a device, FIFO or directory): the toolkit replaces "
                      "that file when it writes it", hint="point it at a file of its own")


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` at once: a temp file beside it (0600 from its first byte, ``mode``
    once written), flushed to disk, renamed over it. A reader never sees half a file, a crash leaves the
    old file or the new one, and a symlink in its place is replaced, never written through. Run as root
    on someone else's file, the new file keeps that owner (the user must still read their own file).
    Anything but a regular file in the way is refused (``check_replaceable``)."""
    import tempfile  # not at start-up: settings import this module

    previous = check_replaceable(path, "the file")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        if previous is not None and stat.S_ISREG(previous.st_mode) and previous.st_uid != os.geteuid() \
                and os.geteuid() == 0:
            os.fchown(fd, previous.st_uid, previous.st_gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_private(path: Path) -> str:
    """The text of a secret file that must be ours: never read through a symlink, nor from a file
    another user owns (they could have planted it to learn what we do with its content)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(fd).st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "it belongs to another user")
        return handle.read().decode("utf-8", "replace").strip()


def read_bounded(path: Path, limit: int = 64 * 1024, *, start: int = 0) -> str:
    """Up to ``limit`` bytes of a file another user may control (postmaster.pid and the server's log
    are the server's user's, or were), from ``start`` (negative: that far before the end): never
    through a symlink, never blocking on a FIFO; "" for anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size + start) if start < 0 else start, os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def open_private_log(path: Path) -> int:
    """An append-only fd on ``path``, 0600 (an older log made world-readable is tightened). A symlink
    in its place (planted when the directory was another user's) is removed, never written through."""
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


def grant_traverse(path: Path, uid: int) -> None:
    """Let user ``uid`` traverse ``path`` and each of its parents (as written and as resolved: a
    symlinked state dir or checkout is walked both ways), adding an ACL entry for that user alone where
    it could not already. No one else's effective permissions change: the "others" bits are never
    touched, and when the ACL mask must grow, every other entry it covers is clamped to what it was."""
    chains = [path, *path.parents, *(p for p in [path.resolve(), *path.resolve().parents])]
    for directory in dict.fromkeys(chains):
        st = directory.stat()
        if st.st_uid == uid:
            continue
        try:
            _acl_add_execute(directory, uid, st.st_mode)
        except OSError as exc:
            raise ToolkitError(
                f"cannot let the system user (uid {uid}) traverse {directory}: {exc.strerror or exc}",
                hint=f"grant it (setfacl -m u:{uid}:x {directory}), or keep the state dir and the venv "
                "under a directory it can reach") from None


def _acl_add_execute(directory: Path, uid: int, mode: int) -> None:
    try:
        entries = _acl_parse(os.getxattr(directory, _ACL_XATTR))
    except OSError as exc:
        if exc.errno != errno.ENODATA:  # ENODATA: no ACL, only the mode bits
            raise
        if mode & _X:
            return  # "others" may traverse: so may the user
        entries = {(_USER_OBJ, _NO_ID): (mode >> 6) & 7, (_GROUP_OBJ, _NO_ID): (mode >> 3) & 7,
                   (_OTHER, _NO_ID): mode & 7}
    mask = entries.get((_MASK, _NO_ID))
    current = entries.get((_USER, uid))
    if current is None and entries[(_OTHER, _NO_ID)] & _X:
        return  # no entry of its own: "others" applies, and lets it through
    if current is not None and current & _X and (mask is None or mask & _X):
        return
    if mask is not None:
        # a mask that grows would revive what it masked for the owning group and named entries: clamp
        # each to what it had in effect, so that only our entry gains anything
        for key, perm in entries.items():
            if key[0] in (_USER, _GROUP_OBJ, _GROUP):
                entries[key] = perm & mask
    # ours too: it gains x, nothing the mask denied it before
    entries[(_USER, uid)] = ((current or 0) & (mask if mask is not None else 7)) | _X
    group_class = [perm for (tag, _), perm in entries.items() if tag in (_USER, _GROUP_OBJ, _GROUP)]
    # the smallest mask that lets every (clamped) entry keep exactly what it had, and ours x
    entries[(_MASK, _NO_ID)] = _union(group_class)
    data = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items()))
    os.setxattr(directory, _ACL_XATTR, data)


def _union(perms: list[int]) -> int:
    result = 0
    for perm in perms:
        result |= perm
    return result


def _acl_parse(data: bytes) -> dict[tuple[int, int], int]:
    (version,) = struct.unpack_from("<I", data)
    if version != _ACL_VERSION:
        raise OSError(f"unknown ACL version {version}")
    return {(tag, ident): perm for tag, perm, ident in struct.iter_unpack("<HHI", data[4:])}
