"""The docs tell the truth about the command line and the API: every ``autoprune SUBCOMMAND`` and
``python -m autoprune...`` that README.md and docs/*.md show answers ``--help``, and every
``autoprune.<name>`` they name imports."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
from conftest import REPO

from autoprune.cli import build_parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[ \t;&|(])autoprune((?:[ \t]+-{1,2}[\w-]+)*)[ \t]+([a-z][\w-]*)")
MODULE = re.compile(r"python3? -m (autoprune[\w.]*)")
NAME = re.compile(r"(?<![\w/.-])autoprune\.([A-Za-z_][\w.]*[\w])")


def code(text: str) -> list[str]:
    """The code a doc shows, line by line: its fenced blocks (without comment lines) and its inline
    code spans."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return [line for line in lines if not line.lstrip().startswith("#")] + INLINE.findall(FENCE.sub("", text))


def named(pattern: re.Pattern[str], group: int) -> list[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for snippet in code(doc.read_text(encoding="utf-8")):
            for match in pattern.finditer(snippet):
                found.add((match.group(group), doc.name))
    return sorted(found)


SUBCOMMANDS = named(COMMAND, 2)
MODULES = named(MODULE, 1)
NAMES = named(NAME, 1)


def test_the_docs_name_commands_modules_and_names() -> None:
    assert {"search", "report", "pick", "export", "worker"} <= {c for c, _ in SUBCOMMANDS}
    assert MODULES and NAMES


@pytest.mark.parametrize(("command", "doc"), SUBCOMMANDS)
def test_every_subcommand_the_docs_name_answers_help(
    command: str, doc: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0, f"{doc} names `autoprune {command}`, which is not a subcommand"
    assert "usage: autoprune" in capsys.readouterr().out


@pytest.mark.parametrize(("module", "doc"), MODULES)
def test_every_module_the_docs_run_answers_help(module: str, doc: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, f"{doc}: python -m {module} --help: {done.stderr[-500:]}"
    assert "usage:" in done.stdout


@pytest.mark.parametrize(("name", "doc"), NAMES)
def test_every_name_the_docs_give_imports(name: str, doc: str) -> None:
    parts = f"autoprune.{name}".split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(value, attr), f"{doc} names autoprune.{name}: {attr!r} not found"
            value = getattr(value, attr)
        return
    pytest.fail(f"{doc} names autoprune.{name}, which does not import")
