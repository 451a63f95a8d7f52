"""Errors: one root, each subclass with an exit code and a hint.

The library raises these; only ``toolkit.cli.main`` turns them into a line on stderr and an exit code.
Messages must already be redacted (no passwords) when they are raised.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """A failure the user can act on: what happened, and how to fix it (``hint``)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # multi-line context (a server log tail) printed after the one-line message
        self.detail = detail

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f"; {self.hint}"
        return text


def error_line(exc: BaseException, *, last: bool = False, limit: int = 300) -> str:
    """An exception in one line of a message, passwords redacted: its first line (``last``: its last one,
    where libpq puts the cause), at most ``limit`` characters; its type's name when it says nothing. A
    Docker API error says it in ``explanation`` (the daemon's own words)."""
    from toolkit.urls import redact

    said = str(getattr(exc, "explanation", None) or exc)
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    text = (lines[-1] if last else lines[0]) if lines else type(exc).__name__
    return redact(text)[:limit]


class UsageError(ToolkitError):
    """Bad flag values or arguments."""

    exit_code = 2


class ConfigError(ToolkitError):
    """Unreadable or invalid settings, .env or MemGPT config."""

    exit_code = 2


class InUseError(ToolkitError):
    """Something we must own alone (a port, a data volume) is held by something that is not ours."""

    exit_code = 3


class PortInUseError(InUseError):
    """The port we must listen on is held by something that is not ours."""


class EngineUnavailableError(ToolkitError):
    """The engine cannot run here (no Docker daemon, wheel missing, ...)."""

    exit_code = 4


class ImageUnavailableError(EngineUnavailableError):
    """The Docker image is not here and cannot be pulled (offline, no registry, rate limit)."""


class MissingPackageError(ToolkitError):
    """A library the command needs comes in an optional extra that is not installed: it cannot run here
    (``pip install 'toolkit[EXTRA]'``). Its own class, not an EngineUnavailableError: engine auto's
    fallback must never swallow it."""

    exit_code = 4


class NotReadyError(ToolkitError):
    """The server did not become usable: died, timed out, refused auth, lacks the extension."""

    exit_code = 5


class BackendError(ToolkitError):
    """An archival storage backend failed (unreachable, dimension mismatch, unwritable)."""

    exit_code = 6


class MigrationError(ToolkitError):
    """A migration was refused or did not verify."""

    exit_code = 7


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a CI job cancelled): unwinds like Ctrl-C, so children are killed and scratch
    files removed on the way out."""


# exit codes that are not a ToolkitError's
EXIT_INTERRUPTED = 130  # SIGINT / Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM, as a shell reports it
EXIT_INTERNAL = 70  # an unexpected error (EX_SOFTWARE): a bug to report


class Declined(ToolkitError):
    """The user answered no to a confirmation: a decision, not a failure, so it is said as a plain line
    (no "error:"), with exit 1."""

    exit_code = 1
