"""The report's charts (and the sensitivity analysis's): plotly traces and divs for the page, PNG files
through matplotlib."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from autoprune.results.pareto import front_2d
from autoprune.trial.sensitivity import Sensitivity

_GREY, _FRONT, _BASELINE, _OUT = "#b0b0b0", "#1f5fbf", "#e07b00", "#c0392b"


def chart_traces(df: pd.DataFrame, x: str, budget_given: bool) -> list[dict[str, Any]]:
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


def plotly_div(traces: list[dict[str, Any]], x_title: str, div_id: str, base_x: float) -> str:
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


def line_div(points: list[tuple[int, float]], div_id: str) -> str:
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


def write_png(traces: list[dict[str, Any]], x_title: str, path: Path, base_x: float, title: str) -> None:
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


def speed_points(front_df: pd.DataFrame, base_macs: float) -> list[tuple[int, float, float]]:
    """(trial, MACs reduction ×, measured speedup ×) of each front member timed for the report."""
    timed = front_df.dropna(subset=["speedup"])
    return [
        (int(r.trial), base_macs / float(r.macs), float(r.speedup)) for r in timed.itertuples(index=False) if r.macs
    ]


def speed_div(points: list[tuple[int, float, float]], runtime: str, div_id: str) -> str:
    """Speedup against MACs reduction, with the line where they are equal."""
    top = max([1.0, *(max(p[1], p[2]) for p in points)])
    data = [
        {
            "type": "scatter",
            "x": [1.0, top],
            "y": [1.0, top],
            "mode": "lines",
            "line": {"color": "#999", "dash": "dot"},
            "name": "speedup = MACs reduction",
        },
        {
            "type": "scatter",
            "x": [p[1] for p in points],
            "y": [p[2] for p in points],
            "text": [f"trial {p[0]}" for p in points],
            "mode": "markers",
            "marker": {"color": _FRONT, "size": 8},
            "name": "front members",
        },
    ]
    layout = {
        "xaxis": {"title": {"text": "MACs reduction (base MACs / MACs)"}, "type": "log"},
        "yaxis": {"title": {"text": f"measured speedup on {runtime} (base latency / latency)"}, "type": "log"},
    }
    return _plot(div_id, data, layout, 380)


def write_speed_png(points: list[tuple[int, float, float]], runtime: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    top = max([1.0, *(max(p[1], p[2]) for p in points)])
    ax.plot([1.0, top], [1.0, top], color="#999", ls=":", lw=1, label="speedup = MACs reduction")
    ax.scatter([p[1] for p in points], [p[2] for p in points], c=_FRONT, s=40, label="front members", zorder=3)
    for trial, x, y in points:
        ax.annotate(str(trial), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs reduction (base MACs / MACs)")
    ax.set_ylabel(f"measured speedup on {runtime}")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _palette(count: int) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(count)]


def sparsity_div(front_df: pd.DataFrame, div_id: str) -> str:
    """Each front member's share of zero weights per layer, one bar group per layer in the model's order."""
    data: list[dict[str, Any]] = []
    members = front_df[front_df["sparsity"].notna()]
    for (trial, shares), color in zip(
        zip(members["trial"], members["sparsity"], strict=True), _palette(len(members)), strict=True
    ):
        layers = json.loads(shares)
        data.append(
            {
                "type": "bar",
                "name": f"trial {int(trial)}",
                "x": list(layers),
                "y": [100 * v for v in layers.values()],
                "marker": {"color": color},
                "hovertemplate": f"trial {int(trial)}<br>%{{x}}<br>%{{y:.1f}}% zero<extra></extra>",
            }
        )
    layout = {
        "barmode": "group",
        "xaxis": {"title": {"text": "layer"}},
        "yaxis": {"title": {"text": "% of its weights zero"}, "range": [0, 100]},
        "legend": {"orientation": "h", "y": -0.3},
        "margin": {"l": 60, "r": 20, "t": 30, "b": 80},
    }
    return _plot(div_id, data, layout, 460)


def sensitivity_div(sensitivity: Sensitivity, div_id: str) -> str:
    """Validation accuracy of each group pruned alone against its ratio (solid, left axis) and the
    share of the base model's MACs that pruning saves (dotted, right axis), one colour per group."""
    data: list[dict[str, Any]] = []
    for group, color in zip(sensitivity.groups, _palette(len(sensitivity.groups)), strict=True):
        curve = sensitivity.curve(group)
        ratios = [0.0, *(p.ratio for p in curve)]
        common: dict[str, Any] = {"type": "scatter", "x": ratios, "legendgroup": group, "line": {"color": color}}
        data.append(
            common
            | {
                "y": [sensitivity.base_accuracy, *(p.accuracy for p in curve)],
                "mode": "lines+markers",
                "name": group,
                "hovertemplate": f"{group}<br>ratio %{{x:.2f}}<br>val acc %{{y:.4f}}<extra></extra>",
            }
        )
        saved = [0.0, *(100 * (1 - p.macs / sensitivity.base_macs) for p in curve)]
        data.append(
            common
            | {
                "y": saved,
                "yaxis": "y2",
                "mode": "lines",
                "line": {"color": color, "dash": "dot", "width": 1},
                "showlegend": False,
                "hovertemplate": f"{group}<br>ratio %{{x:.2f}}<br>MACs saved %{{y:.1f}}%<extra></extra>",
            }
        )
    layout = {
        "xaxis": {"title": {"text": "ratio of the group's channels removed (that group alone)"}},
        "yaxis": {"title": {"text": "validation accuracy (solid)"}},
        "yaxis2": {"title": {"text": "% of base MACs saved (dotted)"}, "overlaying": "y", "side": "right"},
        "legend": {"orientation": "h", "y": -0.25},
        "margin": {"l": 60, "r": 60, "t": 30, "b": 50},
    }
    return _plot(div_id, data, layout, 560)


def write_sensitivity_png(sensitivity: Sensitivity, path: Path, title: str) -> None:
    """:func:`sensitivity_div` as a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    saved_ax = ax.twinx()
    for group, color in zip(sensitivity.groups, _palette(len(sensitivity.groups)), strict=True):
        curve = sensitivity.curve(group)
        ratios = [0.0, *(p.ratio for p in curve)]
        ax.plot(ratios, [sensitivity.base_accuracy, *(p.accuracy for p in curve)], color=color, lw=1.6, label=group)
        saved_ax.plot(
            ratios, [0.0, *(100 * (1 - p.macs / sensitivity.base_macs) for p in curve)], color=color, lw=1, ls=":"
        )
    ax.set_xlabel("ratio of the group's channels removed (that group alone)")
    ax.set_ylabel("validation accuracy (solid)")
    saved_ax.set_ylabel("% of base MACs saved (dotted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
