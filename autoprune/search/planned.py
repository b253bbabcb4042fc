"""The common part of autoprune's own samplers: some trials get a whole planned set of parameters, the
others go to a wrapped sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


class PlannedSampler(optuna.samplers.BaseSampler):
    """Calls :meth:`plan_trial` before each trial that is not enqueued; the parameters it returns are the
    trial's, and a trial it returns ``None`` for (or an enqueued one) is ``base``'s, from its
    ``before_trial`` on.

    Args:
        base: The sampler of the trials this one plans nothing for.
    """

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self.base = base
        self._plans: dict[int, dict[str, Any]] = {}

    def plan_trial(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        """The parameters of ``trial``, or ``None`` to leave it to the base sampler."""
        raise NotImplementedError

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" not in trial.system_attrs:
            params = self.plan_trial(study, trial)
            if params is not None:
                self._plans[trial.number] = params
                return
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if trial.number in self._plans:
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial.number in self._plans:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        plan = self._plans.get(trial.number, {})
        if param_name in plan:
            return plan[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._plans.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
