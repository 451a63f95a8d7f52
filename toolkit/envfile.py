"""Export: the chosen clients' variables (exports.py) into .env (other lines kept) and into shells, CI and JSON."""

from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path

from toolkit import perms
from toolkit.errors import ConfigError, UsageError
from toolkit.exports import URL_VAR
from toolkit.settings import read_dotenv

__all__ = ["FORMATS", "URL_VAR", "check", "render", "write"]
FORMATS = ("sh", "fish", "dotenv", "github", "json")


def write(env_file: Path, values: dict[str, str]) -> list[str]:
    """Set ``values`` in ``env_file`` keeping every other line, comment, blank line and the order.

    Atomic (temp file + rename), mode 0600. Returns the variables it changed (empty, so false, when the
    file did not change); nothing is written when every value is already there.
    """
    check(values)
    try:
        perms.check_replaceable(env_file.resolve() if env_file.is_symlink() else env_file, "the .env file")
        current = read_dotenv(env_file)
        pending = {k: v for k, v in values.items() if current.get(k) != v}
        if pending:
            old = env_file.read_text() if env_file.exists() else ""
            _atomic_write(env_file, _replace(old, pending))
        elif env_file.exists() and env_file.stat().st_mode & 0o077:
            os.chmod(env_file, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {env_file}: {exc.strerror or exc}",
                          hint="fix the file's or folder's permissions, or point --env-file elsewhere") from None
    return list(pending)


def _replace(text: str, values: dict[str, str]) -> str:
    """Rewrite only the bindings of ``values``' keys (python-dotenv's parser finds them), every one of a key
    bound twice: python-dotenv reads the last binding and a shell keeps the last, so none may stay stale."""
    import io

    from dotenv.parser import parse_stream

    out: list[str] = []
    done: set[str] = set()
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        if binding.key in values:
            body = original.lstrip("\n")
            lead = original[: len(original) - len(body)]  # blank lines the parser glued to this binding
            export = "export " if body.lstrip().startswith("export ") else ""
            out.append(f"{lead}{export}{binding.key}={_quote(values[binding.key])}\n")
            done.add(binding.key)
        else:
            out.append(original)
    text = "".join(out)
    missing = [k for k in values if k not in done]
    if missing:
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(f"{k}={_quote(values[k])}\n" for k in missing)
    return text


def _quote(value: str) -> str:
    """A .env value python-dotenv reads back as it is: single quotes (\\\\ and \\' its only escapes; shells
    and compose expand no $ in them; python-dotenv's ${NAME}: see check). A carriage return goes in
    double quotes, escaped: a reader that opens .env in text mode (python-dotenv's load_dotenv) would turn a
    CR, or CR LF, inside quotes into LF."""
    if "\r" in value:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    return _single_quoted(value)


def _single_quoted(value: str) -> str:
    """In single quotes, \\ and \' the only escapes: python-dotenv's and fish's rule alike."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check(values: dict[str, str]) -> None:
    """python-dotenv expands ${NAME} wherever it stands, quoted or not, and has no escape for it: a value
    holding "${" would be read back as something else. Only a raw value can (a URL percent-encodes $)."""
    for k, v in values.items():
        if "${" in v:
            raise UsageError(f"{k} holds '${{', which python-dotenv would expand when .env is read, so it cannot "
                             "be written there as it is", hint="choose a password without '${', or --export "
                             "database-url/letta/memgpt (URLs encode it) instead of libpq")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.resolve() if path.is_symlink() else path  # keep a user's symlinked .env a symlink
    perms.replace_private(target, text)


def render(values: dict[str, str], fmt: str) -> str:
    """The export text for a shell (``eval "$(toolkit env)"``), a .env, ``$GITHUB_ENV`` or JSON; each
    format quoted so that any value (quotes, ``$``, backslashes, newlines) reads back as it is."""
    for k, v in values.items():
        if "\x00" in v:  # no environment, .env or libpq can hold it
            raise UsageError(f"{k} holds a NUL character, which no environment variable can hold",
                             hint="remove it from the password (or URL) it comes from")
    if fmt == "sh":
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())
    if fmt == "fish":
        # fish reads \\ and \' inside single quotes as escapes (sh does not: shlex.quote's 'a\\' would leave
        # fish's quote open), nothing else, and keeps a newline
        return "\n".join(f"set -gx {k} {_single_quoted(v)}" for k, v in values.items())
    if fmt == "dotenv":
        check(values)
        return "\n".join(f"{k}={_quote(v)}" for k, v in values.items())
    if fmt == "github":
        return "\n".join(_github(k, v) for k, v in values.items())
    if fmt == "json":
        return json.dumps(values, indent=2)
    raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")


def _github(name: str, value: str) -> str:
    """One variable for ``$GITHUB_ENV``. The runner splits that file on newlines (CRLF too, on Windows), so a
    value holding either goes in its multi-line form, ``NAME<<DELIM``, value, ``DELIM``, with a random
    delimiter that the value does not hold (the runner ends the value at the first line equal to it)."""
    if "\n" not in value and "\r" not in value:
        return f"{name}={value}"
    while True:
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        if delimiter not in value:
            return f"{name}<<{delimiter}\n{value}\n{delimiter}"
