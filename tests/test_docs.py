"""The docs tell the truth about the command line and the API: every ``autoprune SUBCOMMAND`` that
README.md and docs/*.md show and every ``python -m autoprune...`` that they and the reports show answer
``--help``, every ``autoprune.<name>`` they name imports, and every report names its command."""

from __future__ import annotations

import importlib
import json
import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest
from conftest import REPO

from autoprune.cli import build_parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REPORTS = sorted((REPO / "reports").rglob("*.md"))

FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[ \t;&|(])autoprune((?:[ \t]+-{1,2}[\w-]+)*)[ \t]+([a-z][\w-]*)")
MODULE = re.compile(r"python3? -m (autoprune[\w.]*)")
REPORT_COMMAND = re.compile(r"^autoprune ([a-z][\w-]*)")
"""A report's own command (its ``Command:`` line), whose arguments may name autoprune as a method."""
NAME = re.compile(r"(?<![\w/.-])autoprune\.([A-Za-z_][\w.]*[\w])")


def code(text: str) -> list[str]:
    """The code a doc shows, line by line: its fenced blocks (without comment lines) and its inline
    code spans."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return [line for line in lines if not line.lstrip().startswith("#")] + INLINE.findall(FENCE.sub("", text))


def named(pattern: re.Pattern[str], group: int, docs: list[Path] = DOCS) -> list[tuple[str, str]]:
    found = set()
    for doc in docs:
        for snippet in code(doc.read_text(encoding="utf-8")):
            for match in pattern.finditer(snippet):
                found.add((match.group(group), doc.relative_to(REPO).as_posix()))
    return sorted(found)


SUBCOMMANDS = sorted({*named(COMMAND, 2), *named(REPORT_COMMAND, 1, REPORTS)})
MODULES = sorted({module for module, _doc in named(MODULE, 1, [*DOCS, *REPORTS])})
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


@pytest.mark.parametrize("module", MODULES)
def test_every_module_the_docs_and_reports_run_answers_help(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown_in = sorted({doc for m, doc in named(MODULE, 1, [*DOCS, *REPORTS]) if m == module})
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0, f"{', '.join(shown_in)} run `python -m {module}`, which does not answer --help"
    assert "usage:" in capsys.readouterr().out


def test_every_report_names_the_command_that_made_it() -> None:
    silent = [
        p.relative_to(REPO).as_posix()
        for p in REPORTS
        if not re.search(r"python3? -m autoprune|`autoprune [a-z]", p.read_text(encoding="utf-8"))
    ]
    assert silent == []


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


DEPLOY = sorted((REPO / "deploy").iterdir())


@pytest.mark.parametrize("recipe", DEPLOY, ids=[p.name for p in DEPLOY])
def test_every_autoprune_command_of_a_cluster_recipe_parses(recipe: Path) -> None:
    import shlex

    text = recipe.read_text(encoding="utf-8")
    commands = [
        line.split("autoprune ", 1)[1]
        for line in text.splitlines()
        if re.search(r"\bautoprune (search|worker|report|export) ", line)
    ]
    args = re.search(r'args: \[("autoprune", .*)\]', text)
    if args:  # a Kubernetes container's args list
        commands.append(" ".join(json.loads(f"[{args.group(1)}]")[1:]))
    assert any(c.startswith("worker ") for c in commands), f"{recipe.name} starts no worker"
    parser = build_parser()
    for command in commands:
        words = shlex.split(command.split("#", 1)[0].replace("\\", ""))
        words = [("4" if w == "$SLURM_CPUS_PER_TASK" else "value") if w.startswith("$") else w for w in words]
        parsed = parser.parse_args(words)
        if parsed.command == "worker":
            assert parsed.storage is None  # from $AUTOPRUNE_STORAGE: no password on the command line
