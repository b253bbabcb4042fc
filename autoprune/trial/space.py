"""The search space: an Optuna trial's parameters ↔ a policy.

Parameter names are stable, so studies resume and reports read them: ``ratio.<group>`` (layer
granularity) or ``ratio`` (relative, offset, uniform, global), ``bias.<group>`` (relative),
``offset.<group>`` (offset, allocation), ``target`` and ``mix`` (allocation), ``scorer``,
``finetune_steps`` (only when the fine-tune cost is an objective), ``lr``, ``prune_steps``. Weight-level
kinds add ``weight_scorer``; ``density`` (the target's kept share of weights), ``density_offset.<layer>``
and ``reference`` (layer granularity) or ``threshold`` / ``threshold.<layer>`` (threshold mode); and
``nm.<layer>`` (N:M on or off, layer granularity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from autoprune.config import SpaceSection, baseline_share
from autoprune.errors import ConfigError
from autoprune.policy import Policy, Sparsity
from autoprune.trial.allocation import Allocator, log_scale_bisection
from autoprune.trial.sparsity import LampReference

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
        layers: Weight-level kinds: the layers that may be sparse, with their weight counts (``n:m``
            kinds: the layers whose input channels ``M`` divides).
        lamp: The base model's LAMP shares: the ``layer`` granularity's ``lamp`` reference needs them.
    """

    def __init__(
        self,
        cfg: SpaceSection,
        groups: Sequence[str],
        *,
        search_finetune_steps: bool = True,
        allocator: Allocator | None = None,
        layers: Mapping[str, int] | None = None,
        lamp: LampReference | None = None,
    ) -> None:
        if cfg.channels and cfg.granularity == "allocation" and allocator is None:
            raise ConfigError("space.granularity = 'allocation' needs the sensitivity analysis and cost model")
        if cfg.kind != "channels" and not layers:
            raise ConfigError(f"space.kind = {cfg.kind!r}: the model has no layer that can take it")
        self.cfg = cfg
        self.groups = list(groups) if cfg.channels else []
        self.search_finetune_steps = search_finetune_steps
        self.allocator = allocator
        self.layers = dict(layers or {})
        if lamp is None and "lamp" in self._references():
            raise ConfigError("space.sparsity_references names lamp: the space needs the base model's LAMP shares")
        self.lamp = lamp

    def _ratio_params(self) -> list[str]:
        if not self.cfg.channels or self.cfg.granularity == "allocation":
            return []
        return [f"ratio.{g}" for g in self.groups] if self.cfg.granularity == "layer" else ["ratio"]

    def _fixed_mix(self) -> float | None:
        """The ``allocation`` granularity's mix when only one reference is allowed (it is then not searched)."""
        references = self.cfg.references
        return None if len(references) > 1 else float(references[0] == "allocation")

    def _group_params(self) -> list[str]:
        """Per-group parameters on top of the target ratio: ``bias.<group>`` or ``offset.<group>``."""
        prefix = _GROUP_PARAM.get(self.cfg.granularity) if self.cfg.channels else None
        return [f"{prefix}.{g}" for g in self.groups] if prefix else []

    def _sparsity_params(self) -> dict[str, tuple[float, float, bool]]:
        """``weights`` kind: each float parameter's (low, high, log)."""
        cfg = self.cfg
        if cfg.kind != "weights":
            return {}
        per_layer = cfg.sparsity_granularity == "layer"
        if cfg.sparsity_mode == "threshold":
            bounds = (cfg.threshold_min, cfg.threshold_max, False)
            return {f"threshold.{n}": bounds for n in self.layers} if per_layer else {"threshold": bounds}
        params = {"density": (1.0 - cfg.sparsity_max, 1.0 - cfg.sparsity_min, True)}
        if per_layer:
            bound = cfg.sparsity_offset_max
            params.update({f"density_offset.{n}": (-bound, bound, False) for n in self.layers})
        return params

    def _references(self) -> tuple[str, ...]:
        """What the ``layer`` granularity's offsets start from (none for other spaces)."""
        cfg = self.cfg
        percent_layers = cfg.sparsity_granularity == "layer" and cfg.sparsity_mode == "percent"
        return cfg.sparsity_references if cfg.kind == "weights" and percent_layers else ()

    def _nm_params(self) -> list[str]:
        searched = "n:m" in self.cfg.kind and self.cfg.sparsity_granularity == "layer"
        return [f"nm.{n}" for n in self.layers] if searched else []

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
        for name, (low, high, log) in self._sparsity_params().items():
            trial.suggest_float(name, low, high, log=log)
        if len(self._references()) > 1:
            trial.suggest_categorical("reference", list(self._references()))
        for name in self._nm_params():
            trial.suggest_categorical(name, [True, False])
        if cfg.channels:
            trial.suggest_categorical("scorer", list(cfg.scorers))
        if cfg.kind != "channels":
            trial.suggest_categorical("weight_scorer", list(cfg.weight_scorers))
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
        if not self.cfg.channels:
            ratios = {}
        elif granularity == "allocation":
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
            scorer=str(params.get("scorer", self.cfg.default_scorer)),
            finetune_steps=int(params.get("finetune_steps", self.cfg.finetune_steps_max)),
            lr=float(params["lr"]),
            prune_steps=int(params["prune_steps"]),
            global_ranking=granularity in ("global", "relative"),
            group_bias={g: float(params[f"bias.{g}"]) for g in self.groups} if granularity == "relative" else {},
            channel_multiple=self.cfg.multiple,
            seed=seed,
            sparsity=self._sparsity(params),
            max_ratio=self.cfg.ratio_max if granularity in ("global", "relative") else 1.0,
        )

    def _sparsity(self, params: Mapping[str, Any]) -> Sparsity | None:
        """The weight-level part of the policy of a trial with these parameters."""
        cfg = self.cfg
        if cfg.kind == "channels":
            return None
        scorer = str(params["weight_scorer"])
        if "n:m" in cfg.kind:
            chosen = [n for n in self.layers if params.get(f"nm.{n}", True)]
            return Sparsity(scorer=scorer, nm=cfg.nm_pair, nm_layers=tuple(chosen))
        granularity = cfg.sparsity_granularity
        ranking = granularity if granularity in ("global", "lamp") else "layer"
        if cfg.sparsity_mode == "threshold":
            layers = {n: float(params.get(f"threshold.{n}", params.get("threshold", 0.0))) for n in self.layers}
            return Sparsity(layers=layers, mode="threshold", scorer=scorer)
        density = float(params["density"])
        if granularity != "layer":
            return Sparsity(layers=dict.fromkeys(self.layers, 1.0 - density), ranking=ranking, scorer=scorer)
        offsets = {n: float(params[f"density_offset.{n}"]) for n in self.layers}
        reference = str(params.get("reference", self._references()[0]))
        shares = self.lamp.shares(density) if reference == "lamp" and self.lamp is not None else None
        return Sparsity(layers=layer_sparsity(self.layers, density, offsets, shares), scorer=scorer)

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
        reach (one trial where both are the same policy: at ``space.ratio_max``, the smallest model
        the space holds). Weight-level kinds: for ``weights``, that sparsity (in threshold mode: that τ) in every
        layer, or ranked across layers for ``global`` and ``lamp``; for N:M, every layer that takes it.
        Every one with the default scorer, the full fine-tune budget in one prune step, and
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
        params.update(self._sparsity_baseline(float(baseline) if share is None else 0.0))
        if not self.cfg.channels:
            del params["scorer"]
        if len(self._references()) > 1:
            return [{**params, "reference": reference} for reference in self._references()]
        if self.allocator is None or self.cfg.granularity != "allocation" or not self.cfg.channels:
            return [params]
        mixes = tuple(float(reference == "allocation") for reference in self.cfg.references)
        low, high = self.allocator.bounds
        if share is None:
            params["target"] = min(high, max(low, self.allocator.uniform_target(ratio)))
        else:
            params["target"] = self.allocator.target_at_most(share, mixes)
        if self._fixed_mix() is not None:
            return [params]
        # at the floor of the space (every group at ratio_max) uniform pruning and the allocation are one policy
        policies = {tuple(self.allocator.solve(params["target"], mix, {}).values()): mix for mix in reversed(mixes)}
        return [{**params, "mix": mix} for mix in mixes if mix in policies.values()]

    def _sparsity_baseline(self, value: float) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.kind == "channels":
            return {}
        params: dict[str, Any] = {"weight_scorer": cfg.weight_scorers[0]}
        params.update(dict.fromkeys(self._nm_params(), True))
        for name, (low, high, _log) in self._sparsity_params().items():
            if name.startswith("density_offset."):
                params[name] = 0.0
            elif name == "density":
                params[name] = min(high, max(low, 1.0 - value))
            else:
                params[name] = min(high, max(low, value))
        return params


def layer_sparsity(
    sizes: Mapping[str, int],
    density: float,
    offsets: Mapping[str, float],
    reference: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer sparsity for a target kept share ``density`` of all weights: layer l keeps
    ``reference_l · c · e^offset_l`` of its weights (at least one, at most all), with ``c`` bisected so
    the layers together keep ``density`` of their weights. ``reference`` (kept share per layer, landing
    on ``density``) defaults to ``density`` everywhere, so offsets 0 give every layer ``1 - density``."""
    total = sum(sizes.values())
    start = reference if reference is not None else dict.fromkeys(sizes, density)

    def kept(log_c: float) -> dict[str, float]:
        return {n: min(1.0, max(1.0 / size, start[n] * math.exp(log_c + offsets[n]))) for n, size in sizes.items()}

    visited = log_scale_bisection(lambda c: sum(sizes[n] * s for n, s in kept(c).items()), density * total, 80)
    reaching = min((c for c, value in visited if value >= density * total), default=20.0)  # the bisection's upper end
    return {n: max(0.0, 1.0 - share) for n, share in kept(reaching).items()}
