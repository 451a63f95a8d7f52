"""Export: PGVECTOR_TEST_DB_URL into .env (other lines kept) and into shells, CI and JSON."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from toolkit.errors import ConfigError, UsageError
from toolkit.settings import read_dotenv

URL_VAR = "PGVECTOR_TEST_DB_URL"  # what MemGPT's tests read
FORMATS = ("sh", "fish", "dotenv", "github", "json")


def write(env_file: Path, values: dict[str, str]) -> bool:
    """Set ``values`` in ``env_file`` keeping every other line, comment and the order; mode 0600.

    Returns True when the file changed. Nothing is written when every value is already there.
    """
    from dotenv import set_key

    current = read_dotenv(env_file)
    pending = {k: v for k, v in values.items() if current.get(k) != v}
    try:
        if not env_file.exists():
            # create it private from the first byte: it holds a password
            env_file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for key, value in pending.items():
            set_key(env_file, key, value, quote_mode="always")
        if pending or (env_file.stat().st_mode & 0o077):
            os.chmod(env_file, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {env_file}: {exc.strerror or exc}",
                          hint="fix the file's or folder's permissions, or point --env-file elsewhere") from None
    return bool(pending)


def render(values: dict[str, str], fmt: str) -> str:
    """The export text for a shell (``eval "$(toolkit env)"``), a .env, ``$GITHUB_ENV`` or JSON."""
    if fmt == "sh":
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())
    if fmt == "fish":
        return "\n".join(f"set -gx {k} {shlex.quote(v)}" for k, v in values.items())
    if fmt == "dotenv":
        return "\n".join(f"{k}='" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for k, v in values.items())
    if fmt == "github":
        # $GITHUB_ENV takes NAME=value lines; a heredoc would be needed only for multi-line values
        for k, v in values.items():
            if "\n" in v:
                raise UsageError(f"{k} has a newline; cannot write it as NAME=value")
        return "\n".join(f"{k}={v}" for k, v in values.items())
    if fmt == "json":
        return json.dumps(values, indent=2)
    raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
