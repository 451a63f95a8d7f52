"""The one subprocess wrapper: argv lists, never a shell; failures say command, code and output."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.urls import redact


class CommandError(ToolkitError):
    def __init__(self, argv: Sequence[str], code: int, stdout: str, stderr: str) -> None:
        shown = " ".join(redact(str(a)) for a in argv)
        out = redact((stderr or stdout).strip())
        last = out.splitlines()[-1] if out else "no output"
        super().__init__(f"command failed ({code}): {shown}: {last}", detail=out)
        self.returncode = code
        self.stdout = stdout
        self.stderr = stderr


def run(
    argv: Sequence[str | Path],
    *,
    user: int | str | None = None,
    group: int | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    own_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output; raise CommandError on a non-zero exit when ``check``.

    ``own_session``: the command runs in a process group of its own, and when we are interrupted
    (Ctrl-C, SIGTERM, the timeout) the whole group is killed before we go on, so no child of it (as
    initdb's) keeps writing into what our caller then cleans up."""
    args = [str(a) for a in argv]
    try:
        child = subprocess.Popen(args, stdin=subprocess.PIPE if input is not None else None,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=user,
                                 group=group, env=env, cwd=cwd, start_new_session=own_session)
    except FileNotFoundError:
        raise ToolkitError(f"command not found: {args[0]}", hint="is it installed and on PATH?") from None
    with child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except BaseException as exc:
            _kill(child, group=own_session)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ToolkitError(f"command timed out after {timeout}s: {' '.join(redact(a) for a in args)}") from None
            raise
    done = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, done.stdout, done.stderr)
    return done


def _kill(child: subprocess.Popen[str], *, group: bool) -> None:
    try:
        if group:
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def pid_alive(pid: int) -> bool:
    """Does ``pid`` run? A zombie counts as gone (and is reaped when it is our child)."""
    try:
        # reap it if it is our child (a zombie still answers kill 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True
