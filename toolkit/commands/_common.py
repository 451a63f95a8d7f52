"""Helpers every command module uses: settings from flags, JSON output, confirmation."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from toolkit.errors import Aborted
from toolkit.settings import Settings, resolve
from toolkit.urls import redact


def settings_from(ctx: click.Context, **flags: Any) -> Settings:
    """Resolve settings once for this invocation: command flags (field names, e.g. ``db.port``) + global ones."""
    root = ctx.find_root()
    merged = dict((root.obj or {}).get("global_flags", {}))
    merged.update(flags)
    return resolve(merged)


def echo_json(data: Any, settings: Settings | None = None) -> None:
    """Print JSON with secrets redacted."""
    text = json.dumps(data, indent=2, default=str)
    click.echo(redact(text, settings.secrets if settings else ()))


def echo(line: str, settings: Settings | None = None, *, err: bool = False) -> None:
    click.echo(redact(line, settings.secrets if settings else ()), err=err)


def confirm_or_abort(question: str, *, yes: bool) -> None:
    """Ask before destroying anything; ``--yes`` skips; no terminal means no consent."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise Aborted(f"refusing to {question} without confirmation", hint="re-run with --yes")
    if not click.confirm(question[0].upper() + question[1:] + "?", default=False):
        raise Aborted("nothing was changed")


class BackendName(click.Choice):  # type: ignore[type-arg]
    """``click.Choice`` over the registered backends (``toolkit.backends.BACKENDS``) and ``extra`` words,
    read when a command parses or shows its help: `toolkit --help` loads no backend module."""

    def __init__(self, *extra: str) -> None:
        self.extra = extra
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from toolkit.backends import BACKENDS

        return (*BACKENDS, *self.extra)

    @choices.setter
    def choices(self, value: object) -> None:
        """Choice.__init__ assigns its list; ours is the registry's."""


def prompt(text: str, *, default: str, choices: Sequence[str] | None = None, show_default: bool = True) -> str:
    """click's prompt as the library's ``Prompt``: what `configure` asks."""
    answer: str = click.prompt(text, default=default, type=click.Choice(list(choices)) if choices else None,
                               show_default=show_default)
    return answer
