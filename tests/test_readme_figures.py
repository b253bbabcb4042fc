"""Every figure in the README's "Does the search pay?" tables is computed again from the file its row
names: a compare's ``results.csv`` (means over the seeds), its ``fronts.csv`` (where the level picks
come from) or a final-headroom benchmark's CSV (the candidates after the final fine-tune)."""

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


def _compare_figures(path: Path, row: dict[str, str]) -> dict[str, float]:
    """The figures of a row that names a compare's ``results.csv``, as the README shows them."""
    out = {}
    for header, (column, scale, digits) in COLUMNS.items():
        if row.get(header, "–") not in ("", "–"):
            out[header] = round(scale * _mean(path, row["method"], column), digits)
    return out


def _picks(path: Path, row: dict[str, str]) -> dict[str, float]:
    """How many of autoprune's level picks (the most accurate front member on validation at or under 50,
    25 and 12.5 % of the base figure, per seed) are enqueued baselines, of how many."""
    with path.open(encoding="utf-8") as fh:
        front = [r for r in csv.DictReader(fh) if r["method"] == "autoprune"]
    axis = "params_pct" if "_params" in path.parent.name else "macs_pct"
    baselines = total = 0
    for seed in {r["seed"] for r in front}:
        for level in (50.0, 25.0, 12.5):
            under = [r for r in front if r["seed"] == seed and float(r[axis]) <= level + 1e-9]
            if under:
                pick = max(under, key=lambda r: float(r["accuracy"]))
                baselines += pick["baseline"] != ""
                total += 1
    return {"level picks that are enqueued baselines": baselines, "level picks": total}


def _headroom(path: Path, row: dict[str, str]) -> dict[str, float]:
    """Test accuracy after the final fine-tune of the row's length: uniform's and the one-shot's over their
    seeds, and the best other candidate's on validation (seed 0)."""
    epochs = row["final fine-tune"].split()[0]
    with path.open(encoding="utf-8") as fh:
        finals = [r for r in csv.DictReader(fh) if r["what"] == "final" and r["epochs"] == epochs]
    out = {}
    for name in ("uniform", "one-shot"):
        out[name] = round(100 * statistics.fmean(float(r["test"]) for r in finals if r["candidate"] == name), 2)
    others = [r for r in finals if r["candidate"] not in ("uniform", "one-shot") and r["seed"] == "0"]
    if others:
        best = max(others, key=lambda r: float(r["value"]))
        out["best other allocation (on validation)"] = round(100 * float(best["test"]), 2)
    return out


def test_every_figure_of_does_the_search_pay_matches_the_file_it_names() -> None:
    checked = 0
    for table in _tables(_section()):
        for row in table:
            source = re.fullmatch(r"`([^`]+\.csv)`", row.get("results", ""))
            assert source, f"a row of the README's table names no CSV: {row}"
            path = ROOT / source.group(1)
            if path.name == "results.csv":
                expected = _compare_figures(path, row)
            elif path.name == "fronts.csv":
                expected = _picks(path, row)
            else:
                expected = _headroom(path, row)
            for header, value in expected.items():
                shown = float(row[header].split("±")[0].split("(")[0])
                assert shown == value, f"README: {row} {header} = {shown}; {path}: {value}"
                checked += 1
    assert checked >= 40, checked


COMPARE_DOC = ROOT / "docs" / "compare.md"
MODELS = {
    "fmnist_cnn (MACs)": "fashion_mnist",
    "fmnist_cnn (parameters)": "fashion_mnist_params",
    "resnet20 (MACs)": "fashion_mnist_resnet20",
    "resnet20 (parameters)": "fashion_mnist_resnet20_params",
    "mobilenet_small (MACs)": "fashion_mnist_mobilenet",
    "mobilenet_small (parameters)": "fashion_mnist_mobilenet_params",
    "vit_small (MACs)": "fashion_mnist_vit",
}
"""docs/compare.md's model labels → the study name of their comparison, ``reports/bench/compare-<name>/``."""
LEVEL_COLUMNS = ("best_test_acc_50", "best_test_acc_25", "best_test_acc_12")


def _cells(path: Path, method: str, columns: tuple[str, ...]) -> list[str]:
    """The figures of one method of a compare's ``results.csv`` as the docs show them: mean ± sample std
    over the seeds, hypervolume to 4 decimals, accuracies in % to 2."""
    with path.open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == method]
    assert rows, f"{path} has no {method}"
    shown = []
    for column in columns:
        scale, digits = (1.0, 4) if column == "hypervolume" else (100.0, 2)
        values = [scale * float(r[column]) for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        shown.append(f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}")
    return shown


def _shown(cell: str) -> str:
    return cell.replace("*", "").split(" (")[0].strip()


def _sections(text: str) -> list[str]:
    return re.split(r"^### ", text, flags=re.MULTILINE)


def test_the_compare_docs_method_tables_match_the_results_their_section_names() -> None:
    """A section naming one ``reports/bench/compare-<name>/`` (or ``promotion-<name>/``) folder: its tables
    of method, hypervolume and the three levels show that folder's ``results.csv``."""
    checked = 0
    for section in _sections(COMPARE_DOC.read_text(encoding="utf-8")):
        folders = set(re.findall(r"reports/bench/((?:compare|promotion)-[\w-]+)/", section))
        if len(folders) != 1:
            continue
        path = ROOT / "reports" / "bench" / folders.pop() / "results.csv"
        for table in _tables(section):
            if not table or list(table[0])[:2] != ["method", "hypervolume"]:
                continue
            for row in table:
                method = row["method"].replace("*", "").split()[0]
                expected = _cells(path, method, ("hypervolume", *LEVEL_COLUMNS))
                assert [_shown(c) for c in list(row.values())[1:5]] == expected, f"docs/compare.md: {row}; {path}"
                checked += 1
    assert checked >= 15, checked


def test_the_compare_docs_model_tables_match_each_models_results() -> None:
    """The tables of every model (a row per model, or per model and method) show each model's
    ``results.csv``: hypervolume per method, or a method's hypervolume and three levels."""
    checked = 0
    for table in _tables(COMPARE_DOC.read_text(encoding="utf-8")):
        if not table or "model (axis)" not in table[0]:
            continue
        model = ""
        for row in table:
            model = row["model (axis)"] or model
            results = ROOT / "reports" / "bench" / f"compare-{MODELS[model]}" / "results.csv"
            if "method" in row:
                method = row["method"].replace("*", "").split()[0]
                expected = _cells(results, method, ("hypervolume", *LEVEL_COLUMNS))
                assert [_shown(row[h]) for h in list(row)[2:6]] == expected, f"docs/compare.md: {row}"
            elif "uniform" in row:  # a comparison without a -gaps rerun ran gaps as autoprune itself
                gaps = results.parent.with_name(results.parent.name + "-gaps") / "results.csv"
                columns = dict.fromkeys(("uniform", "global", "sensitivity", "random", "autoprune, GP"), results)
                columns["autoprune, gaps"] = gaps if gaps.exists() else results
                for header, path in columns.items():
                    if row[header] != "–":
                        expected = _cells(path, header.split(",")[0], ("hypervolume",))[0]
                        assert _shown(row[header]) == expected, f"docs/compare.md: {row}; {header}: {path}"
            else:
                continue
            checked += 1
    assert checked >= 7, checked


def test_the_compare_docs_headroom_table_matches_its_reports() -> None:
    """Each row of the headroom table shows the test accuracies of the report it names."""
    labels = {
        "uniform, best ratio": r"uniform, best ratio on validation \(uniform [\d.]+\)",
        "random allocation, best on validation": r"random allocation, best on validation \(allocation \d+\)",
        "one-shot allocation": r"sensitivity allocation \(sensitivity\)",
    }
    checked = 0
    for table in _tables(COMPARE_DOC.read_text(encoding="utf-8")):
        for row in table:
            if "report" not in row or "one-shot allocation" not in row:
                continue
            report = (ROOT / row["report"].strip("`")).read_text(encoding="utf-8")
            for header, label in labels.items():
                found = re.search(
                    rf"^\| {label} \| [^|]+ \| [^|]+ \| (\d+\.\d\d ± \d+\.\d\d) \|$", report, re.MULTILINE
                )
                assert found and row[header] == found.group(1), f"docs/compare.md: {row}; {header}"
                checked += 1
            best = re.search(r"\| (\d+\.\d\d) \(max: an upper bound", report)
            assert best and row["best test of any random allocation"] == best.group(1), row
    assert checked == 6, checked


def test_the_artifact_store_tables_in_the_docs_are_rows_of_their_report() -> None:
    doc = (ROOT / "docs" / "scaling-and-faults.md").read_text(encoding="utf-8")
    report = (ROOT / "reports" / "bench" / "artifact-store.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in doc.splitlines() if line.startswith(("| local folder |", "| s3://"))]
    assert len(rows) == 6
    assert [row for row in rows if row not in report] == []


def test_the_latency_docs_tables_are_rows_of_their_reports() -> None:
    doc = (ROOT / "docs" / "latency.md").read_text(encoding="utf-8").splitlines()
    reports = {
        name: (ROOT / "reports" / "bench" / name).read_text(encoding="utf-8").splitlines()
        for name in ("channel-multiple.md", "int8.md", "latency-model.md", "latency-tables.md", "speed-front.md")
    }
    rows = [line for line in doc if line.startswith("| compare_fashion_mnist")]
    assert len(rows) == 30
    assert [row for row in rows if not any(row in lines for lines in reports.values())] == []


def test_the_language_model_docs_figures_are_those_of_their_reports() -> None:
    doc = (ROOT / "docs" / "language-models.md").read_text(encoding="utf-8")
    names = ("lm-allocation-stdlib-recovery.md", "lm-allocation-stdlib.md", "lm-allocation-stdlib-switch.md")
    reports = [(ROOT / "reports" / "bench" / name).read_text(encoding="utf-8") for name in names]
    rows = [line for line in doc.splitlines() if line.startswith(("| 50 % |", "| 25 % |")) and "(trial " not in line]
    assert len(rows) == 30
    assert [row for row in rows if not any(row in report.splitlines() for report in reports)] == []
    # every figure the prose quotes is a cell of those reports' tables
    prose = doc[doc.index("- **The one-shot allocation is far ahead") : doc.index("- The one-shot allocation keeps")]
    prose += doc[doc.index("- **Before recovery, the level switches") : doc.index("- A study searches this way")]
    lines = [line for report in reports for line in report.splitlines() if line.startswith("|")]
    cells = {part.strip() for line in lines for cell in line.split("|") for part in cell.split(" ± ")}
    quoted = re.findall(r"\d+\.\d+", prose)
    assert quoted and [figure for figure in quoted if figure not in cells] == []


def test_the_switch_studies_docs_table_is_their_reports() -> None:
    """Each row: the study's lowest validation perplexity at or under the level (its trials.csv), that
    trial's test perplexity (its summary.md), the one-shot's (the benchmark's seed, no recovery)."""
    doc = (ROOT / "docs" / "language-models.md").read_text(encoding="utf-8")
    with (ROOT / "reports" / "bench" / "lm-allocation-stdlib-switch.csv").open(encoding="utf-8") as fh:
        one_shot = {
            (r["seed"], float(r["level"])): r
            for r in csv.DictReader(fh)
            if r["method"] == "one-shot" and r["recovery_steps"] == "0"
        }
    rows = re.findall(r"^\| (\d+) % \| (\d) \| (\d+\.\d+) \(trial (\d+)\) \| (\d+\.\d+) \|$", doc, re.MULTILINE)
    assert len(rows) == 6
    means: dict[str, list[float]] = {}
    for level, seed, test, trial, baseline in rows:
        folder = ROOT / "reports" / ("stdlib_llama_switch" + ("" if seed == "0" else f"_s{seed}"))
        summary = (folder / "summary.md").read_text(encoding="utf-8")
        with (folder / "trials.csv").open(encoding="utf-8") as fh:
            done = [r for r in csv.DictReader(fh) if r.get("params")]
        base = int(re.search(r"Model `[^`]+`: ([\d,]+) parameters", summary).group(1).replace(",", ""))  # type: ignore[union-attr]
        within = [r for r in done if int(r["params"]) <= int(level) / 100 * base]
        assert min(within, key=lambda r: float(r["perplexity"]))["trial"] == trial
        assert re.search(rf"^\| {trial} \|([^|]*\|){{4}} {test} \|", summary, re.MULTILINE), (trial, test)
        assert baseline == one_shot[seed, float(level)]["test_ppl"]
        means.setdefault(level, []).append(float(test))
    for level, shown in (("50", "17.24 ± 0.28"), ("25", "185.73 ± 8.65")):
        assert f"{statistics.mean(means[level]):.2f} ± {statistics.stdev(means[level]):.2f}" == shown
        assert shown in doc


def test_the_language_study_docs_figures_are_those_of_its_report() -> None:
    doc = (ROOT / "docs" / "language-models.md").read_text(encoding="utf-8")
    report = (ROOT / "reports" / "stdlib_llama" / "summary.md").read_text(encoding="utf-8")
    section = doc[doc.index("## A study") : doc.index("## Text data and figures")]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 5
    assert [row for row in rows if row not in report.splitlines()] == []
    prose = section[section.index("The one-shot allocation's baselines are members") :]
    quoted = re.findall(r"\d+\.\d+", prose)
    assert quoted and [f for f in quoted if not re.search(rf"[ (]{re.escape(f)}[ )%|]", report)] == []
    assert (
        "64 completed trials" in report
        and "at commit 23e05dc" in section
        and "made by autoprune 0.1.0 at commit 23e05dc" in report
    )


def test_the_anytime_docs_table_is_its_report() -> None:
    """docs/compare.md's anytime table shows ``anytime.csv``'s hypervolume and validation picks."""
    path = ROOT / "reports" / "bench" / "anytime-fashion_mnist_vit" / "anytime.csv"
    with path.open(encoding="utf-8") as fh:
        rows = {(r["method"], r["trials"]): r for r in csv.DictReader(fh)}
    checked = 0
    for table in _tables(COMPARE_DOC.read_text(encoding="utf-8")):
        for row in table:
            if set(row) != {"method", "trials", "hypervolume", "val ≤ 50 %", "val ≤ 25 %", "val ≤ 12.5 %"}:
                continue
            source = rows[row["method"], row["trials"]]
            assert _shown(row["hypervolume"]) == f"{float(source['hypervolume']):.4f}", row
            for level in ("50", "25", "12.5"):
                assert _shown(row[f"val ≤ {level} %"]) == f"{100 * float(source[f'val_acc_{level}']):.2f}", row
            checked += 1
    assert checked == 9, checked
