"""Export: .env writing keeps the user's lines; every output format works for its consumer."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from toolkit import envfile
from toolkit.errors import ConfigError

URL = "postgresql+pg8000://memgpt:pa ss'w$rd@localhost:8888/memgpt"


def test_new_env_file_is_private(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    assert envfile.write(env, {envfile.URL_VAR: URL})
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    from dotenv import dotenv_values

    assert dotenv_values(env)[envfile.URL_VAR] == URL


def test_existing_lines_comments_and_order_are_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    original = "# my secrets\nOPENAI_API_KEY=sk-123\n\nPGVECTOR_TEST_DB_URL=old\nexport OTHER='x y'  # trailing\nLAST=1"
    env.write_text(original)
    env.chmod(0o644)
    envfile.write(env, {envfile.URL_VAR: URL})
    lines = env.read_text().splitlines()
    assert lines[0] == "# my secrets" and lines[1] == "OPENAI_API_KEY=sk-123" and lines[2] == ""
    assert lines[3].startswith("PGVECTOR_TEST_DB_URL=")
    assert lines[4] == "export OTHER='x y'  # trailing" and lines[5] == "LAST=1"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # tightened: it now holds a password


def test_unchanged_value_writes_nothing(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    envfile.write(env, {envfile.URL_VAR: URL})
    before = env.stat().st_mtime_ns
    assert not envfile.write(env, {envfile.URL_VAR: URL})
    assert env.stat().st_mtime_ns == before


def test_unwritable_env_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    env = folder / ".env"
    env.write_text("A=1\n")
    # root ignores permission bits, but not the immutable attribute
    lock, unlock = (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]) if os.geteuid() == 0 else \
        (["chmod", "500", str(folder)], ["chmod", "700", str(folder)])
    if subprocess.run(lock, capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder unwritable here (root, and no chattr +i on this file system)")
    try:
        with pytest.raises(ConfigError) as err:
            envfile.write(env, {envfile.URL_VAR: URL})
        assert str(env) in err.value.message and "permissions" in (err.value.hint or "")
    finally:
        subprocess.run(unlock, check=True)
    assert env.read_text() == "A=1\n"  # nothing the user had is lost


def test_env_in_missing_readonly_place_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        envfile.write(blocker / ".env", {envfile.URL_VAR: URL})  # parent is a file: fails even as root
    assert ".env" in err.value.message and err.value.hint


def test_sh_format_evals_in_bash() -> None:
    text = envfile.render({envfile.URL_VAR: URL}, "sh")
    out = subprocess.run(["bash", "-c", f'{text}\nprintf %s "$PGVECTOR_TEST_DB_URL"'], capture_output=True, text=True)
    assert out.stdout == URL


def test_dotenv_json_github_fish_formats(tmp_path: Path) -> None:
    values = {envfile.URL_VAR: URL}
    dot = tmp_path / "x.env"
    dot.write_text(envfile.render(values, "dotenv"))
    from dotenv import dotenv_values

    assert dotenv_values(dot)[envfile.URL_VAR] == URL
    assert json.loads(envfile.render(values, "json")) == values
    assert envfile.render(values, "github") == f"{envfile.URL_VAR}={URL}"
    assert envfile.render(values, "fish").startswith(f"set -gx {envfile.URL_VAR} ")


# quotes, $, backquotes, backslashes (a trailing one too), newlines, a carriage return, "=" and "<<"
HOSTILE = "it's \"q\" $HOME `x` \\ \\' back\\\\slash\nnew line\r\n=<<EOF\n$(touch pwned) end\\"


def fish_reads(text: str) -> dict[str, str]:
    """``set -gx NAME 'value'`` lines as fish reads them: inside single quotes only \\\\ and \\' are escapes
    (fish's manual, "Quotes"); anything else, a newline included, is itself."""
    values: dict[str, str] = {}
    i = 0
    while i < len(text):
        prefix = "set -gx "
        assert text.startswith(prefix, i), text[i:]
        name_end = text.index(" ", i + len(prefix))
        name, i = text[i + len(prefix):name_end], name_end + 1
        assert text[i] == "'", text[i:]
        i += 1
        value = []
        while text[i] != "'":
            if text[i] == "\\" and text[i + 1] in "\\'":
                i += 1
            value.append(text[i])
            i += 1
        values[name] = "".join(value)
        i += 1
        assert i == len(text) or text[i] == "\n"
        i += 1
    return values


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_every_format_reads_back_any_value(tmp_path: Path, shell: str) -> None:
    import shutil

    from dotenv import dotenv_values

    values = {"A": HOSTILE, "B": "plain", "C": ""}
    sh = envfile.render(values, "sh")
    if shutil.which(shell):
        read = subprocess.run([shell, "-c", f"{sh}\nenv -0"], capture_output=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
        exported = dict(e.split("=", 1) for e in read.stdout.decode().split("\0") if "=" in e)
        assert {k: exported[k] for k in values} == values and not (tmp_path / "pwned").exists()
    dot = tmp_path / "x.env"
    dot.write_bytes(envfile.render(values, "dotenv").encode())
    assert dotenv_values(dot) == values
    assert json.loads(envfile.render(values, "json")) == values
    assert fish_reads(envfile.render(values, "fish")) == values


def test_no_format_takes_a_nul() -> None:
    from toolkit.errors import UsageError

    for fmt in envfile.FORMATS:
        with pytest.raises(UsageError):
            envfile.render({"A": "x\x00y"}, fmt)


def test_a_value_python_dotenv_would_expand_is_refused(tmp_path: Path) -> None:
    from dotenv import dotenv_values

    from toolkit.errors import UsageError

    env = tmp_path / ".env"
    env.write_text("A=1\n")
    for write in (lambda: envfile.write(env, {"PGPASSWORD": "a${HOME}b"}), lambda: envfile.render({"X": "${Y}"}, "dotenv")):
        with pytest.raises(UsageError) as err:
            write()
        assert "python-dotenv would expand" in err.value.message
    assert env.read_text() == "A=1\n"
    envfile.write(env, {"PGPASSWORD": "a$HOME{b}$"})  # a $ alone is kept as it is
    assert dotenv_values(env)["PGPASSWORD"] == "a$HOME{b}$"
