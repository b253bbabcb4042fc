"""The Pareto report of a stored study: one self-contained HTML page, CSV tables, Markdown and PNG.

Everything is read from the study (its trials' user attributes and the ``autoprune`` study
attribute); nothing is retrained. The only computation on data is the test accuracy of front
members whose fine-tuned weights were kept, measured once per report on the test split, which the
search never saw.

Files written to the output folder: ``index.html`` (opens from disk, plotly.js embedded),
``front.csv``, ``trials.csv``, ``summary.md``, ``accuracy_vs_macs.png``, ``accuracy_vs_size.png``.
"""

from __future__ import annotations

import html
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from autoprune._logging import get_logger
from autoprune.budget import ResolvedBudget, format_figure
from autoprune.errors import AutopruneError
from autoprune.metrics import accuracy
from autoprune.policy import Policy
from autoprune.storage import redact_text
from autoprune.study import front_numbers as front_numbers_of
from autoprune.study import stored_weights, study_artifacts, study_info

log = get_logger(__name__)

HV_REFERENCE = (1.0, 0.0)
"""Hypervolume reference point in (MACs / base MACs, accuracy): the base model's MACs at accuracy 0."""

FILES = ("index.html", "front.csv", "trials.csv", "summary.md", "accuracy_vs_macs.png", "accuracy_vs_size.png")

_GREY, _FRONT, _BASELINE, _OUT = "#b0b0b0", "#1f5fbf", "#e07b00", "#c0392b"


def hypervolume_2d(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` and bounded by ``reference``, both coordinates minimized.

    Points not strictly better than the reference in both coordinates add nothing; dominated and
    duplicate points are harmless.
    """
    rx, ry = reference
    inside = sorted((x, y) for x, y in points if x < rx and y < ry)
    area, best_y = 0.0, ry
    for x, y in inside:
        if y < best_y:
            area += (rx - x) * (best_y - y)
            best_y = y
    return area


def hypervolume_history(rows: Sequence[tuple[int, float, float]], base_macs: float) -> list[tuple[int, float]]:
    """Hypervolume of the accuracy-vs-MACs front after each trial, from ``(trial, accuracy, macs)`` rows.

    Coordinates are (MACs / base MACs, -accuracy) against :data:`HV_REFERENCE`: 1.0 would be a
    perfect model that costs nothing.
    """
    reference = (HV_REFERENCE[0], -HV_REFERENCE[1])
    front: list[tuple[float, float]] = []
    history = []
    for number, acc, macs in sorted(rows):
        point = (macs / base_macs, -acc)
        if not any(fx <= point[0] and fy <= point[1] for fx, fy in front):
            front = [(fx, fy) for fx, fy in front if not (point[0] <= fx and point[1] <= fy)] + [point]
        history.append((number, hypervolume_2d(front, reference)))
    return history


def front_2d(xs: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the points not dominated in (x minimized, accuracy maximized), by increasing x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -accs[i]))
    kept, best = [], -math.inf
    for i in order:
        if accs[i] > best:
            kept.append(i)
            best = accs[i]
    return kept


@dataclass(frozen=True)
class Report:
    """Where the report was written, and what it found."""

    folder: Path
    front: list[int]
    seconds: float

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


def _summary(policy: dict[str, Any]) -> str:
    try:
        return Policy.from_dict(policy).summary()
    except AutopruneError:
        return ""


def trials_frame(
    study: optuna.Study, budget: ResolvedBudget | None = None, front: Iterable[int] | None = None
) -> pd.DataFrame:
    """One row per trial: state, measured figures (absolute and % of base), policy, front membership,
    search-time feasibility and, with ``budget``, whether it fits and by how much it breaks each limit."""
    base = study_info(study)["base"]
    on_front = set(front) if front is not None else {t.number for t in study.best_trials}
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        policy = attrs.get("policy", {})
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        complete = t.state == TrialState.COMPLETE and "kept" in attrs
        for name in ("accuracy", "macs", "params", "size"):
            value = attrs.get(name) if complete else None
            row[name] = value
            row[f"{name}_pct"] = 100.0 * value / base[name] if value is not None and base[name] else None
        row["finetune_cost"] = attrs.get("finetune_cost")
        row["scorer"] = policy.get("scorer")
        row["finetune_steps"] = policy.get("finetune_steps")
        row["prune_steps"] = policy.get("prune_steps")
        row["lr"] = policy.get("lr")
        row["baseline"] = attrs.get("baseline")
        row["front"] = t.number in on_front
        row["feasible_at_search"] = all(v <= 0 for v in t.constraints.values()) if complete else None
        for key, value in t.constraints.items():
            row[f"constraint.{key}"] = value
        if budget is not None:
            violations = budget.violations(attrs) if complete else {}
            row["fits_budget"] = all(v <= 0 for v in violations.values()) if complete else None
            for key in budget.limits:
                row[f"violation.{key}"] = violations.get(key)
        row["seconds"] = sum(attrs.get("seconds", {}).values()) if complete else None
        row["summary"] = _summary(policy) if policy else ""
        row["kept"] = json.dumps(attrs["kept"], sort_keys=True) if complete else None
        row["fail_reason"] = attrs.get("fail_reason")
        rows.append(row)
    return pd.DataFrame(rows)


def _test_accuracies(study: optuna.Study, numbers: Sequence[int], storage: str | None) -> dict[int, float]:
    """Test accuracy of each front member whose weights were kept (the data is loaded once)."""
    weights = stored_weights(study_artifacts(study, storage))
    todo = [n for n in numbers if n in weights]
    if not todo:
        return {}
    from autoprune.config import config_from_dict
    from autoprune.export import study_data, trial_model

    data = study_data(study)
    batch_size = config_from_dict(study_info(study)["config"]).data.batch_size
    out = {}
    for number in todo:
        try:
            out[number] = accuracy(trial_model(study, number, storage=storage), data.test, batch_size)
        except AutopruneError as exc:
            log.warning("report: no test accuracy for trial %d: %s", number, exc)
    return out


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    directions = study.directions
    names = study.metric_names or []
    index = names.index("accuracy") if "accuracy" in names else 0
    if len(directions) <= index:
        return {}, "no accuracy objective"
    try:
        # PED-ANOVA (Optuna's default evaluator) rates what leads to *low* targets: negate accuracy
        sign = -1.0 if directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's reminder about the target's sign
            values = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[index])
    except Exception as exc:  # importances fail on tiny or degenerate studies: say so, keep the report
        return {}, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {k: float(v) for k, v in values.items()}, ""


# ----------------------------------------------------------------------------------------------- charts


def _chart_traces(df: pd.DataFrame, x: str, budget_given: bool) -> list[dict[str, Any]]:
    """The chart's series as plain dicts: all trials, outside budget, baselines, front, 2-D front line."""
    done = df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"])
    inside = done[done["fits_budget"] != False] if budget_given else done  # noqa: E712 (None means unknown)
    outside = done[done["fits_budget"] == False] if budget_given else done.iloc[0:0]  # noqa: E712
    base_rows = done[done["baseline"].notna()].sort_values(x)
    front = done[done["front"]].sort_values(x)
    line_idx = front_2d(front[x].tolist(), front["accuracy"].tolist())
    line = front.iloc[line_idx]

    def series(frame: pd.DataFrame) -> dict[str, Any]:
        return {
            "x": [float(v) for v in frame[x]],
            "y": [float(v) for v in frame["accuracy"]],
            "trial": [int(v) for v in frame["trial"]],
            "text": [f"trial {n}: {s}" for n, s in zip(frame["trial"], frame["summary"], strict=True)],
        }

    return [
        {"name": "all trials", "kind": "trials", "color": _GREY, "symbol": "circle", "mode": "markers"}
        | series(inside),
        {"name": "outside budget", "kind": "infeasible", "color": _OUT, "symbol": "x", "mode": "markers"}
        | series(outside),
        {
            "name": "baselines",
            "kind": "baseline",
            "color": _BASELINE,
            "symbol": "diamond",
            "mode": "lines+markers",
        }
        | series(base_rows),
        {"name": "front (all objectives)", "kind": "front", "color": _FRONT, "symbol": "circle", "mode": "markers"}
        | series(front),
        {"name": "front in this projection", "kind": "front_line", "color": _FRONT, "symbol": "circle", "mode": "lines"}
        | series(line),
    ]


def _plot(div_id: str, traces: list[dict[str, Any]], layout: dict[str, Any], height: int) -> str:
    """A div and the script that draws it with the page's embedded plotly.js."""
    layout = {
        "template": "plotly_white",
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "hovermode": "closest",
    } | layout
    payload = json.dumps({"data": traces, "layout": layout}).replace("</", "<\\/")
    return (
        f'<div id="{div_id}" class="chart" style="height:{height}px"></div>'
        f"<script>(function(){{var f={payload};"
        f'Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>'
    )


def _plotly_div(traces: list[dict[str, Any]], x_title: str, div_id: str, base_x: float) -> str:
    data = []
    for t in traces:
        if not t["x"]:
            continue
        data.append(
            {
                "type": "scatter",
                "x": t["x"],
                "y": t["y"],
                "mode": t["mode"],
                "name": t["name"],
                "text": t["text"],
                "customdata": t["trial"],
                "hovertemplate": "%{text}<br>x %{x:,.0f}<br>val acc %{y:.4f}<extra></extra>",
                "marker": {
                    "color": t["color"],
                    "symbol": t["symbol"],
                    "size": 9 if t["kind"] == "front" else 6,
                    "opacity": 0.55 if t["kind"] == "trials" else 1.0,
                },
                "line": {"color": t["color"], "width": 2},
            }
        )
    layout = {
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": "validation accuracy"}},
        "legend": {"orientation": "h", "y": -0.2},
        "shapes": [
            {
                "type": "line",
                "x0": base_x,
                "x1": base_x,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dot", "color": "#555", "width": 1},
            }
        ],
        "annotations": [{"x": base_x, "yref": "paper", "y": 1, "text": "base", "showarrow": False}],
    }
    return _plot(div_id, data, layout, 480)


def _line_div(points: list[tuple[int, float]], div_id: str) -> str:
    data = [
        {
            "type": "scatter",
            "x": [p[0] for p in points],
            "y": [p[1] for p in points],
            "mode": "lines+markers",
            "line": {"color": _FRONT},
            "marker": {"size": 4},
            "name": "hypervolume",
        }
    ]
    layout = {
        "xaxis": {"title": {"text": "trial"}},
        "yaxis": {"title": {"text": "hypervolume (accuracy × MACs saved)"}},
    }
    return _plot(div_id, data, layout, 320)


def _png(traces: list[dict[str, Any]], x_title: str, path: Path, base_x: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for t in traces:
        if not t["x"]:
            continue
        if "lines" in t["mode"]:
            ax.plot(
                t["x"],
                t["y"],
                color=t["color"],
                lw=1.8,
                label=t["name"],
                marker="D" if t["kind"] == "baseline" else None,
                ms=5,
            )
        else:
            ax.scatter(
                t["x"],
                t["y"],
                s=40 if t["kind"] == "front" else 14,
                c=t["color"],
                label=t["name"],
                marker="x" if t["kind"] == "infeasible" else "o",
                alpha=0.5 if t["kind"] == "trials" else 1,
                zorder=3 if t["kind"] == "front" else 2,
            )
    ax.axvline(base_x, color="#555", ls=":", lw=1)
    ax.set_xlabel(x_title)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- page


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


def write_report(
    study: optuna.Study,
    out: str | Path,
    *,
    budget: ResolvedBudget | None = None,
    storage: str | None = None,
    command: str = "",
    test_accuracy: bool = True,
) -> Report:
    """Write the report of ``study`` to ``out`` (created if needed) and return where it went.

    Args:
        study: A study made by autoprune.
        out: Output folder.
        budget: Marks trials outside it; ``None``: no budget.
        storage: The study's storage URL (finds the artifacts folder of studies created elsewhere).
        command: The command that regenerates the report, shown on the page and in ``summary.md``.
        test_accuracy: Measure front members on the test split (needs their kept weights).
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = study_info(study)
    base, config, groups = info["base"], info["config"], info["groups"]
    command = redact_text(
        command or f"autoprune report --storage {storage or '<storage URL>'} --study {study.study_name}"
    )
    front_numbers = front_numbers_of(study)
    df = trials_frame(study, budget, front_numbers)
    if df.empty or not (df["state"] == "COMPLETE").any():
        raise AutopruneError(f"study {study.study_name!r} has no completed trial to report")
    tests: dict[int, float] = _test_accuracies(study, front_numbers, storage) if test_accuracy else {}
    df["test_accuracy"] = df["trial"].map(tests)

    front_df = df[df["front"]].sort_values("trial").drop(columns=["state", "front", "fail_reason"])
    front_df.to_csv(out / "front.csv", index=False)
    df.to_csv(out / "trials.csv", index=False)

    budget_given = budget is not None
    macs_traces = _chart_traces(df, "macs", budget_given)
    size_traces = _chart_traces(df, "size", budget_given)
    _png(
        macs_traces,
        "MACs (one example)",
        out / "accuracy_vs_macs.png",
        base["macs"],
        f"{study.study_name}: validation accuracy vs MACs",
    )
    _png(
        size_traces,
        "state_dict bytes",
        out / "accuracy_vs_size.png",
        base["size"],
        f"{study.study_name}: validation accuracy vs size",
    )

    done = df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"])
    feasible = done[done["feasible_at_search"] != False]  # noqa: E712
    hv = hypervolume_history(
        list(
            zip(
                feasible["trial"].astype(int),
                feasible["accuracy"].astype(float),
                feasible["macs"].astype(float),
                strict=True,
            )
        ),
        float(base["macs"]),
    )
    importances, importance_note = _importances(study)
    page = _page(
        study=study,
        info=info,
        df=df,
        front_df=front_df,
        budget=budget,
        command=command,
        macs_div=_plotly_div(macs_traces, "MACs (one example)", "chart-macs", base["macs"]),
        size_div=_plotly_div(size_traces, "state_dict bytes", "chart-size", base["size"]),
        hv=hv,
        importances=importances,
        importance_note=importance_note,
        tests_measured=test_accuracy,
        groups=groups,
        config=config,
        chart_data={
            "trials": [int(v) for v in done["trial"]],
            "front": front_numbers,
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
        _summary_md(study, base, front_df, len(df), budget, command, bool(tests), test_accuracy), encoding="utf-8"
    )
    seconds = time.perf_counter() - start
    log.info("report: %d trials, front of %d, written to %s in %.1fs", len(df), len(front_numbers), out, seconds)
    return Report(out, front_numbers, seconds)


def _front_table(front_df: pd.DataFrame, base: dict[str, Any], budget_given: bool) -> str:
    header = [
        "trial",
        "val acc",
        "% base",
        "test acc †",
        "MACs",
        "% base",
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
            f"{int(r.params):,}",
            f"{r.params_pct:.1f}",
            f"{int(r.size):,}",
            f"{r.size_pct:.1f}",
            f"{int(r.finetune_cost or 0):,}",
            _esc(r.scorer),
            str(r.finetune_steps),
            str(r.prune_steps),
            f"{r.lr:.3g}",
            f"baseline {r.baseline:.2f}" if pd.notna(r.baseline) else "",
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


def _usage_tables(front_df: pd.DataFrame, df: pd.DataFrame) -> str:
    done = df[df["state"] == "COMPLETE"]
    scorers = sorted(set(done["scorer"].dropna()))
    rows = [
        (_esc(s), str(int((front_df["scorer"] == s).sum())), str(int((done["scorer"] == s).sum()))) for s in scorers
    ]
    scorer_table = _table(["scorer", "front trials", "all trials"], rows)
    steps = front_df["finetune_steps"].astype(float)
    budgets = _table(
        ["", "min", "median", "max"],
        [
            ("fine-tune steps (front)", f"{steps.min():.0f}", f"{steps.median():.0f}", f"{steps.max():.0f}"),
            (
                "fine-tune steps (all)",
                *(
                    f"{v:.0f}"
                    for v in (
                        done["finetune_steps"].min(),
                        done["finetune_steps"].median(),
                        done["finetune_steps"].max(),
                    )
                ),
            ),
            (
                "prune steps (front)",
                *(
                    f"{v:.0f}"
                    for v in (
                        front_df["prune_steps"].min(),
                        front_df["prune_steps"].median(),
                        front_df["prune_steps"].max(),
                    )
                ),
            ),
        ],
    )
    return f'<div class="grid"><div>{scorer_table}</div><div>{budgets}</div></div>'


def _page(
    *,
    study: optuna.Study,
    info: dict[str, Any],
    df: pd.DataFrame,
    front_df: pd.DataFrame,
    budget: ResolvedBudget | None,
    command: str,
    macs_div: str,
    size_div: str,
    hv: list[tuple[int, float]],
    importances: dict[str, float],
    importance_note: str,
    tests_measured: bool,
    groups: dict[str, int],
    config: dict[str, Any],
    chart_data: dict[str, Any],
) -> str:
    from plotly.offline import get_plotlyjs

    base = info["base"]
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
            ["validation accuracy", "MACs", "parameters", "state_dict bytes", "model", "data"],
            [
                (
                    f"{base['accuracy']:.4f}",
                    f"{base['macs']:,}",
                    f"{base['params']:,}",
                    f"{base['size']:,}",
                    _esc(config["model"]["name"]),
                    _esc(config["data"]["name"]),
                )
            ],
        ),
        "<h2>Validation accuracy against MACs and size</h2>",
        '<p class="note">Grey: every completed trial; red ×: outside the budget; orange: the enqueued baselines '
        "(study.baselines); blue dots: the Pareto front over all objectives (Optuna's best_trials); blue line: the "
        "front members not dominated in this two-figure view. Hover for the policy; drag to zoom.</p>",
        f'<div class="grid"><div>{macs_div}</div><div>{size_div}</div></div>',
        "<h2>The front</h2>",
        '<p class="note">Every figure absolute and as % of the base model.</p>',
        _front_table(front_df, base, budget is not None),
        f'<p class="note test">{test_note}</p>',
        "<h2>Convergence: hypervolume of the front over trials</h2>",
        f'<p class="note">Accuracy vs MACs front of the trials feasible at search time; area dominated in '
        f"(MACs / base MACs, validation accuracy) against the fixed reference point (MACs = base, accuracy = 0), "
        f"so 1.0 would be a perfect model that costs nothing. Final: <b>{hv_final:.4f}</b>.</p>",
        _line_div(hv, "chart-hv") if hv else "<p>No trials.</p>",
        "<h2>Kept channels per group (front members)</h2>",
        _kept_table(front_df, groups),
        "<h2>Scorers and fine-tune budgets the front used</h2>",
        _usage_tables(front_df, df),
        "<h2>Hyperparameter importances (target: validation accuracy)</h2>",
        imp_html,
        "<h2>Study settings</h2>",
        _settings_html(config),
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


def _summary_md(
    study: optuna.Study,
    base: dict[str, Any],
    front_df: pd.DataFrame,
    n_trials: int,
    budget: ResolvedBudget | None,
    command: str,
    any_test: bool,
    tests_measured: bool,
) -> str:
    rows = []
    for r in front_df.itertuples(index=False):
        rows.append(
            (
                r.trial,
                f"{r.accuracy:.4f}",
                f"{r.test_accuracy:.4f}" if pd.notna(r.test_accuracy) else "–",
                f"{_fmt(r.macs, 'macs')} ({r.macs_pct:.1f}%)",
                f"{_fmt(r.params, 'params')} ({r.params_pct:.1f}%)",
                f"{_fmt(r.size, 'size')} ({r.size_pct:.1f}%)",
                r.scorer,
                r.finetune_steps,
                r.prune_steps,
                f"baseline {r.baseline:.2f}" if pd.notna(r.baseline) else "",
            )
        )
    table = _md_table(
        ["trial", "val acc", "test acc*", "MACs", "params", "size", "scorer", "ft steps", "prune steps", "note"], rows
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
            f"Base model: validation accuracy {base['accuracy']:.4f}, {_fmt(base['macs'], 'macs')} MACs, "
            f"{_fmt(base['params'], 'params')} parameters, {_fmt(base['size'], 'size')}. "
            f"Budget: {budget.describe_all() if budget is not None else 'none'}. "
            f"{len(front_df)} front trials of {n_trials}.",
            "",
            table,
            "",
            note,
            "",
            f"Regenerate: `{command}`",
            "",
        ]
    )


__all__ = [
    "FILES",
    "HV_REFERENCE",
    "Report",
    "front_2d",
    "front_numbers_of",
    "hypervolume_2d",
    "hypervolume_history",
    "trials_frame",
    "write_report",
]
