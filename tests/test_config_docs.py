"""One source for the settings: README.md's table, docs/settings.md, ``autoprune init``'s study file and
the committed study files agree with autoprune/config.py."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest
from conftest import REPO

from autoprune.config import load_config
from autoprune.config_docs import (
    README_END,
    README_START,
    REFERENCE,
    defaults,
    field_docs,
    first_sentence,
    readme_table,
    reference,
    sections,
)
from autoprune.search.starter import Sizing, starter_config, study_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IDENTITY = {("study", "name"), ("model", "name"), ("data", "name"), ("data", "root")}
"""Keys a study file sets to say what it is, whether or not they equal the default."""


def test_every_setting_is_documented() -> None:
    undocumented = [f"{name}.{f.name}" for name, cls in sections().items() for f in dataclasses.fields(cls)]
    undocumented = [key for key in undocumented if key.split(".")[1] not in field_docs(sections()[key.split(".")[0]])]
    assert undocumented == []


def test_the_readme_table_and_the_settings_page_are_generated_from_the_config() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    fix = "run `python -m autoprune.config_docs --write`"
    assert block.strip() == readme_table(), f"README.md's settings table drifted from autoprune/config.py: {fix}"
    page = (REPO / REFERENCE).read_text(encoding="utf-8")
    assert page == reference(), f"{REFERENCE} drifted from autoprune/config.py: {fix}"


def test_the_init_file_writes_each_key_under_its_documentation() -> None:
    config = starter_config(name="mine", model="digits_resnet", data="digits")
    text = study_text(config, Sizing("cpu", 1000, 2000, 5, 844, 0.02, 64, 500, 120, 5))
    section, comment, keys = "", [], 0
    for line in text.splitlines():
        if header := re.fullmatch(r"(?:# )?\[(\w+)\]", line):
            section, comment = header.group(1), []
        elif match := re.fullmatch(r"(?:# )?(\w+) = .*", line):
            assert " ".join(comment) == first_sentence(field_docs(sections()[section])[match.group(1)]), line
            comment, keys = [], keys + 1
        elif line.endswith("Uncomment to use."):  # the note under a commented-out section's header
            comment = []
        elif line.startswith("# ") and section:
            comment.append(line[2:])
    assert keys >= 20
    assert "the reference the search must beat: plain global pruning" in text  # config.py's words, not init's


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_committed_study_files_set_a_key_only_to_change_it_and_say_why(path: object) -> None:
    file = REPO / "studies" / str(path)
    text = file.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    load_config(file)  # and they load
    restated, unexplained = [], []
    lines = text.splitlines()
    for section, values in data.items():
        for key, value in values.items():
            if (section, key) in IDENTITY:
                continue
            default = defaults()[section][key]
            if (list(default) if isinstance(default, tuple) else default) == value:
                restated.append(f"{section}.{key}")
                continue
            start = lines.index(f"[{section}]")
            at = next(i for i, line in enumerate(lines) if i > start and re.match(rf"{key}\s*=", line))
            if "#" not in lines[at] and not lines[at - 1].startswith("#"):
                unexplained.append(f"{section}.{key}")
    assert restated == [], "keys at their default: remove them"
    assert unexplained == [], "keys changed from their default need a comment saying why"
