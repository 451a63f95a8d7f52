"""The README's command list is the CLI's: every command and subcommand is documented, nothing
documented is gone, and the options shown exist (as sqlite-utils' test_docs.py does for its docs)."""

from __future__ import annotations

import re

import click

from tests.support import REPO, cli_commands, subcommands
from toolkit.cli import cli

README = REPO / "README.md"


def usage_lines(text: str) -> list[tuple[int, str]]:
    """(line number, usage) for each ``toolkit ...`` line of the "## Commands" section: the usage is what
    comes before the description, which follows two or more spaces."""
    lines = text.splitlines()
    start = lines.index("## Commands") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    found = []
    for number in range(start, end):
        usage = re.split(r"\s{2,}", lines[number].strip(), maxsplit=1)[0]
        if usage.startswith("toolkit "):
            found.append((number + 1, usage.removeprefix("toolkit ")))
    return found


def _without_brackets(text: str) -> str:
    """``up [--format F [--x]]|down`` -> ``up |down``: options are not command names."""
    while (stripped := re.sub(r"\[[^\[\]]*\]", "", text)) != text:
        text = stripped
    return text


def documented(lines: list[tuple[int, str]], groups: set[str]) -> dict[str, int]:
    """Command paths ("up", "chroma up") with the line naming each. A group's line names its
    subcommands after it, alternatives joined by ``|``: ``chroma up [--format F]|down|status``."""
    paths: dict[str, int] = {}
    for number, usage in lines:
        words = re.sub(r"\s*\|\s*", "|", _without_brackets(usage)).split()
        if words[0] in groups and len(words) > 1 and not words[1].startswith("-"):
            paths.update((f"{words[0]} {sub}", number) for sub in words[1].split("|"))
        else:
            paths[words[0]] = number
    return paths


def visible_commands() -> set[str]:
    """Every command path the help lists ("up", "chroma up"); a group stands for its subcommands."""
    return {" ".join(path) for path, command in cli_commands(hidden=False) if not isinstance(command, click.Group)}


def _groups() -> set[str]:
    return {name for name, command in subcommands(cli, hidden=False).items() if isinstance(command, click.Group)}


def test_the_parser_reads_groups_alternatives_and_options() -> None:
    text = ("## Commands\n\n"
            "    toolkit up [--engine E] [--json]   start, wait\n"
            "    toolkit env [--format sh|fish]\n"
            "    toolkit chroma up [--format F [--x]]|down | status   a server\n"
            "    toolkit image build                the image\n"
            "`toolkit up` in prose is not a command line\n"
            "## Next\n\n    toolkit gone\n")
    assert documented(usage_lines(text), {"chroma", "image"}) == {
        "up": 3, "env": 4, "chroma up": 5, "chroma down": 5, "chroma status": 5, "image build": 6}


def test_cli_walk_includes_the_groups_subcommands() -> None:
    commands = visible_commands()
    assert {"up", "psql", "chroma up", "chroma logs", "s3 status", "image build"} <= commands
    assert "chroma" not in commands  # a group stands for its subcommands


def test_readme_lists_exactly_the_cli_commands() -> None:
    readme = documented(usage_lines(README.read_text()), _groups())
    actual = visible_commands()
    problems = [f"not in README's '## Commands': toolkit {path}" for path in sorted(actual - readme.keys())]
    problems += [f"README.md:{readme[path]}: no such command: toolkit {path}" for path in sorted(readme.keys() - actual)]
    assert not problems, "\n".join(problems)


def test_every_option_the_readme_shows_exists() -> None:
    """An option on a command's README line (``--engine``, ``-c``) is one of that command's options;
    on a group's line, of the subcommand it follows (``chroma up [--format F]|down``)."""
    commands = subcommands(cli, hidden=False)
    problems = []
    for number, usage in usage_lines(README.read_text()):
        name, _, rest = usage.partition(" ")
        command = commands.get(name)
        if isinstance(command, click.Group):
            for part in re.split(r"\|(?![^\[]*\])", rest):  # a | outside brackets separates subcommands
                sub, _, options = part.strip().partition(" ")
                problems += _unknown_options(number, f"{name} {sub}", subcommands(command, hidden=False).get(sub), options)
        else:
            problems += _unknown_options(number, name, command, rest)
    assert not problems, "\n".join(problems)


def _unknown_options(number: int, path: str, command: click.Command | None, text: str) -> list[str]:
    if command is None:
        return []  # a missing command is the other test's finding
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    return [f"README.md:{number}: toolkit {path} has no option {opt}"
            for opt in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text) if opt not in known]


# -- make targets: the Makefile, `make help` and the README agree ------------------------------------

MAKEFILE = REPO / "Makefile"


def makefile_targets() -> set[str]:
    """The targets a user may type: the .PHONY list (file targets such as the venv stamp are not)."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert phony, "the Makefile has no .PHONY line"
    return set(phony.group(1).split())


def readme_make_targets() -> set[str]:
    """The backticked names of the README paragraph that starts with "Make targets"."""
    text = README.read_text()
    start = text.index("Make targets")
    paragraph = text[start:text.index("\n\n", start)]
    return set(re.findall(r"`([a-z][a-z0-9-]*)`", paragraph))


def make_help() -> dict[str, str]:
    """`make help`, run for real: target -> its one-line description."""
    import shutil
    import subprocess

    make = shutil.which("make")
    assert make, "make is not installed"
    out = subprocess.run([make, "-s", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if line.strip()]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def test_make_help_lists_every_target_with_a_description() -> None:
    listed = make_help()
    targets = makefile_targets()
    assert {"s3-up", "s3-down", "db-up", "test"} <= targets
    assert sorted(targets - listed.keys()) == [], "targets `make help` leaves out"
    assert sorted(listed.keys() - targets) == [], "`make help` lists what is not a target"
    assert [name for name, text in listed.items() if not text] == [], "targets without a description"
    assert [text for text in listed.values() if "$$" in text] == [], "make's escaping shows in `make help`"


def test_readme_lists_exactly_the_make_targets() -> None:
    documented_targets = readme_make_targets()
    targets = makefile_targets()
    assert sorted(targets - documented_targets) == [], "Makefile targets the README does not name"
    assert sorted(documented_targets - targets) == [], "README names make targets that do not exist"
