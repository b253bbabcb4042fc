"""The search space: an Optuna trial's parameters ↔ a policy.

Parameter names are stable, so studies resume and reports read them: ``ratio.<group>`` (layer
granularity) or ``ratio`` (relative, offset, uniform, global), ``bias.<group>`` (relative),
``offset.<group>`` (offset, allocation), ``target`` and ``mix`` (allocation), ``scorer``,
``finetune_steps`` (only when the fine-tune cost is an objective), ``lr``, ``prune_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from autoprune.config import SpaceSection, baseline_share
from autoprune.errors import ConfigError
from autoprune.policy import Policy
from autoprune.trial.allocation import Allocator

_GROUP_PARAM = {"relative": "bias", "offset": "offset", "allocation": "offset"}
"""Granularities with a parameter per group, and that parameter's name prefix."""


class SearchSpace:
    """Samples policies for the given groups within the study file's bounds.

    Args:
        cfg: The study file's ``[space]``.
        groups: The base model's prunable groups, by name.
        search_finetune_steps: Sample the fine-tune length. Only worth it when the fine-tune cost is
            an objective: otherwise a shorter fine-tune only costs accuracy, so every trial gets
            ``finetune_steps_max`` and the trials go to the policy itself.
        allocator: The base model's allocations: the ``allocation`` granularity needs it.
    """

    def __init__(
        self,
        cfg: SpaceSection,
        groups: Sequence[str],
        *,
        search_finetune_steps: bool = True,
        allocator: Allocator | None = None,
    ) -> None:
        if cfg.granularity == "allocation" and allocator is None:
            raise ConfigError("space.granularity = 'allocation' needs the sensitivity analysis and cost model")
        self.cfg = cfg
        self.groups = list(groups)
        self.search_finetune_steps = search_finetune_steps
        self.allocator = allocator

    def _ratio_params(self) -> list[str]:
        if self.cfg.granularity == "allocation":
            return []
        return [f"ratio.{g}" for g in self.groups] if self.cfg.granularity == "layer" else ["ratio"]

    def _fixed_mix(self) -> float | None:
        """The ``allocation`` granularity's mix when only one reference is allowed (it is then not searched)."""
        references = self.cfg.references
        return None if len(references) > 1 else float(references[0] == "allocation")

    def _group_params(self) -> list[str]:
        """Per-group parameters on top of the target ratio: ``bias.<group>`` or ``offset.<group>``."""
        prefix = _GROUP_PARAM.get(self.cfg.granularity)
        return [f"{prefix}.{g}" for g in self.groups] if prefix else []

    def suggest(self, trial: optuna.Trial, seed: int) -> Policy:
        """Sample a policy (define-by-run) and return it."""
        cfg = self.cfg
        for name in self._ratio_params():
            trial.suggest_float(name, cfg.ratio_min, cfg.ratio_max)
        if self.allocator is not None and cfg.granularity == "allocation":
            trial.suggest_float("target", *self.allocator.bounds, log=True)
            if self._fixed_mix() is None:
                trial.suggest_float("mix", 0.0, 1.0)
        bound = cfg.bias_max if cfg.granularity == "relative" else cfg.offset_max
        for name in self._group_params():
            trial.suggest_float(name, -bound, bound)
        trial.suggest_categorical("scorer", list(cfg.scorers))
        if self.search_finetune_steps:
            trial.suggest_int(
                "finetune_steps", cfg.finetune_steps_min, cfg.finetune_steps_max, log=cfg.finetune_steps_min >= 1
            )
        trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)
        trial.suggest_int("prune_steps", 1, cfg.prune_steps_max)
        return self.from_params(trial.params, seed)

    def from_params(self, params: Mapping[str, Any], seed: int) -> Policy:
        """The policy that a trial with these parameters applies."""
        granularity = self.cfg.granularity
        if granularity == "allocation":
            ratios = self._allocated(params)
        elif granularity == "layer":
            ratios = {g: float(params[f"ratio.{g}"]) for g in self.groups}
        elif granularity == "offset":
            keep = 1.0 - float(params["ratio"])
            ratios = {
                g: min(self.cfg.ratio_max, max(self.cfg.ratio_min, 1.0 - keep * math.exp(float(params[f"offset.{g}"]))))
                for g in self.groups
            }
        else:
            ratios = {g: float(params["ratio"]) for g in self.groups}
        return Policy(
            ratios=ratios,
            scorer=str(params["scorer"]),
            finetune_steps=int(params.get("finetune_steps", self.cfg.finetune_steps_max)),
            lr=float(params["lr"]),
            prune_steps=int(params["prune_steps"]),
            global_ranking=granularity in ("global", "relative"),
            group_bias={g: float(params[f"bias.{g}"]) for g in self.groups} if granularity == "relative" else {},
            channel_multiple=self.cfg.channel_multiple,
            seed=seed,
        )

    def _allocated(self, params: Mapping[str, Any]) -> dict[str, float]:
        assert self.allocator is not None
        fixed = self._fixed_mix()
        mix = float(params["mix"]) if fixed is None else fixed
        offsets = {g: float(params[f"offset.{g}"]) for g in self.groups}
        return self.allocator.ratios(self.allocator.solve(float(params["target"]), mix, offsets))

    def baseline_params(self, ratio: float) -> dict[str, Any]:
        """The first of :meth:`baselines` (uniform pruning, where the space holds it)."""
        return self.baselines(ratio)[0]

    def baselines(self, baseline: float | str) -> list[dict[str, Any]]:
        """Parameters of the reference trials for one ``study.baselines`` entry, a ratio: that ratio
        everywhere (relative granularity: no bias, so plain global ranking; offset granularity: no
        offset, so uniform pruning); for the allocation granularity, uniform pruning and the
        allocation (each of ``space.references``) at the MACs (or parameters) of uniform pruning at
        that ratio, or, for a share such as ``"25%"``, at the largest figure at or under it that both
        reach. Every one with the default scorer, the full fine-tune budget in one prune step, and
        the geometric middle of the learning-rate range."""
        share = baseline_share(baseline)
        if share is not None and (self.allocator is None or self.cfg.granularity != "allocation"):
            raise ConfigError(f"study.baselines: {baseline!r} needs space.granularity = 'allocation'")
        ratio = float(baseline) if share is None else self.cfg.ratio_min
        params: dict[str, Any] = {name: ratio for name in self._ratio_params()}
        params.update(dict.fromkeys(self._group_params(), 0.0))
        params.update(scorer=self.cfg.default_scorer, lr=math.sqrt(self.cfg.lr_min * self.cfg.lr_max), prune_steps=1)
        if self.search_finetune_steps:
            params["finetune_steps"] = self.cfg.finetune_steps_max
        if self.allocator is None or self.cfg.granularity != "allocation":
            return [params]
        mixes = tuple(float(reference == "allocation") for reference in self.cfg.references)
        low, high = self.allocator.bounds
        if share is None:
            params["target"] = min(high, max(low, self.allocator.uniform_target(ratio)))
        else:
            params["target"] = self.allocator.target_at_most(share, mixes)
        if self._fixed_mix() is not None:
            return [params]
        return [{**params, "mix": mix} for mix in mixes]
