"""The files of a sensitivity analysis: ``sensitivity.csv``, ``sensitivity.png`` and
``sensitivity.html`` (interactive, opens from disk), and the table ``autoprune sensitivity`` prints."""

from __future__ import annotations

import csv
import dataclasses
import html
from pathlib import Path

from autoprune.results.report._charts import sensitivity_div, write_sensitivity_png
from autoprune.trial.sensitivity import Point, Sensitivity

FILES = ("sensitivity.csv", "sensitivity.png", "sensitivity.html")


def write_sensitivity(sensitivity: Sensitivity, out: Path, title: str) -> dict[str, Path]:
    """Write :data:`FILES` to ``out`` (created if needed); their paths by name."""
    from plotly.offline import get_plotlyjs

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    columns = [f.name for f in dataclasses.fields(Point)]
    with paths["sensitivity.csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, "loss_increase", "macs_saved_pct"])
        writer.writeheader()
        for p in sensitivity.points:
            writer.writerow(
                dataclasses.asdict(p)
                | {
                    "loss_increase": round(p.loss - sensitivity.base_loss, 6),
                    "macs_saved_pct": round(100 * (1 - p.macs / sensitivity.base_macs), 3),
                }
            )
    write_sensitivity_png(sensitivity, paths["sensitivity.png"], title)
    paths["sensitivity.html"].write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        '<body style="font-family:system-ui,sans-serif;margin:2em">\n'
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(sensitivity.describe())}</p>\n"
        f"{sensitivity_div(sensitivity, 'chart-sensitivity')}\n</body></html>\n",
        encoding="utf-8",
    )
    return paths


def sensitivity_table(sensitivity: Sensitivity) -> str:
    """Groups from least to most sensitive: channels, the mean loss increase, accuracy and MACs
    saved at the middle ratio of the grid."""
    ratios = sorted({p.ratio for p in sensitivity.points})
    middle = ratios[len(ratios) // 2]
    rows = [("group", "channels", "mean loss +", f"val acc @ {middle:g}", f"MACs saved @ {middle:g}")]
    for group, rise in sensitivity.ranking():
        point = next(p for p in sensitivity.curve(group) if p.ratio == middle)
        rows.append(
            (
                group,
                str(point.channels),
                f"{rise:+.4f}",
                f"{point.accuracy:.4f}",
                f"{100 * (1 - point.macs / sensitivity.base_macs):.1f}%",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


__all__ = ["FILES", "sensitivity_table", "write_sensitivity"]
