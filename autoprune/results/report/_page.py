"""The report's page (HTML, self-contained) and ``summary.md``."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
import pandas as pd

from autoprune.budget import ResolvedBudget, format_figure
from autoprune.config import FidelitySection
from autoprune.results.report._charts import line_div
from autoprune.results.rows import pick_floor, trial_note
from autoprune.search.record import StudyRecord
from autoprune.trial.latency import Timing
from autoprune.trial.metrics import Measurement
from autoprune.trial.sensitivity import Sensitivity


def _esc(value: object) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bar(fraction: float, label: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<div class="bar"><span style="width:{width:.1f}%"></span><em>{_esc(label)}</em></div>'


def _fmt(value: Any, figure: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format_figure(figure, float(value))


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.settings td{text-align:left}.note{color:#666;font-size:12.5px}.test{color:#6a1b9a}
.bar{position:relative;width:90px;height:15px;background:#eee}.bar span{position:absolute;left:0;top:0;
bottom:0;background:#7aa6e6}.bar em{position:relative;font-style:normal;font-size:11px;padding-left:3px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}@media(max-width:900px){.grid{grid-template-columns:1fr}}
"""


def _settings_html(config: dict[str, Any]) -> str:
    rows = []
    for section, values in config.items():
        for key, value in values.items():
            rows.append((f"<code>{_esc(section)}.{_esc(key)}</code>", f"<code>{_esc(json.dumps(value))}</code>"))
    return _table(["key", "value"], rows, "settings")


def _front_table(front_df: pd.DataFrame, budget_given: bool) -> str:
    sparse = bool((front_df["nonzero_macs"] != front_df["macs"]).any())
    header = [
        "trial",
        "val acc",
        "% base",
        "test acc †",
        "MACs",
        "% base",
        *(["non-zero MACs", "% base"] if sparse else []),
        "params",
        "% base",
        "size",
        "% base",
        "fine-tune samples",
        "scorer",
        "ft steps",
        "prune steps",
        "lr",
        "note",
    ]
    if budget_given:
        header.append("fits budget")
    rows = []
    for r in front_df.itertuples(index=False):
        row = [
            str(r.trial),
            f"{r.accuracy:.4f}",
            f"{r.accuracy_pct:.1f}",
            f'<span class="test">{r.test_accuracy:.4f}</span>' if pd.notna(r.test_accuracy) else "–",
            f"{int(r.macs):,}",
            f"{r.macs_pct:.1f}",
            *([f"{int(r.nonzero_macs):,}", f"{r.nonzero_macs_pct:.1f}"] if sparse else []),
            f"{int(r.params):,}",
            f"{r.params_pct:.1f}",
            f"{int(r.size):,}",
            f"{r.size_pct:.1f}",
            f"{int(r.finetune_cost or 0):,}",
            _esc(r.scorer),
            str(r.finetune_steps),
            str(r.prune_steps),
            f"{r.lr:.3g}",
            trial_note(r.baseline, r.rung, r.parent),
        ]
        if budget_given:
            row.append("yes" if r.fits_budget else "<b>no</b>")
        rows.append(row)
    return _table(header, rows)


def _kept_table(front_df: pd.DataFrame, groups: dict[str, int]) -> str:
    rows = []
    for r in front_df.itertuples(index=False):
        kept = json.loads(r.kept)
        cells = [f"trial {r.trial}"]
        for name, channels in groups.items():
            k = kept.get(name, channels)
            cells.append(_bar(k / channels if channels else 0.0, f"{k}/{channels}"))
        rows.append(cells)
    return _table(["trial", *groups], rows)


def _spread(label: str, values: pd.Series) -> tuple[str, ...]:
    """A row of ``label`` and the minimum, median and maximum of ``values``."""
    values = values.astype(float)
    return (label, *(f"{v:.0f}" for v in (values.min(), values.median(), values.max())))


def _rung_table(df: pd.DataFrame, front_df: pd.DataFrame, fidelity: FidelitySection) -> str:
    """Promotion across fine-tune budgets: per rung, its completed runs, their fine-tune budget and
    validation accuracy, and how many are on the front."""
    done = df[df["state"] == "COMPLETE"]
    eta = fidelity.eta
    rows = []
    for rung in range(fidelity.rungs):
        runs = done[done["rung"] == rung]
        accuracy = runs["accuracy"].astype(float)
        rows.append(
            (
                str(rung),
                str(len(runs)),
                f"{eta**rung}×",
                f"{accuracy.median():.4f}" if len(runs) else "–",
                f"{accuracy.max():.4f}" if len(runs) else "–",
                str(int((front_df["rung"] == rung).sum())),
            )
        )
    return _table(["rung", "runs", "fine-tune steps (× the first)", "median val acc", "best val acc", "front"], rows)


def _usage_tables(front_df: pd.DataFrame, df: pd.DataFrame) -> str:
    done = df[df["state"] == "COMPLETE"]
    scorers = sorted(set(done["scorer"].dropna()))
    rows = [
        (_esc(s), str(int((front_df["scorer"] == s).sum())), str(int((done["scorer"] == s).sum()))) for s in scorers
    ]
    scorer_table = _table(["scorer", "front trials", "all trials"], rows)
    budgets = _table(
        ["", "min", "median", "max"],
        [
            _spread("fine-tune steps (front)", front_df["finetune_steps"]),
            _spread("fine-tune steps (all)", done["finetune_steps"]),
            _spread("prune steps (front)", front_df["prune_steps"]),
        ],
    )
    return f'<div class="grid"><div>{scorer_table}</div><div>{budgets}</div></div>'


def html_page(
    *,
    study: optuna.Study,
    record: StudyRecord,
    df: pd.DataFrame,
    front_df: pd.DataFrame,
    budget: ResolvedBudget | None,
    command: str,
    macs_div: str,
    size_div: str,
    sensitivity: tuple[Sensitivity, str] | None,
    sparsity_div: str | None,
    hv: list[tuple[int, float]],
    importances: dict[str, float],
    importance_note: str,
    tests_measured: bool,
    chart_data: dict[str, Any],
    speed_html: str = "",
) -> str:
    from plotly.offline import get_plotlyjs

    base, config = record.base, record.config
    states = df["state"].value_counts().to_dict()
    n_complete = int(states.get("COMPLETE", 0))
    budget_text = budget.describe_all() if budget is not None else "none"
    outside = int((df.get("fits_budget", pd.Series(dtype=object)) == False).sum())  # noqa: E712
    any_test = front_df["test_accuracy"].notna().any()
    if any_test:
        test_note = (
            "† test accuracy: measured once for this report on the <b>test split</b>, which the search "
            "never saw; it is not what the search optimized (that is validation accuracy)."
        )
    elif tests_measured:
        test_note = (
            "† test accuracy: not available — no fine-tuned weights are stored for these trials (the "
            "search keeps them for front members only; synthetic or older studies have none)."
        )
    else:
        test_note = "† test accuracy: not measured (--no-test)."
    imp_html = (
        _table(
            ["parameter", "importance for accuracy"],
            [
                (f"<code>{_esc(k)}</code>", _bar(v / max(importances.values()), f"{v:.3f}"))
                for k, v in importances.items()
            ],
        )
        if importances
        else f'<p class="note">Not computable: {_esc(importance_note)}</p>'
    )
    hv_final = hv[-1][1] if hv else 0.0
    sections = [
        f"<h1>autoprune report: study <code>{_esc(study.study_name)}</code></h1>",
        f'<p class="note">Regenerate: <code>{_esc(command)}</code> · {len(df)} trials '
        f"({', '.join(f'{v} {k.lower()}' for k, v in states.items())}) · front of {len(front_df)} · "
        f"objectives: {_esc(', '.join(study.metric_names or []))} · budget: {_esc(budget_text)}"
        + (f" ({outside} trials outside it)" if budget is not None else "")
        + "</p>",
        "<h2>Base model</h2>",
        _table(
            ["validation accuracy", "MACs", "parameters", "weights file bytes", "model", "data"],
            [
                (
                    f"{base.accuracy:.4f}",
                    f"{base.macs:,}",
                    f"{base.params:,}",
                    f"{base.size:,}",
                    _esc(config.model.name),
                    _esc(config.data.name),
                )
            ],
        ),
        "<h2>Validation accuracy against MACs and size</h2>",
        '<p class="note">Grey: every completed trial; red ×: outside the budget; orange: the enqueued baselines '
        "(study.baselines); blue dots: the Pareto front over all objectives, at or above the pick floor; blue "
        "line: the front members not dominated in this two-figure view. Hover for the policy; drag to zoom.</p>",
        f'<div class="grid"><div>{macs_div}</div><div>{size_div}</div></div>',
        "<h2>The front</h2>",
        f'<p class="note">From the largest MACs down; every figure absolute and as % of the base model. Front '
        f"trials under the pick floor, validation accuracy {pick_floor(record):.4f} (study.pick_floor of the way "
        "from chance to the base model), are left out: no one would deploy them.</p>",
        _front_table(front_df, budget is not None),
        f'<p class="note test">{test_note}</p>',
        speed_html,
        "<h2>Convergence: hypervolume of the front over trials</h2>",
        f'<p class="note">Accuracy vs MACs front of the trials feasible at search time; area dominated in '
        f"(MACs / base MACs, validation accuracy) against the fixed reference point (MACs = base, accuracy = 0), "
        f"so 1.0 would be a perfect model that costs nothing. Final: <b>{hv_final:.4f}</b>.</p>",
        line_div(hv, "chart-hv") if hv else "<p>No trials.</p>",
        "<h2>Kept channels per group (front members)</h2>",
        _kept_table(front_df, record.groups),
        *(
            [
                "<h2>Zero weights per layer (front members)</h2>",
                '<p class="note">Share of each convolution and linear layer\'s weights that are exactly zero; '
                "the size column counts them packed (a bit each, plus the non-zero values).</p>",
                sparsity_div,
            ]
            if sparsity_div is not None
            else []
        ),
        *(
            [
                "<h2>Sensitivity of each group, pruned alone</h2>",
                f'<p class="note">{_esc(sensitivity[0].describe())} Least sensitive first: '
                f"{_esc(', '.join(g for g, _rise in sensitivity[0].ranking()))}.</p>",
                sensitivity[1],
            ]
            if sensitivity is not None
            else []
        ),
        *(
            [
                "<h2>Promotion across fine-tune budgets</h2>",
                f'<p class="note">Once the study\'s {config.study.trials} trials had run, the most accurate '
                f"1/{config.fidelity.eta} of each band of MACs (octaves of the base model's) were fine-tuned "
                f"{config.fidelity.eta}× as long in all, continuing from their weights, rung after rung; "
                "the front holds the highest rung each policy reached (the note column names it).</p>",
                _rung_table(df, front_df, config.fidelity),
            ]
            if config.fidelity.rungs > 1
            else []
        ),
        "<h2>Scorers and fine-tune budgets the front used</h2>",
        _usage_tables(front_df, df),
        "<h2>Hyperparameter importances (target: validation accuracy)</h2>",
        imp_html,
        "<h2>Study settings</h2>",
        _settings_html(config.to_dict()),
        f'<p class="note">{n_complete} completed trials. Written by autoprune; the page works offline.</p>',
    ]
    data_json = json.dumps(chart_data).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>autoprune report: {_esc(study.study_name)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>\n'
        + "\n".join(sections)
        + f'\n<script type="application/json" id="autoprune-data">{data_json}</script>\n</body></html>\n'
    )


def _md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" ---: " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_rows(front_df: pd.DataFrame, base_macs: float) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and, for each timed front member, its trial, MACs as % of base, MACs reduction,
    measured latency (and predicted, where the study's latency model predicted it) and speedup."""
    predicted = "latency_error" in front_df.columns
    header = ("trial", "MACs % base", "MACs reduction", "measured latency", *(["predicted"] if predicted else []))
    rows: list[tuple[str, ...]] = []
    for r in front_df.dropna(subset=["speedup"]).itertuples(index=False):
        guess = [f"{r.latency_ms:.3g} ms ({100 * r.latency_error:+.1f} %)"] if predicted else []
        rows.append(
            (
                str(r.trial),
                f"{r.macs_pct:.1f}",
                f"{base_macs / float(r.macs):.2f}×",
                f"{r.latency_measured_ms:.3g} ms ±{50 * r.latency_spread:.1f} %",
                *guess,
                f"{r.speedup:.2f}×",
            )
        )
    return (*header, "speedup"), rows


def prediction_note(front_df: pd.DataFrame) -> str:
    """How far the study's predicted latencies were from the front's measured ones ("" when the study
    timed its trials)."""
    if "latency_error" not in front_df.columns:
        return ""
    errors = front_df["latency_error"].dropna().abs()
    if errors.empty:
        return ""
    note = (
        f"The search predicted each trial's latency from the study's latency model; against the timings here, "
        f"off by {100 * errors.median():.1f} % (median) and {100 * errors.max():.1f} % at most, over "
        f"{len(errors)} front members."
    )
    speedups = front_df["speedup_error"].dropna().abs() if "speedup_error" in front_df.columns else errors[:0]
    if not speedups.empty:
        note += (
            f" Their speedups over the base model, which divide timings of the same moments and so do not carry "
            f"a change of the machine's speed since the search, off by {100 * speedups.median():.1f} % (median) "
            f"and {100 * speedups.max():.1f} % at most."
        )
    return note


def speed_section(front_df: pd.DataFrame, base_macs: float, base: Timing, div: str) -> str:
    """The report's speed section: each timed front member's latency on the study's runtime and its
    speedup over the base model, against its MACs reduction."""
    header, rows = speed_rows(front_df, base_macs)
    return "\n".join(
        [
            f"<h2>Speed on {_esc(base.runtime)}</h2>",
            f'<p class="note">Each front member and the base model timed for this report, on this machine: '
            f"{_esc(base.where)}, batch of the study's <code>trial.latency_batch_size</code>; median of the passes "
            f"± half their interquartile range. Base model: {_esc(base.describe())}. Points under the dotted line "
            "are slower than their MACs promise (memory-bound layers, channel counts the kernels do not like, "
            f"fixed costs of the runtime). {_esc(prediction_note(front_df))}</p>",
            _table(list(header), rows),
            div,
        ]
    )


def summary_markdown(
    study: optuna.Study,
    base: Measurement,
    front_df: pd.DataFrame,
    n_trials: int,
    budget: ResolvedBudget | None,
    command: str,
    any_test: bool,
    tests_measured: bool,
    base_latency: Timing | None,
    made_by: str,
) -> str:
    sparse = bool((front_df["nonzero_macs"] != front_df["macs"]).any())
    rows = []
    for r in front_df.itertuples(index=False):
        rows.append(
            (
                r.trial,
                f"{r.accuracy:.4f}",
                f"{r.test_accuracy:.4f}" if pd.notna(r.test_accuracy) else "–",
                f"{_fmt(r.macs, 'macs')} ({r.macs_pct:.1f}%)",
                *([f"{_fmt(r.nonzero_macs, 'macs')} ({r.nonzero_macs_pct:.1f}%)"] if sparse else []),
                f"{_fmt(r.params, 'params')} ({r.params_pct:.1f}%)",
                f"{_fmt(r.size, 'size')} ({r.size_pct:.1f}%)",
                r.scorer,
                r.finetune_steps,
                r.prune_steps,
                trial_note(r.baseline, r.rung, r.parent),
            )
        )
    macs = ["MACs", "non-zero MACs"] if sparse else ["MACs"]
    table = _md_table(
        ["trial", "val acc", "test acc*", *macs, "params", "size", "scorer", "ft steps", "prune steps", "note"], rows
    )
    note = (
        "*test accuracy: measured once on the held-out test split, which the search never saw."
        if any_test
        else "*test accuracy: not available (no stored fine-tuned weights)."
        if tests_measured
        else "*test accuracy: not measured."
    )
    return "\n".join(
        [
            f"# Pareto front of study `{study.study_name}`",
            "",
            f"Base model: validation accuracy {base.accuracy:.4f}, {_fmt(base.macs, 'macs')} MACs, "
            f"{_fmt(base.params, 'params')} parameters, {_fmt(base.size, 'size')}. "
            f"Budget: {budget.describe_all() if budget is not None else 'none'}. "
            f"{len(front_df)} front trials of {n_trials}.",
            "",
            table,
            "",
            note,
            "",
            *(
                [
                    f"Speed on {base_latency.runtime} ({base_latency.where}), timed for this report; base model "
                    f"{base_latency.describe()}. {prediction_note(front_df)}".rstrip(),
                    "",
                    _md_table(*speed_rows(front_df, float(base.macs))),
                    "",
                ]
                if base_latency is not None and front_df["speedup"].notna().any()
                else []
            ),
            f"Regenerate: `{command}`",
            "",
            f"Report made by {made_by}.",
            "",
        ]
    )
