"""Every figure in the README's "Does the search pay?" tables is the mean, over the seeds, of the
``results.csv`` that its row names."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Does the search pay?"
COLUMNS = {
    "hypervolume": ("hypervolume", 1.0, 4),
    **{
        f"test ≤ {level} %": (f"best_test_acc_{key}", 100.0, 2)
        for level, key in (("50", "50"), ("25", "25"), ("12.5", "12"))
    },
    **{
        f"after the final fine-tune, ≤ {level} %": (f"final_test_acc_{key}", 100.0, 2)
        for level, key in (("50", "50"), ("25", "25"), ("12.5", "12"))
    },
    **{
        f"fine-tuned longer by the search's samples, ≤ {level} %": (f"final_more_test_acc_{key}", 100.0, 2)
        for level, key in (("50", "50"), ("25", "25"), ("12.5", "12"))
    },
}
"""A table header the test checks → (the results.csv column, the scale it is shown at, its decimals)."""


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else None]


def _tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables of ``text``, each a list of rows keyed by the header's cells."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")), strict=True)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _mean(path: Path, method: str, column: str) -> float:
    with path.open(encoding="utf-8") as fh:
        values = [float(r[column]) for r in csv.DictReader(fh) if r["method"] == method and r.get(column)]
    assert values, f"{path} has no {column} for {method}"
    return statistics.fmean(values)


def test_every_figure_of_does_the_search_pay_matches_the_results_it_names() -> None:
    checked = 0
    for table in _tables(_section()):
        for row in table:
            source = re.fullmatch(r"`([^`]+/results\.csv)`", row["results"])
            assert source, f"a row of the README's table names no results.csv: {row}"
            path = ROOT / source.group(1)
            for header, cell in row.items():
                if header not in COLUMNS or cell in ("", "–"):
                    continue
                column, scale, digits = COLUMNS[header]
                shown = float(cell.split("±")[0])
                expected = round(scale * _mean(path, row["method"], column), digits)
                assert shown == expected, f"README: {row['method']} {header} = {shown}; {path.name}: {expected}"
                checked += 1
    assert checked >= 20, checked
