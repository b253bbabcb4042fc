"""The ``gaps`` sampler: spend each trial where the front misses, with a policy the front already holds.

The front in question is validation accuracy against the figure the ``allocation`` space targets
(``space.target``: MACs or parameters, as shares of the base model's). Between two front neighbours
at shares ``low < high`` with accuracies ``a_low < a_high`` (the base model closes the front at share
1, or at the budget's cap), a trial at the middle share whose accuracy lies on the line between them
adds ``(high - low)(a_high - a_low) / 4`` to the front's hypervolume. Each trial goes to the gap where
that is largest and repeats the policy of one of the gap's neighbours (its mix of the references,
offsets, scorer and learning rate) at the middle target, so the front is filled with the policies
that made it: the neighbour that lies further above the line through its own two neighbours (a
policy that made the front only by being a hair cheaper than a better one lies below that line).
The base model has no policy: the gap below it repeats its lower neighbour's.

A gap is filled when its neighbours are within :data:`FILLED` of accuracy, or too close in figure for
a trial to land between them (:data:`autoprune.trial.allocation.LANDING`). When every gap is, and
before any trial has completed, trials go to the wrapped sampler (the GP), which searches the
deviations from the policies the fills repeat. Running and failed trials, and fills the front does not
hold, count as points of the front at the accuracy the line between their neighbours predicts:
parallel workers fill different gaps, and a fill that failed (a NaN loss, say) or landed below the
front is not tried again at the same target.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune.budget import Budget
from autoprune.search.front import PARENT, feasible, stored_constraints
from autoprune.search.planned import PlannedSampler
from autoprune.trial.allocation import LANDING

log = get_logger(__name__)

FILLED = 0.005
"""Front neighbours closer than this in validation accuracy (half a point) leave no gap worth a trial:
about the spread of one accuracy measured on a few thousand validation images."""


@dataclass(frozen=True)
class Gap:
    """A gap of the front between two neighbours, as shares of the base figure.

    Attributes:
        low: The lower end's share: a front neighbour's, or where a running, failed or missed trial
            split the gap.
        high: The upper end's share, likewise.
        gain: The hypervolume a trial at the middle adds if its accuracy lies on the line between the
            gap's front neighbours.
        neighbour: The trial whose policy the filling trial repeats.
    """

    low: float
    high: float
    gain: float
    neighbour: int

    @property
    def target(self) -> float:
        return (self.low + self.high) / 2


def widest_gap(
    points: Sequence[tuple[float, float, int]],
    top: tuple[float, float],
    pending: Sequence[float] = (),
    fills: Collection[int] = (),
) -> Gap | None:
    """The gap worth a trial with the largest gain, or ``None`` when every gap is filled.

    Args:
        points: (share, accuracy, trial number) of the completed trials.
        top: (share, accuracy) that closes the front above: the base model, or the budget's cap.
        pending: Shares of trials still running or failed: points at the accuracy the line between
            their neighbours predicts.
        fills: The trials of ``points`` that filled a gap: those the front does not hold count as
            ``pending``.
    """
    front: list[tuple[float, float, int | None]] = []
    below = []
    for share, accuracy, number in sorted(points, key=lambda p: (p[0], -p[1])):
        if share <= top[0] and (not front or accuracy > front[-1][1]):
            front.append((share, accuracy, number))
        elif number in fills:
            below.append(share)
    if not front:
        return None
    if top[1] > front[-1][1] and top[0] > front[-1][0]:
        front.append((top[0], top[1], None))
    above = [0.0] + [_above_chord(*triple) for triple in zip(front, front[1:], front[2:], strict=False)] + [0.0]
    best: Gap | None = None
    for i, ((low, a_low, n_low), (high, a_high, n_high)) in enumerate(zip(front, front[1:], strict=False)):
        inside = sorted({s for s in [*pending, *below] if low < s < high})
        ends = [low, *inside, high]
        slope = (a_high - a_low) / (high - low)
        for start, end in zip(ends, ends[1:], strict=False):
            rise = slope * (end - start)
            if rise < FILLED or end - start <= 2 * LANDING * end:
                continue
            neighbour = n_high if n_high is not None and above[i + 1] > above[i] else n_low
            assert neighbour is not None
            gap = Gap(start, end, (end - start) * rise / 4, neighbour)
            if best is None or gap.gain > best.gain:
                best = gap
    return best


def _above_chord(
    below: tuple[float, float, int | None],
    point: tuple[float, float, int | None],
    over: tuple[float, float, int | None],
) -> float:
    """How far ``point``'s accuracy lies above the line from ``below`` to ``over``."""
    return point[1] - (below[1] + (over[1] - below[1]) * (point[0] - below[0]) / (over[0] - below[0]))


class GapSampler(PlannedSampler):
    """Gives each trial that is not enqueued the policy that fills the front's widest gap, and leaves
    the trials to ``base`` when the front has none (see the module's text).

    Args:
        base: The sampler for every other trial.
        figure: ``macs`` or ``params``: what the space's ``target`` parameter is a share of.
        budget: The study's budget: trials outside it are not on the front, and a cap on ``figure``
            closes the front below the base model.
        base_figures: The study's base-model figures (accuracy and ``figure``), or ``None`` before the
            study records them.
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        figure: str,
        budget: Budget,
        base_figures: Callable[[optuna.Study], Mapping[str, Any] | None],
    ) -> None:
        super().__init__(base)
        self.figure = figure
        self.budget = budget
        self.base_figures = base_figures
        self._handed_over = False

    def _top(self, base: Mapping[str, Any]) -> tuple[float, float]:
        share = 1.0
        if self.budget:
            limit = self.budget.resolve(base).limits.get(f"max_{self.figure}")
            if limit is not None:
                share = min(share, limit / float(base[self.figure]))
        return share, float(base["accuracy"])

    def plan(self, study: optuna.Study) -> tuple[Gap, dict[str, Any]] | None:
        """The gap the next trial fills and its parameters, or ``None`` (the base sampler's turn)."""
        base = self.base_figures(study)
        if not base:
            return None
        size = float(base[self.figure])
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL))
        done = {
            t.number: t
            for t in trials
            if t.state == TrialState.COMPLETE
            and PARENT not in t.user_attrs
            and "target" in t.params
            and feasible(stored_constraints(t))
        }
        points = [
            (float(t.user_attrs[self.figure]) / size, float(t.user_attrs["accuracy"]), n) for n, t in done.items()
        ]
        pending = [float(t.params["target"]) for t in trials if t.state != TrialState.COMPLETE and "target" in t.params]
        fills = [n for n, t in done.items() if "fixed_params" not in t.system_attrs]
        gap = widest_gap(points, self._top(base), pending, fills)
        if gap is None:
            return None
        return gap, {**done[gap.neighbour].params, "target": gap.target}

    def plan_trial(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        planned = self.plan(study)
        if planned is None:
            if not self._handed_over:
                log.info(
                    "trial %d: no gap in the front is worth a fill; %s proposes the trials from here",
                    trial.number,
                    type(self.base).__name__,
                )
            self._handed_over = True
            return None
        self._handed_over = False
        gap, params = planned
        log.info(
            "trial %d fills the front's gap between %.2f%% and %.2f%% of base %s with trial %d's policy",
            trial.number,
            100 * gap.low,
            100 * gap.high,
            self.figure,
            gap.neighbour,
        )
        return params
