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
