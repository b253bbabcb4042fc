"""The settings' documentation, generated from :mod:`autoprune.config`: its fields, their defaults and
their docstrings are the one source. ``autoprune init``'s study file, README.md's settings table and
docs/settings.md are written from here; a test fails when a committed one drifts.

Rewrite the committed ones after editing a setting::

    python -m autoprune.config_docs --write
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import typing
from pathlib import Path
from typing import Any

from autoprune.config import StudyConfig

README_START = "<!-- settings table: written by `python -m autoprune.config_docs --write` from autoprune/config.py -->"
README_END = "<!-- end of settings table -->"
REFERENCE = "docs/settings.md"


def sections() -> dict[str, type]:
    """Every section of a study file, by name, in the order of :class:`StudyConfig`."""
    hints = typing.get_type_hints(StudyConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(StudyConfig)}


@functools.cache
def field_docs(section: type) -> dict[str, str]:
    """The docstring under each field of a section class (its attribute docstrings), dedented."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(section)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


def section_doc(section: type) -> str:
    """A section's own docstring, on one line."""
    return " ".join(inspect.cleandoc(section.__doc__ or "").split())


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, on one line, with reST markup as Markdown; a docstring that
    opens on a list of choices (``- ``name``: ...``) gives its lead-in and the choices' names."""
    paragraph = text.split("\n\n", 1)[0]
    choices = re.findall(r"^- ``([^`]+)``", text, re.MULTILINE)
    if paragraph.endswith(":") and choices:
        return plain(f"{paragraph} {', '.join(choices[:-1])} or {choices[-1]} (docs/settings.md).")
    flat = " ".join(paragraph.split())
    return plain(re.split(r"(?<=\.)\s+(?=[A-Z`(])", flat, maxsplit=1)[0])


def plain(text: str) -> str:
    """reST roles (:mod:`x`, :data:`y`) and double backquotes as Markdown code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def toml_value(value: Any) -> str:
    """A default as a study file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:g}"
    return json.dumps(value)


def defaults() -> dict[str, dict[str, Any]]:
    """Every key's default as its field declares it (before a section resolves it, as
    ``space.default_scorer``'s empty default becomes the first scorer), by section."""
    return {name: {f.name: f.default for f in dataclasses.fields(cls)} for name, cls in sections().items()}


def readme_table() -> str:
    """README.md's settings table: each section, what it sets, its keys with their defaults."""
    rows = ["| section | what it sets | keys (default) |", "| --- | --- | --- |"]
    for name, cls in sections().items():
        keys = ", ".join(f"`{key}` ({_short(value)})" for key, value in defaults()[name].items())
        rows.append(f"| `[{name}]` | {plain(section_doc(cls))} | {keys} |")
    return "\n".join(rows)


def _short(value: Any) -> str:
    text = toml_value(value)
    return "empty" if text in ('""', "[]") else f"`{text}`"


def reference() -> str:
    """docs/settings.md: every key of every section, its default and its meaning."""
    out = [
        "# Study-file settings",
        "",
        "Every key a study file may set, its default and what it does. Written by",
        "`python -m autoprune.config_docs --write` from the fields of `autoprune/config.py` and their",
        "docstrings: edit those, not this page.",
    ]
    for name, cls in sections().items():
        out += [
            "",
            f"## `[{name}]`",
            "",
            plain(section_doc(cls)),
            "",
            "| key | default | meaning |",
            "| --- | --- | --- |",
        ]
        docs = field_docs(cls)
        for key, value in defaults()[name].items():
            meaning = plain(" ".join(docs.get(key, "").split())).replace("|", "\\|")
            out.append(f"| `{key}` | `{toml_value(value)}` | {meaning} |")
    return "\n".join(out) + "\n"


def readme_with_table(readme: str) -> str:
    """README.md's text with its settings table rewritten."""
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "\n" + readme_table() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoprune.config_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's table and docs/settings.md")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: .)")
    args = parser.parse_args(argv)
    if not args.write:
        print(reference(), end="")
        return 0
    readme = args.root / "README.md"
    readme.write_text(readme_with_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
    (args.root / REFERENCE).write_text(reference(), encoding="utf-8")
    print(f"wrote {readme} and {args.root / REFERENCE}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
