"""The click layer: global options, command registration, and the one error boundary.

Each command lives in ``toolkit/commands/<verb>.py`` and is a few lines over the library. Command
modules import only light modules at top level, so ``toolkit --help`` stays instant.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import tempfile
import traceback
from typing import Any, NoReturn

import click

from toolkit import __version__
from toolkit.commands._common import Group
from toolkit.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, Declined, Terminated, ToolkitError
from toolkit.urls import redact

# (module, attribute): one line per command; order is the order in --help
COMMANDS: tuple[tuple[str, str], ...] = (
    ("toolkit.commands.db", "up"),
    ("toolkit.commands.db", "down"),
    ("toolkit.commands.db", "status"),
    ("toolkit.commands.db", "env"),
    ("toolkit.commands.db", "logs"),
    ("toolkit.commands.db", "psql"),
    ("toolkit.commands.doctor", "doctor"),
    ("toolkit.commands.smoke", "smoke"),
    ("toolkit.commands.servers", "chroma"),
    ("toolkit.commands.servers", "s3"),
    ("toolkit.commands.image", "image"),
    ("toolkit.commands.configure", "configure"),
    ("toolkit.commands.migrate", "migrate"),
    ("toolkit.commands.backup", "backup"),
    ("toolkit.commands.backup", "restore"),
)


class LazyGroup(Group):
    """Imports a command's module only when that command (or the full help) is needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = {attr.replace("_", "-"): (mod, attr) for mod, attr in COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._lazy) + [c for c in super().list_commands(ctx) if c not in self._lazy]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module, attr = self._lazy[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="toolkit")
@click.option("--project-dir", type=click.Path(file_okay=False), help="Project root holding .env (default: cwd).")
@click.option("--env-file", type=click.Path(dir_okay=False), help="The .env file to read and write (default: PROJECT/.env).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, project_dir: str | None, env_file: str | None, debug: bool) -> None:
    """Provision Postgres+pgvector for MemGPT-style agents and check archival storage backends.

    \b
    Quick start:
      toolkit up            start Postgres+pgvector on localhost:8888, write PGVECTOR_TEST_DB_URL to .env
      eval "$(toolkit env)" export the URL into this shell
      toolkit smoke         prove the archival backends work here
      toolkit down          stop it (data kept; --purge deletes it)

    Settings: flags > TOOLKIT_* environment > .env > defaults (see .env.example).
    """
    ctx.ensure_object(dict)
    ctx.obj["global_flags"] = {"project_dir": project_dir, "env_file": env_file}
    ctx.obj["debug"] = debug or os.environ.get("TOOLKIT_DEBUG") == "1"


def _unexpected(exc: BaseException) -> int:
    """Unknown failure: one line on stderr, the traceback in a log file whose path we print."""
    text = redact("".join(traceback.format_exception(exc)))
    fd, path = tempfile.mkstemp(prefix="toolkit-crash-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        log.write(text)
    click.echo(f"toolkit: internal error: {redact(str(exc)) or type(exc).__name__} "
               f"(traceback in {path}; please report it)", err=True)
    return EXIT_INTERNAL


def _output_failed(exc: BaseException) -> bool:
    """Did click fail to write what we print (stdout on a full disk, a terminal that went away)? That is
    the machine's state, not a bug: no crash log. click itself ends a closed pipe (EPIPE) quietly."""
    if not isinstance(exc, OSError) or exc.__traceback__ is None:
        return False
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    return innermost.name == "echo" and os.path.samefile(innermost.filename, click.utils.__file__)


def _usage_line(exc: click.ClickException) -> str:
    """click's error (usage block, "Error:", message) as one line in the house format: what, and the
    command whose --help says how."""
    message = " ".join(exc.format_message().split())
    # "No such option '--p'. (Did you mean one of: '--help', '--port'?)" / ". Did you mean '--user'?"
    message = re.sub(r"\.\s*\(?Did you mean (.+?\?)\)?$", r" (did you mean \1)", message).rstrip(".")
    message = message[:1].lower() + message[1:]
    if not isinstance(exc, click.UsageError):
        return f"toolkit: error: {message}"
    return f"toolkit: error: {message}; see `{exc.ctx.command_path if exc.ctx else 'toolkit'} --help`"


# SIGTERM arrived: click's prompts turn the Terminated they catch into an Abort without a cause
_terminated = False


def _interruption(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM an exception stands for, if any: Python wraps what a signal handler raises at
    some moments in an error of its own (RuntimeError "Error calling __set_name__" while a module that
    defines a class with a cached_property is imported), which is no bug of ours."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _terminate(signum: int, frame: Any) -> None:
    global _terminated
    _terminated = True
    raise Terminated()


def _interrupted(cause: BaseException | None) -> NoReturn:
    """Exit for SIGTERM (143) or Ctrl-C (130; also Ctrl-D at a prompt: click says both as one Abort)."""
    if _terminated or isinstance(cause, Terminated):
        click.echo("toolkit: terminated", err=True)
        sys.exit(EXIT_TERMINATED)
    click.echo("toolkit: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map exceptions to exit codes in this one place."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("TOOLKIT_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # without standalone mode click returns ctx.exit(N)'s code instead of exiting
        code = cli.main(args=argv, prog_name="toolkit", standalone_mode=False)
    except Declined as exc:  # the user said no: nothing failed
        click.echo(exc.one_line(), err=True)
        sys.exit(exc.exit_code)
    except ToolkitError as exc:
        if debug:
            traceback.print_exc()
        if exc.detail:
            click.echo(redact(exc.detail), err=True)
        click.echo(f"toolkit: error: {redact(exc.one_line())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        _interrupted(exc.__cause__)  # click turns Ctrl-C (and so our SIGTERM), and Ctrl-D, into Abort
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `toolkit` or `toolkit chroma`: its help
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # bad flags/arguments (exit 2): one line naming the --help to read, not click's usage block
        click.echo(_usage_line(exc), err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # noqa: BLE001 - the boundary
        interrupt = _interruption(exc)
        if interrupt is not None:
            _interrupted(interrupt)
        if debug:
            raise
        if _output_failed(exc):
            assert isinstance(exc, OSError)
            try:
                click.echo(f"toolkit: error: cannot write the output: {exc.strerror or exc}", err=True)
            except OSError:
                pass  # stderr too: nowhere left to say it
            sys.exit(1)
        sys.exit(_unexpected(exc))
    sys.exit(code if isinstance(code, int) else 0)
