"""The GitHub Action (action.yml) and this project's workflows, checked here and not only on GitHub.

actionlint checks every workflow (and, through ``uses: ./``, the Action's inputs and outputs); the Action's own
structure is checked against what the runner requires; then its ``run:`` scripts run for real, in order, with
bash as the runner starts it, with the files and variables the runner gives a step (GITHUB_ENV, GITHUB_OUTPUT,
GITHUB_PATH, GITHUB_ACTION_PATH = a copy of this checkout's sources, RUNNER_TEMP) and each step's ``env:``
evaluated from the inputs. The toolkit is installed from the copy with uv (its cache is warm) and starts the
embedded engine on a free port; the test reads what the runner would read, connects, and stops the server.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import unique_names
from tests.support import IN_CI, REPO, clean_env, parse_github_file, source_copy, uv_binary
from toolkit.ports import free_port

ACTION = REPO / "action.yml"
WORKFLOWS = REPO / ".github" / "workflows"
# the runner's command line for `shell: bash`
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# the only expressions the Action may use: an input, or an earlier step's output
KNOWN = re.compile(r"inputs\.([A-Za-z0-9_-]+)|steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)")


def load_action() -> dict[str, Any]:
    import yaml

    loaded = yaml.safe_load(ACTION.read_text())
    assert isinstance(loaded, dict)
    return loaded


def tool(name: str) -> str:
    """A lint tool from the test extra (beside this Python, else on PATH); skipped when missing, except in CI."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def evaluate(text: str, inputs: dict[str, str], outputs: dict[str, dict[str, str]]) -> str:
    """``${{ inputs.x }}`` and ``${{ steps.id.outputs.y }}`` as the runner expands them (a missing output is
    empty); any other expression fails the test: it would need an evaluator this test does not have."""
    def one(match: re.Match[str]) -> str:
        known = KNOWN.fullmatch(match.group(1))
        if known is None:
            pytest.fail(f"action.yml uses an expression this test cannot evaluate: {match.group(0)}")
        if known.group(1):
            return inputs[known.group(1)]
        return outputs.get(known.group(2), {}).get(known.group(3), "")

    return EXPRESSION.sub(one, text)


@dataclass
class Run:
    """What the runner saw of one use of the Action."""

    log: str = ""
    failed: int = 0  # the exit code of the step that failed, 0 when every step passed
    env: dict[str, str] = field(default_factory=dict)  # what later steps get from GITHUB_ENV
    path: list[str] = field(default_factory=list)  # what GITHUB_PATH puts first on later steps' PATH
    steps: dict[str, dict[str, str]] = field(default_factory=dict)  # step id -> its outputs
    outputs: dict[str, str] = field(default_factory=dict)  # the Action's outputs


@dataclass
class Runner:
    """A job's runner, enough of it for the Action: a temp dir, a workspace, the Action's files, a PATH."""

    temp: Path
    workspace: Path
    action_path: Path
    bin: Path
    base_env: dict[str, str] = field(default_factory=clean_env)

    def use(self, **given: str) -> Run:
        """Run the Action's steps in order, as `uses:` with ``with: given`` does; stop at the first that fails."""
        action = load_action()
        inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
        unknown = set(given) - set(inputs)
        assert not unknown, f"no such input(s): {unknown}"
        inputs.update(given)
        run = Run()
        for number, step in enumerate(action["runs"]["steps"]):
            files = {kind: self.temp / f"_runner_file_commands/{kind}_{number}" for kind in ("env", "output", "path")}
            files["env"].parent.mkdir(parents=True, exist_ok=True)
            for file in files.values():
                file.write_text("")
            script = self.temp / f"_step_{number}.sh"
            script.write_text(step["run"])
            env = {**self.base_env, **run.env,
                   "PATH": os.pathsep.join([*reversed(run.path), str(self.bin), self.base_env["PATH"]]),
                   "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(self.workspace), "RUNNER_TEMP": str(self.temp),
                   "GITHUB_ACTION_PATH": str(self.action_path), "GITHUB_ENV": str(files["env"]),
                   "GITHUB_OUTPUT": str(files["output"]), "GITHUB_PATH": str(files["path"])}
            env.update({name: evaluate(str(value), inputs, run.steps) for name, value in step.get("env", {}).items()})
            done = subprocess.run([*BASH, str(script)], cwd=self.workspace, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, timeout=600)
            run.log += f"## step {number}: {step['name']}\n{done.stdout}"
            if "id" in step:
                run.steps[step["id"]] = parse_github_file(files["output"].read_text())
            run.env.update(parse_github_file(files["env"].read_text()))
            run.path += [line for line in files["path"].read_text().splitlines() if line]
            if done.returncode != 0:
                run.failed = done.returncode
                return run
        run.outputs = {name: evaluate(spec["value"], inputs, run.steps) for name, spec in action["outputs"].items()}
        return run


def toolkit_down(project: Path) -> None:
    """Stop and purge the project's server with this checkout's CLI (nothing is left running either way)."""
    subprocess.run([sys.executable, "-m", "toolkit", "down", "--purge", "--yes"], cwd=project, capture_output=True,
                   text=True, timeout=180)


@pytest.fixture(scope="module")
def action_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """GITHUB_ACTION_PATH (a copy of the sources: the install builds in it) and RUNNER_TEMP, shared by the
    module's runs, so the toolkit's venv is built once and reused as the runner reuses it within a job."""
    root = tmp_path_factory.mktemp("action")
    source = source_copy(root / "action")
    shutil.copy2(ACTION, source / "action.yml")
    temp = root / "runner-temp"
    temp.mkdir()
    return source, temp


def runner_bin(where: Path, *, uv: bool) -> Path:
    """The runner's tools: python3 as setup-python puts it on PATH, and uv when the runner has it."""
    where.mkdir()
    (where / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (where / "python3").chmod(0o755)
    if uv:
        os.symlink(uv_binary(), where / "uv")
    return where


@pytest.fixture
def runner(action_files: tuple[Path, Path], isolated: Path, tmp_path: Path) -> Iterator[Runner]:
    """The runner for one job whose workspace is the test's project; its server is purged afterwards."""
    source, temp = action_files
    yield Runner(temp=temp, workspace=isolated, action_path=source, bin=runner_bin(tmp_path / "runner-bin", uv=True))
    toolkit_down(isolated)


# -- the files, statically -------------------------------------------------------------------------

def test_actionlint_passes_every_workflow() -> None:
    """actionlint checks the workflows and, for `uses: ./`, the inputs given against action.yml; with
    shellcheck beside it, every `run:` script of the workflows too."""
    workflows = sorted(WORKFLOWS.glob("*.y*ml"))
    assert workflows, "no workflow in .github/workflows"
    shellcheck = shutil.which("shellcheck", path=str(Path(tool("actionlint")).parent)) or ""
    done = subprocess.run([tool("actionlint"), "-shellcheck", shellcheck, *map(str, workflows)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_an_input_the_action_does_not_have(tmp_path: Path) -> None:
    """The check above can fail: a workflow giving the Action an input it lacks is an error."""
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(ACTION, repo / "action.yml")
    (repo / ".github" / "workflows" / "use.yml").write_text(
        "on: push\njobs:\n  use:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: ./\n"
        "        with:\n          engine: embedded\n          prot: '5433'\n")
    # actionlint resolves `./` from the repository's root, which .git marks
    subprocess.run(["git", "init", "-q", str(repo)], check=True, capture_output=True)
    done = subprocess.run([tool("actionlint"), "-shellcheck", "", ".github/workflows/use.yml"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert 'input "prot" is not defined' in done.stdout


def test_the_action_is_composite_and_every_reference_exists() -> None:
    action = load_action()
    assert action["runs"]["using"] == "composite"
    inputs, steps = action["inputs"], action["runs"]["steps"]
    assert set(inputs) == {"engine", "port", "image", "exports"}
    assert {name: str(spec["default"]) for name, spec in inputs.items()} == {
        "engine": "auto", "port": "8888", "image": "", "exports": "memgpt"}
    assert all(set(spec) <= {"description", "required", "default"} and spec["description"] for spec in inputs.values())
    seen: set[str] = set()
    for step in steps:
        assert set(step) <= {"name", "id", "shell", "env", "run"}, f"{step.get('name')}: a key this test does not run"
        assert step.get("shell") == "bash", f"{step.get('name')}: a composite run step needs shell:"
        # inputs reach the script only through env: (script injection otherwise)
        assert "${{" not in step["run"], f"{step['name']}: an expression inside run:"
        for value in step.get("env", {}).values():
            for expression in EXPRESSION.findall(str(value)):
                known = KNOWN.fullmatch(expression)
                assert known, f"{step['name']}: unexpected expression {expression!r}"
                assert known.group(1) is None or known.group(1) in inputs, f"no input {known.group(1)!r}"
                assert known.group(2) is None or known.group(2) in seen, f"no earlier step {known.group(2)!r}"
        seen.add(step.get("id", ""))
    for name, spec in action["outputs"].items():
        known = KNOWN.fullmatch(EXPRESSION.fullmatch(spec["value"]).group(1))  # type: ignore[union-attr]
        assert known and known.group(2) in seen, f"output {name}: {spec['value']}"
    # every input is used by some step
    used = {m.group(1) for step in steps for v in step.get("env", {}).values() for m in KNOWN.finditer(str(v))}
    assert used - {None} == set(inputs)


def test_shellcheck_passes_every_script_of_the_action(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    for number, step in enumerate(load_action()["runs"]["steps"]):
        script = tmp_path / f"step{number}.sh"
        script.write_text("#!/usr/bin/env bash\n" + step["run"])
        done = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{step['name']}:\n{done.stdout}"


def test_the_file_command_parser_reads_the_heredoc_form() -> None:
    text = "A=1\nB<<EOF\nline one\nx=y\n\nEOF\nC=with=equals\nD<<X=Y\nv\nX=Y\n"
    assert parse_github_file(text) == {"A": "1", "B": "line one\nx=y\n", "C": "with=equals", "D": "v"}


# -- the scripts, for real ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_action_starts_postgres_and_exports_it(runner: Runner, isolated: Path) -> None:
    import psycopg

    port = free_port()
    run = runner.use(engine="embedded", port=str(port))
    assert run.failed == 0, run.log

    assert list(run.env) == ["PGVECTOR_TEST_DB_URL"], run.env
    url = run.env["PGVECTOR_TEST_DB_URL"]
    assert url == f"postgresql+pg8000://memgpt:memgpt@localhost:{port}/memgpt"
    assert run.outputs == {"url": url, "engine": "embedded"}
    assert "::add-mask::" not in run.log  # the public default password is not masked (it would hide "memgpt")

    # later steps find `toolkit` on PATH, and nothing else of the toolkit's venv (no python, no pip)
    assert len(run.path) == 1
    assert sorted(p.name for p in Path(run.path[0]).iterdir()) == ["toolkit"]
    status = subprocess.run([str(Path(run.path[0]) / "toolkit"), "status"], cwd=isolated, capture_output=True,
                            text=True, env=clean_env(), timeout=120)
    assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr

    with psycopg.connect(url.replace("+pg8000", ""), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector").fetchone() == (2.0,)


@pytest.mark.slow
def test_the_exports_input_gives_later_steps_every_chosen_clients_variables(runner: Runner, isolated: Path) -> None:
    from tests.test_exports import letta_connects, psql_with_only

    port = free_port()
    run = runner.use(engine="embedded", port=str(port), exports="letta, libpq")
    assert run.failed == 0, run.log
    assert list(run.env) == ["LETTA_PG_URI", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"], run.env
    assert run.env["LETTA_PG_URI"] == f"postgresql://memgpt:memgpt@localhost:{port}/memgpt"
    assert run.outputs["url"] == f"postgresql+pg8000://memgpt:memgpt@localhost:{port}/memgpt"  # MemGPT's form
    assert psql_with_only({k: v for k, v in run.env.items() if k.startswith("PG")}) == "memgpt"
    assert letta_connects(run.env["LETTA_PG_URI"]) == "memgpt"
    assert "PGVECTOR_TEST_DB_URL" not in (isolated / ".env").read_text()  # .env holds the chosen ones too
    assert "LETTA_PG_URI=" in (isolated / ".env").read_text()


@pytest.mark.slow
def test_a_password_is_masked_before_it_is_printed(runner: Runner, isolated: Path) -> None:
    import psycopg

    password = "s3cr3t/p@ss"
    runner.base_env["TOOLKIT_PG_PASSWORD"] = password  # as a job's env: from a secret
    run = runner.use(engine="embedded", port=str(free_port()))
    assert run.failed == 0, run.log
    url = run.outputs["url"]
    assert "s3cr3t%2Fp%40ss" in url
    # both forms masked, before either appears anywhere else in the log
    masks = [line.removeprefix("::add-mask::") for line in run.log.splitlines() if line.startswith("::add-mask::")]
    assert sorted(masks) == sorted([password, "s3cr3t%2Fp%40ss"])
    for secret in masks:
        first = run.log.index(secret)
        assert run.log[first - len("::add-mask::"):first] == "::add-mask::", f"{secret!r} printed before its mask"
        assert run.log.count(secret) == 1, run.log
    with psycopg.connect(url.replace("+pg8000", ""), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("memgpt",)


@pytest.mark.slow
def test_a_bad_engine_fails_the_step_with_one_line(runner: Runner, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    engine = f'bogus"; touch {marker}; echo "$(touch {marker})'
    run = runner.use(engine=engine, port=str(free_port()))
    assert run.failed == 2, run.log
    up = run.log.split("## step 1: ")[1]
    errors = [line for line in up.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1 and errors[0].startswith("toolkit: error: invalid value for '--engine': 'bogus\"; touch"), up
    assert up.endswith("toolkit up failed (exit 2); the server's log (toolkit logs -n 50):\n(no server log)\n"), up
    assert "Traceback" not in up
    assert not marker.exists(), "an input ran as shell code"
    assert run.env == {} and run.steps["up"] == {}


@pytest.mark.slow
def test_a_taken_port_fails_the_step_with_the_error_and_the_log_tail(runner: Runner, isolated: Path) -> None:
    port = free_port()
    first = runner.use(engine="embedded", port=str(port))
    assert first.failed == 0, first.log
    stopped = subprocess.run([sys.executable, "-m", "toolkit", "down"], cwd=isolated, capture_output=True, text=True,
                             timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        run = runner.use(engine="embedded", port=str(port))
    assert run.failed != 0, run.log
    up = run.log.split("## step 1: ")[1]
    errors = [line for line in up.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1 and f"port {port} on 127.0.0.1 is already in use" in errors[0], up
    # the tail of the server's log follows: the first server's, which started and stopped
    tail = up.split("the server's log (toolkit logs -n 50):\n")[1]
    assert "database system is ready to accept connections" in tail, up
    assert run.env == {} and "url" not in run.steps["up"]


@pytest.mark.slow
def test_without_uv_the_action_installs_it_with_pip_first(action_files: tuple[Path, Path], isolated: Path,
                                                          tmp_path: Path) -> None:
    """GitHub's runners have no uv: the install step puts it in RUNNER_TEMP with pip, then installs with it."""
    source, _ = action_files
    temp = tmp_path / "runner-temp"  # a job of its own: no venv from another test's run
    temp.mkdir()
    runner = Runner(temp=temp, workspace=isolated, action_path=source, bin=runner_bin(tmp_path / "bin", uv=False),
                    base_env={**clean_env(), "PATH": "/usr/bin:/bin"})
    try:
        run = runner.use(engine="embedded", port=str(free_port()))
        assert run.failed == 0, run.log
        assert (temp / "toolkit-action" / "uv-bootstrap" / "bin" / "uv").is_file()
        assert run.outputs["engine"] == "embedded" and run.env["PGVECTOR_TEST_DB_URL"] == run.outputs["url"]
    finally:
        toolkit_down(isolated)


@pytest.mark.docker
@pytest.mark.slow
def test_with_docker_auto_runs_the_image_input(action_files: tuple[Path, Path], isolated: Path, tmp_path: Path,
                                               offline_image: str, made: dict[str, list[str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Where an engine answers, auto runs the server in Docker, from the image input (the offline image here:
    no registry; on GitHub the default image is pulled)."""
    import psycopg

    container, volume = unique_names()  # not the default names, which another checkout's server may hold
    made["containers"].append(container)
    made["volumes"].append(volume)
    monkeypatch.setenv("TOOLKIT_PG_CONTAINER", container)
    monkeypatch.setenv("TOOLKIT_PG_VOLUME", volume)
    source, temp = action_files
    runner = Runner(temp=temp, workspace=isolated, action_path=source, bin=runner_bin(tmp_path / "bin", uv=True))
    try:
        run = runner.use(port=str(free_port()), image=offline_image)
        assert run.failed == 0, run.log
        assert run.outputs["engine"] == "docker"
        url = run.env["PGVECTOR_TEST_DB_URL"]
        assert run.outputs["url"] == url
        with psycopg.connect(url.replace("+pg8000", ""), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)
    finally:
        toolkit_down(isolated)
