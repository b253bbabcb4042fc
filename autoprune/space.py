"""The search space: an Optuna trial's parameters ↔ a policy.

Parameter names are stable, so studies resume and reports read them: ``ratio.<group>`` (layer
granularity) or ``ratio`` (uniform, global), ``scorer``, ``finetune_steps``, ``lr``,
``prune_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from autoprune.config import SpaceSection
from autoprune.policy import Policy


class SearchSpace:
    """Samples policies for the given groups within the study file's bounds."""

    def __init__(self, cfg: SpaceSection, groups: Sequence[str]) -> None:
        self.cfg = cfg
        self.groups = list(groups)

    def _ratio_params(self) -> list[str]:
        return [f"ratio.{g}" for g in self.groups] if self.cfg.granularity == "layer" else ["ratio"]

    def suggest(self, trial: optuna.Trial, seed: int) -> Policy:
        """Sample a policy (define-by-run) and return it."""
        cfg = self.cfg
        for name in self._ratio_params():
            trial.suggest_float(name, cfg.ratio_min, cfg.ratio_max)
        trial.suggest_categorical("scorer", list(cfg.scorers))
        trial.suggest_int(
            "finetune_steps", cfg.finetune_steps_min, cfg.finetune_steps_max, log=cfg.finetune_steps_min >= 1
        )
        trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)
        trial.suggest_int("prune_steps", 1, cfg.prune_steps_max)
        return self.from_params(trial.params, seed)

    def from_params(self, params: Mapping[str, Any], seed: int) -> Policy:
        """The policy that a trial with these parameters applies."""
        if self.cfg.granularity == "layer":
            ratios = {g: float(params[f"ratio.{g}"]) for g in self.groups}
        else:
            ratios = {g: float(params["ratio"]) for g in self.groups}
        return Policy(
            ratios=ratios,
            scorer=str(params["scorer"]),
            finetune_steps=int(params["finetune_steps"]),
            lr=float(params["lr"]),
            prune_steps=int(params["prune_steps"]),
            global_ranking=self.cfg.granularity == "global",
            channel_multiple=self.cfg.channel_multiple,
            seed=seed,
        )

    def baseline_params(self, ratio: float) -> dict[str, Any]:
        """Parameters of the reference trial: ``ratio`` everywhere, the default scorer, the full
        fine-tune budget in one prune step, and the geometric middle of the learning-rate range."""
        params: dict[str, Any] = {name: ratio for name in self._ratio_params()}
        params.update(
            scorer=self.cfg.default_scorer,
            finetune_steps=self.cfg.finetune_steps_max,
            lr=math.sqrt(self.cfg.lr_min * self.cfg.lr_max),
            prune_steps=1,
        )
        return params
