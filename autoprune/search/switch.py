"""The ``switch`` sampler: local search around each band's pick, moving capacity between groups at a fixed cost.

Beside the ``gaps`` sampler (:mod:`autoprune.search.gaps`), which spends trials where the front
misses, this one spends them where the user picks. Each trial that is not enqueued takes the pick of
one band, the bands in turn: the best completed trial at or under a share of the base figure (the
most accurate; in a language study, the lowest in perplexity or KL), the shares being the study's
levels (:attr:`~autoprune.config.StudyConfig.levels`: its share baselines such as ``"25%"``, or 50,
25 and 12.5 % without any). It repeats the pick's policy with one *level switch* (EvoPress,
Sieberling et al. 2025): one group's offset rises by a step and another's falls by the same step, at
the pick's own target. The ``allocation`` space lands every policy on its target by one common factor
(:meth:`~autoprune.trial.allocation.Allocator.solve`), so the switch moves channels from one group to
the other and leaves the cost where it was. A switch that scores better becomes the band's pick and
the next switch starts from it: a (1 + 1) evolution per band, judged by validation accuracy (or a
language study's perplexity or KL).

Groups and step are drawn from a generator seeded by the sampler's seed and the trial's number, so a
study reruns the same proposals. Before any band holds a completed trial, the wrapped sampler proposes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune.config import OBJECTIVES, PICK_SHARES
from autoprune.search.front import PARENT, feasible, stored_constraints
from autoprune.search.planned import PlannedSampler

log = get_logger(__name__)

OFFSET = "offset."
"""The prefix of the ``allocation`` space's per-group parameters."""


def switched(params: Mapping[str, Any], up: str, down: str, step: float, bound: float) -> dict[str, Any]:
    """``params`` with group ``up``'s offset raised by ``step`` and ``down``'s lowered by as much, both within
    ``[-bound, bound]`` (the smaller of the two room makes the step, so what one gains the other gives)."""
    room = min(step, bound - float(params[up]), float(params[down]) + bound)
    return {**params, up: float(params[up]) + room, down: float(params[down]) - room}


class SwitchSampler(PlannedSampler):
    """Proposes a level switch around one band's pick per trial (see the module's text); ``base`` proposes
    while no band has a pick.

    Args:
        base: The sampler for trials no band can take.
        figure: ``macs`` or ``params``: what the bands and the ``target`` parameter are shares of.
        bands: Shares of the base figure whose picks the switches start from.
        offset_max: The space's bound on every offset (``space.offset_max``).
        seed: Seeds the draw of groups and step.
        base_figures: The study's base-model figures, or ``None`` before the study records them.
        quality: The trial figure a band's pick is the best of: ``accuracy`` (highest), or a language
            study's ``perplexity`` or ``kl`` (lowest).
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        *,
        figure: str,
        bands: Sequence[float],
        offset_max: float,
        seed: int,
        base_figures: Callable[[optuna.Study], Mapping[str, Any] | None],
        quality: str = "accuracy",
    ) -> None:
        super().__init__(base)
        self.quality = quality
        self._sign = 1.0 if OBJECTIVES[quality] == "maximize" else -1.0
        self.figure = figure
        self.bands = tuple(sorted(bands, reverse=True)) or PICK_SHARES
        self.offset_max = offset_max
        self.seed = seed
        self.base_figures = base_figures

    def plan(self, study: optuna.Study, number: int) -> tuple[float, FrozenTrial, dict[str, Any]] | None:
        """The band trial ``number`` works on, the pick it starts from and its parameters; ``None`` when no
        band holds a completed trial of the space with two offsets to switch (the base sampler's turn)."""
        base = self.base_figures(study)
        if not base or self.offset_max <= 0:
            return None
        size = float(base[self.figure])
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if PARENT not in t.user_attrs
            and "target" in t.params
            and sum(name.startswith(OFFSET) for name in t.params) >= 2
            and feasible(stored_constraints(t))
        ]
        rng = np.random.default_rng([self.seed, number])
        for k in range(len(self.bands)):
            band = self.bands[(number + k) % len(self.bands)]
            inside = [t for t in done if float(t.user_attrs[self.figure]) / size <= band + 1e-9]
            if not inside:
                continue
            pick = max(inside, key=lambda t: (self._sign * float(t.user_attrs[self.quality]), -t.number))
            groups = sorted(name for name in pick.params if name.startswith(OFFSET))
            up, down = rng.choice(groups, size=2, replace=False)
            step = float(rng.uniform(0.1, 0.5)) * self.offset_max
            return band, pick, switched(pick.params, str(up), str(down), step, self.offset_max)
        return None

    def plan_trial(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        planned = self.plan(study, trial.number)
        if planned is None:
            return None
        band, pick, params = planned
        moved = sorted((k for k in params if params[k] != pick.params[k]), key=lambda k: params[k] - pick.params[k])
        log.info(
            "trial %d: a level switch of the pick at ≤ %.4g%% of base %s (trial %d)%s",
            trial.number,
            100 * band,
            self.figure,
            pick.number,
            f", from {moved[0].removeprefix(OFFSET)} to {moved[-1].removeprefix(OFFSET)}" if moved else "",
        )
        return params
