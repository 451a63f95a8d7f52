"""Helpers every command module uses: settings from flags, JSON output, confirmation, the parameter
types whose messages say what is expected, and the group whose help lists whole summaries."""

from __future__ import annotations

import inspect
import json
import math
import select
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from toolkit.errors import Declined, ToolkitError
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
    """Ask before destroying anything; ``--yes`` skips; no terminal means no consent (an error: the caller
    must say --yes); a "no" is a decision, not an error (``Declined``: a plain line, exit 1)."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise ToolkitError(f"refusing to {question} without confirmation (no terminal to ask on)",
                           hint="re-run with --yes")
    # asked on stderr, as progress and errors are: `toolkit down --purge > log` still shows the question
    with _signals_heard_while_asking():
        if not click.confirm(question[0].upper() + question[1:] + "?", default=False, err=True):
            raise Declined("nothing was changed")


@contextmanager
def _signals_heard_while_asking() -> Iterator[None]:
    """click's prompts read the answer only once the terminal has a line. Python runs a signal's handler
    between bytecodes, and a read() that began just after the signal landed (the question was flushed,
    whoever waited for it sent SIGTERM at once) blocks until Enter: the cancelled job hangs. Short
    selects hear the signal."""
    from click import termui

    def answer(text: str) -> str:
        if sys.stdin is None or not sys.stdin.isatty():
            return input(text)
        sys.stdout.write(text)  # click points stdout at stderr for err=True
        sys.stdout.flush()
        while not select.select([sys.stdin], [], [], 0.1)[0]:
            pass
        return input()

    before = termui.visible_prompt_func
    termui.visible_prompt_func = answer
    try:
        yield
    finally:
        termui.visible_prompt_func = before


class BackendName(click.Choice):  # type: ignore[type-arg]
    """``click.Choice`` over the registered backends (``toolkit.backends.BACKENDS``; ``memgpt``: only those MemGPT
    can use, not an archive) and ``extra`` words, read when a command parses or shows its help: `toolkit --help`
    loads no backend module."""

    def __init__(self, *extra: str, memgpt: bool = False) -> None:
        self.extra = extra
        self.memgpt = memgpt
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from toolkit.backends import BACKENDS, memgpt_backends

        return (*(memgpt_backends() if self.memgpt else BACKENDS), *self.extra)

    @choices.setter
    def choices(self, value: object) -> None:
        """Choice.__init__ assigns its list; ours is the registry's."""


def prompt(text: str, *, default: str, choices: Sequence[str] | None = None, show_default: bool = True) -> str:
    """click's prompt as the library's ``Prompt``: what `configure` asks. Answers may be piped in; input
    that ends before an answer (stdin /dev/null in CI) is an error, not an interruption (click says both
    as one Abort; at a terminal Ctrl-D still is one)."""
    try:
        with _signals_heard_while_asking():
            answer: str = click.prompt(text, default=default, type=click.Choice(list(choices)) if choices else None,
                                       show_default=show_default, err=True)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, EOFError) and not (sys.stdin and sys.stdin.isatty()):
            click.echo(err=True)  # end the prompt's line
            raise ToolkitError(f"the input ended before an answer to {text!r}",
                               hint="answer every question, or re-run with --no-input (and --backend, --uri, --path)") from None
        raise
    return answer


# click's number types say "'abc' is not a valid integer range" and show INTEGER RANGE as the metavar;
# these say what the value is


class Port(click.IntRange):
    """A TCP port, 1-65535: "'abc' is not a valid port"."""

    name = "port"

    def __init__(self) -> None:
        super().__init__(1, 65535)


class Whole(click.IntRange):
    """A whole number in a range: "'abc' is not a valid integer"."""

    name = "integer"


class Seconds(click.FloatRange):
    """A duration in seconds, greater than 0: "'abc' is not a number of seconds". Not NaN: it parses, and
    passes a range check (every comparison with it is false), and a wait for "now >= deadline" never ends."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isnan(number):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return super().convert(value, param, ctx)


def summary(command: click.Command) -> str:
    """A command's line in its group's help: ``short_help``, else the whole first paragraph of its help
    (click cuts it at about 45 characters with "...")."""
    if command.short_help:
        return inspect.cleandoc(command.short_help)
    paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0]
    return " ".join(paragraph.replace("\b", "").split())


class Group(click.Group):
    """A command group whose help lists each command's whole summary, wrapped, never cut."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
