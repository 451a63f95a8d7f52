"""The one subprocess wrapper: argv lists, never a shell; failures say command, code and output."""

from __future__ import annotations

import os
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
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output; raise CommandError on a non-zero exit when ``check``."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, capture_output=True, text=True, user=user, group=group, env=env,
                              cwd=cwd, input=input, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ToolkitError(f"command not found: {args[0]}", hint="is it installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"command timed out after {timeout}s: {' '.join(redact(a) for a in args)}") from None
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, done.stdout, done.stderr)
    return done


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
