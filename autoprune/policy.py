"""A policy: what one trial applies to the base model.

Groups are named by the dotted path of their root layer, so a policy is plain data: it round-trips
through JSON and through an Optuna trial's user attributes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autoprune.errors import ConfigError

WEIGHT_SCORERS = ("magnitude", "taylor", "random")
"""How individual weights are ranked: ``magnitude`` |w|, ``taylor`` |w · ∂L/∂w| summed over the
calibration batches, ``random`` (a control)."""
SPARSITY_MODES = ("percent", "threshold")
SPARSITY_RANKINGS = ("layer", "global", "lamp")


@dataclass(frozen=True)
class Sparsity:
    """The weight-level part of a policy: which single weights of convolution and linear layers are
    zeroed (they stay in the tensors, so shapes do not change).

    Attributes:
        layers: Per layer (dotted path), in ``percent`` mode the fraction of its weights to zero; in
            ``threshold`` mode τ: weights scoring under τ times the layer's highest score are zeroed.
            With ``global`` or ``lamp`` ranking every value is the same: the fraction of all the
            listed layers' weights, ranked together.
        mode: ``percent`` or ``threshold``.
        ranking: ``layer`` (each layer on its own), ``global`` (scores ranked across layers) or
            ``lamp`` (LAMP scores ranked across layers: each score squared over the sum of the squares
            of the layer's scores at or above it, so every layer keeps its strongest weights).
        scorer: One of :data:`WEIGHT_SCORERS`.
        nm: ``(N, M)``: the layers in ``nm_layers`` keep at most N of every M consecutive weights
            along the input channels.
        nm_layers: Layers given N:M sparsity, after channel surgery and any ``layers`` masks.
    """

    layers: Mapping[str, float] = field(default_factory=dict)
    mode: str = "percent"
    ranking: str = "layer"
    scorer: str = "magnitude"
    nm: tuple[int, int] = (2, 4)
    nm_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", dict(self.layers))
        object.__setattr__(self, "nm", tuple(int(v) for v in self.nm))
        object.__setattr__(self, "nm_layers", tuple(self.nm_layers))
        if self.mode not in SPARSITY_MODES:
            raise ConfigError(f"policy sparsity mode = {self.mode!r}: must be one of {', '.join(SPARSITY_MODES)}")
        if self.ranking not in SPARSITY_RANKINGS:
            raise ConfigError(
                f"policy sparsity ranking = {self.ranking!r}: must be one of {', '.join(SPARSITY_RANKINGS)}"
            )
        if self.mode == "threshold" and self.ranking != "layer":
            raise ConfigError("policy sparsity: threshold mode compares each weight with its own layer's highest score")
        if self.scorer not in WEIGHT_SCORERS:
            raise ConfigError(f"policy sparsity scorer = {self.scorer!r}: must be one of {', '.join(WEIGHT_SCORERS)}")
        for name, value in self.layers.items():
            if not (0.0 <= value < 1.0) or math.isnan(value):
                raise ConfigError(f"policy sparsity for {name!r} = {value!r}: must be in [0, 1)")
        n, m = self.nm
        if not (0 < n < m):
            raise ConfigError(f"policy N:M = {n}:{m}: needs 0 < N < M")

    def summary(self) -> str:
        parts = []
        values = list(self.layers.values())
        if values:
            word = "τ" if self.mode == "threshold" else "sparsity"
            if self.ranking != "layer":
                parts.append(f"{self.ranking} sparsity {values[0]:.3f}")
            elif max(values) - min(values) < 1e-9:
                parts.append(f"{word} {values[0]:.3f}")
            else:
                parts.append(f"{word} {min(values):.3f}..{max(values):.3f}")
            parts.append(self.scorer)
        if self.nm_layers:
            parts.append(f"{self.nm[0]}:{self.nm[1]} on {len(self.nm_layers)} layer(s)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Policy:
    """Pruning ratio per group, scorer and fine-tune budget.

    Attributes:
        ratios: Fraction of each group's channels to remove, keyed by group name. With
            ``global_ranking`` every value is the same: the fraction of all channels, ranked
            together across groups.
        scorer: Name of the channel scorer.
        finetune_steps: Optimizer steps of fine-tuning, split over the prune steps.
        lr: Peak fine-tune learning rate.
        prune_steps: Progressive pruning: the ratios are reached in this many equal steps with
            fine-tuning in between.
        global_ranking: Rank channels across all groups instead of within each.
        group_bias: With ``global_ranking``: each group's channel scores are shifted by this many
            of their standard deviations before the ranking, so a positive bias keeps more of that
            group and a negative one removes more. Missing groups have bias 0 (plain global ranking).
        channel_multiple: Kept channels are rounded down to a multiple of this, but every group keeps
            at least one multiple (its ratio is lowered where needed; ``kept`` records the result).
        max_ratio: With ``global_ranking``: no group loses more than this share of its channels (it
            keeps at least what uniform pruning at this ratio keeps); the search spaces set it to
            ``space.ratio_max``, as every per-group ratio is bounded by it. 1: no cap but one multiple.
        seed: Seeds fine-tuning and the random scorer.
        sparsity: Weight-level sparsity applied after the channel surgery (None: none). Its
            percentages are reached over the prune steps on the cubic schedule of Zhu and Gupta
            (2017): after step k of n, ``1 - (1 - k/n)³`` of the target; N:M comes with the last step.
    """

    ratios: Mapping[str, float]
    scorer: str
    finetune_steps: int
    lr: float
    prune_steps: int = 1
    global_ranking: bool = False
    group_bias: Mapping[str, float] = field(default_factory=dict)
    channel_multiple: int = 1
    seed: int = 0
    sparsity: Sparsity | None = None
    max_ratio: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", dict(self.ratios))
        if isinstance(self.sparsity, Mapping):
            object.__setattr__(self, "sparsity", Sparsity(**self.sparsity))
        object.__setattr__(self, "group_bias", dict(self.group_bias))
        for name, bias in self.group_bias.items():
            if not math.isfinite(bias):
                raise ConfigError(f"policy group_bias for {name!r} = {bias!r}: must be finite")
        if self.group_bias and not self.global_ranking:
            raise ConfigError("policy group_bias needs global_ranking: it weighs groups against each other")
        for name, ratio in self.ratios.items():
            if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
                raise ConfigError(f"policy ratio for {name!r} = {ratio!r}: must be in [0, 1)")
        if self.finetune_steps < 0:
            raise ConfigError(f"policy finetune_steps = {self.finetune_steps!r}: must be >= 0")
        if self.prune_steps < 1:
            raise ConfigError(f"policy prune_steps = {self.prune_steps!r}: must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"policy lr = {self.lr!r}: must be > 0")
        if self.channel_multiple < 1:
            raise ConfigError(f"policy channel_multiple = {self.channel_multiple!r}: must be at least 1")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ConfigError(f"policy max_ratio = {self.max_ratio!r}: must be in (0, 1]")

    def summary(self) -> str:
        """A short human description, for progress lines."""
        values = list(self.ratios.values())
        weights = self.sparsity.summary() if self.sparsity is not None else ""
        if not values:
            ratio = weights or "none"
        elif self.global_ranking:
            ratio = f"global {values[0]:.2f}"
            biases = list(self.group_bias.values())
            if any(biases):
                ratio += f" bias {min(biases):+.2f}..{max(biases):+.2f}"
        elif max(values) - min(values) < 1e-9:
            ratio = f"uniform {values[0]:.2f}"
        else:
            ratio = f"ratios {min(values):.2f}..{max(values):.2f} (mean {sum(values) / len(values):.2f})"
        if values and weights:
            ratio = f"{ratio}, {weights}"
        scorer = f"{self.scorer}, " if values else ""
        return f"{ratio}, {scorer}{self.finetune_steps} steps @ lr {self.lr:.2g}, {self.prune_steps} prune step(s)"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratios"] = dict(self.ratios)
        data["group_bias"] = dict(self.group_bias)
        if self.sparsity is None:
            del data["sparsity"]
        else:
            data["sparsity"] = {**asdict(self.sparsity), "layers": dict(self.sparsity.layers)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown policy keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls.from_dict(json.loads(text))
