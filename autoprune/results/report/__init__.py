"""The Pareto report of a stored study: one self-contained HTML page, CSV tables, Markdown and PNG.

Everything is read from the study (its trials' user attributes and the ``autoprune`` study
attribute); nothing is retrained. The only computation on data is the test accuracy of front
members whose fine-tuned weights were kept, measured once per report on the test split, which the
search never saw.

Files written to the output folder: ``index.html`` (opens from disk, plotly.js embedded),
``front.csv``, ``trials.csv``, ``summary.md``, ``accuracy_vs_macs.png``, ``accuracy_vs_size.png``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from autoprune._code import code
from autoprune._logging import get_logger, redact_text
from autoprune.budget import ResolvedBudget
from autoprune.errors import AutopruneError
from autoprune.results.pareto import hypervolume_history
from autoprune.results.report._charts import (
    chart_traces,
    plotly_div,
    sensitivity_div,
    sparsity_div,
    speed_div,
    speed_points,
    write_png,
    write_speed_png,
)
from autoprune.results.report._data import measure_front, parameter_importances, trials_frame
from autoprune.results.report._page import html_page, speed_section, summary_markdown
from autoprune.results.rows import TrialRow, front_rows
from autoprune.search.record import StudyRecord

log = get_logger(__name__)

FILES = ("index.html", "front.csv", "trials.csv", "summary.md", "accuracy_vs_macs.png", "accuracy_vs_size.png")


@dataclass(frozen=True)
class Report:
    """Where the report was written, and what it found."""

    folder: Path
    front: list[int]
    seconds: float

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


def write_report(
    study: optuna.Study,
    out: str | Path,
    *,
    budget: ResolvedBudget | None = None,
    storage: str | None = None,
    command: str = "",
    test_accuracy: bool = True,
    speed: bool = True,
) -> Report:
    """Write the report of ``study`` to ``out`` (created if needed) and return where it went.

    Args:
        study: A study made by autoprune.
        out: Output folder.
        budget: Marks trials outside it; ``None``: no budget.
        storage: The study's storage URL (finds the artifacts folder of studies created elsewhere).
        command: The command that regenerates the report, shown on the page and in ``summary.md``.
        test_accuracy: Measure front members on the test split (needs their kept weights).
        speed: Time front members and the base model on the study's runtime (``trial.latency_runtime``)
            and chart their speedup against their MACs reduction.
    """
    start = time.perf_counter()
    made_by = code()  # before the report's own files change the checkout it names
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = StudyRecord.from_study(study)
    base = record.base
    command = redact_text(
        command or f"autoprune report --storage {storage or '<storage URL>'} --study {study.study_name}"
    )
    numbers = sorted(row.trial for row in front_rows(study))
    df = trials_frame(study, budget, numbers)
    if df.empty or not (df["state"] == "COMPLETE").any():
        raise AutopruneError(f"study {study.study_name!r} has no completed trial to report")
    measured = measure_front(study, numbers, storage, test=test_accuracy, speed=speed)
    tests = measured.test_accuracy
    df["test_accuracy"] = df["trial"].map(tests)
    base_latency = measured.base_latency
    df["latency_measured_ms"] = df["trial"].map({n: t.ms for n, t in measured.latency.items()})
    df["latency_spread"] = df["trial"].map({n: t.spread for n, t in measured.latency.items()})
    df["speedup"] = base_latency.ms / df["latency_measured_ms"] if base_latency is not None else float("nan")
    if record.predicted_latency:  # how far off the search's predictions were, against the timings
        df["latency_error"] = df["latency_ms"] / df["latency_measured_ms"] - 1.0
        if record.latency_model is not None:  # speedups divide timings of one moment: free of the machine's drift
            predicted_speedup = record.latency_model.predict({}) / df["latency_ms"]
            df["speedup_error"] = predicted_speedup / df["speedup"] - 1.0

    front_df = df[df["front"]].sort_values(["nonzero_macs", "macs", "trial"], ascending=[False, False, True])
    front_df = front_df.drop(columns=["state", "front", "fail_reason"])
    _whole_numbers(front_df).to_csv(out / "front.csv", index=False)
    _whole_numbers(df).to_csv(out / "trials.csv", index=False)

    budget_given = budget is not None
    # weight-level sparsity leaves dense MACs alone: its axis is the MACs of non-zero weights
    axis = "macs" if record.config.space.kind == "channels" else "nonzero_macs"
    axis_title = "MACs (one example)" if axis == "macs" else "MACs of non-zero weights (one example)"
    base_macs = float(getattr(base, axis))
    macs_traces = chart_traces(df, axis, budget_given)
    size_traces = chart_traces(df, "size", budget_given)
    write_png(
        macs_traces,
        axis_title,
        out / "accuracy_vs_macs.png",
        base_macs,
        f"{study.study_name}: validation accuracy vs {axis_title.removesuffix(' (one example)')}",
    )
    write_png(
        size_traces,
        "weights file bytes",
        out / "accuracy_vs_size.png",
        base.size,
        f"{study.study_name}: validation accuracy vs size",
    )

    done = df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"])
    feasible = done[done["feasible_at_search"] != False]  # noqa: E712
    hv = hypervolume_history(
        list(
            zip(
                feasible["trial"].astype(int),
                feasible["accuracy"].astype(float),
                feasible[axis].astype(float),
                strict=True,
            )
        ),
        base_macs,
    )
    speed_html = ""
    if base_latency is not None and front_df["speedup"].notna().any():
        points = speed_points(front_df, float(base.macs))
        runtime = base_latency.runtime
        write_speed_png(points, runtime, out / "speedup_vs_macs.png", f"{study.study_name}: speedup on {runtime}")
        speed_html = speed_section(front_df, float(base.macs), base_latency, speed_div(points, runtime, "chart-speed"))
    importances, importance_note = parameter_importances(study)
    sensitivity = record.sensitivity
    page = html_page(
        study=study,
        record=record,
        df=df,
        front_df=front_df,
        budget=budget,
        command=command,
        macs_div=plotly_div(macs_traces, axis_title, "chart-macs", base_macs),
        size_div=plotly_div(size_traces, "weights file bytes", "chart-size", base.size),
        sensitivity=(sensitivity, sensitivity_div(sensitivity, "chart-sensitivity")) if sensitivity else None,
        sparsity_div=sparsity_div(front_df, "chart-sparsity") if front_df["sparsity"].notna().any() else None,
        hv=hv,
        importances=importances,
        importance_note=importance_note,
        tests_measured=test_accuracy,
        speed_html=speed_html,
        chart_data={
            "trials": [int(v) for v in done["trial"]],
            "front": numbers,
            "baselines": [int(v) for v in done[done["baseline"].notna()]["trial"]],
            "infeasible": [int(v) for v in done[done.get("fits_budget", pd.Series(dtype=object)) == False]["trial"]]  # noqa: E712
            if budget_given
            else [],
            "accuracy_vs_macs": macs_traces,
            "accuracy_vs_size": size_traces,
            "hypervolume": hv,
        },
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "summary.md").write_text(
        summary_markdown(
            study, base, front_df, len(df), budget, command, bool(tests), test_accuracy, base_latency, made_by
        ),
        encoding="utf-8",
    )
    seconds = time.perf_counter() - start
    log.info("report: %d trials, front of %d, written to %s in %.1fs", len(df), len(numbers), out, seconds)
    return Report(out, numbers, seconds)


def _whole_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its count columns (MACs, parameters, bytes, steps, the parent trial) as integers
    that may be missing: pandas stores a column of ints with a gap as floats, so a failed trial
    would write every other trial's MACs as ``12345.0``."""
    counts = [f.name for f in dataclasses.fields(TrialRow) if f.type in ("int", "int | None") and f.name in df]
    return df.astype(dict.fromkeys(counts, "Int64"))


__all__ = ["FILES", "Report", "trials_frame", "write_report"]
