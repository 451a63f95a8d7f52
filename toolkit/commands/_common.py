"""Helpers every command module uses: settings from flags, JSON output, confirmation."""

from __future__ import annotations

import json
import sys
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
