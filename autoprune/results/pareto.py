"""Two-figure Pareto math: the front of accuracy against a cost, and the hypervolume it dominates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

HV_REFERENCE = (1.0, 0.0)
"""Hypervolume reference point in (MACs / base MACs, accuracy): the base model's MACs at accuracy 0."""


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


__all__ = ["HV_REFERENCE", "front_2d", "hypervolume_2d", "hypervolume_history"]
