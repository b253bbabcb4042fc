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
        seed: Seeds fine-tuning and the random scorer.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", dict(self.ratios))
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

    def summary(self) -> str:
        """A short human description, for progress lines."""
        values = list(self.ratios.values())
        if not values:
            ratio = "none"
        elif self.global_ranking:
            ratio = f"global {values[0]:.2f}"
            biases = list(self.group_bias.values())
            if any(biases):
                ratio += f" bias {min(biases):+.2f}..{max(biases):+.2f}"
        elif max(values) - min(values) < 1e-9:
            ratio = f"uniform {values[0]:.2f}"
        else:
            ratio = f"ratios {min(values):.2f}..{max(values):.2f} (mean {sum(values) / len(values):.2f})"
        return (
            f"{ratio}, {self.scorer}, {self.finetune_steps} steps @ lr {self.lr:.2g}, {self.prune_steps} prune step(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratios"] = dict(self.ratios)
        data["group_bias"] = dict(self.group_bias)
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
