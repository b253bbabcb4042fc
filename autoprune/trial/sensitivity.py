"""Sensitivity analysis: how much each group, pruned alone, costs the model.

Every group is pruned alone at each ratio of a grid with one scorer, its BatchNorm statistics are
re-estimated on a few training batches (:func:`~autoprune.trial.finetune.recalibrate_batchnorm`)
and the model is measured, without fine-tuning, on a fixed validation subset: loss, accuracy, MACs
and parameters. The increase of validation loss is what the allocation spends
(:mod:`autoprune.trial.allocation`): it moves as soon as a pruning hurts, where accuracy on a
subset stays flat, then drops in steps.
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autoprune.data import Batch, Split
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.finetune import recalibrate_batchnorm
from autoprune.trial.metrics import count_macs_params, loss_and_accuracy
from autoprune.trial.surgery import PrunableGroup, Surgery, TracedModel


@dataclass(frozen=True)
class Point:
    """One group pruned alone at one ratio."""

    group: str
    ratio: float
    channels: int
    """The group's channels in the base model."""
    kept: int
    loss: float
    accuracy: float
    macs: int
    params: int


@dataclass(frozen=True)
class Sensitivity:
    """The analysis of one base model: its own figures (loss and accuracy with its BatchNorm
    statistics re-estimated like every pruned copy's) and every :class:`Point`.

    Attributes:
        scorer: The scorer every pruning ranked channels with.
        seconds: Wall time the analysis took.
    """

    scorer: str
    base_loss: float
    base_accuracy: float
    base_macs: int
    base_params: int
    points: tuple[Point, ...]
    seconds: float = 0.0

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(p.group for p in self.points))

    def curve(self, group: str) -> list[Point]:
        """The group's points, by ratio."""
        return sorted((p for p in self.points if p.group == group), key=lambda p: p.ratio)

    def penalty(self, group: str, kept_fraction: np.ndarray | float) -> np.ndarray:
        """Predicted increase of validation loss with the group keeping ``kept_fraction`` of its
        channels: the measured increase interpolated linearly in the share of channels each point
        actually removed (``1 - kept / channels``: surgery rounds, and a small group's ratios 0.8
        and 0.9 may keep the same count), 0 at none removed, flat past the last point, made
        non-decreasing and never negative (a pruning that measured below the base loss is noise,
        not a gain)."""
        removed, rise = self._rises[group]
        return np.interp(1.0 - np.asarray(kept_fraction, dtype=float), removed, rise)

    @functools.cached_property
    def _rises(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rises = {}
        for group in self.groups:
            worst: dict[float, float] = {0.0: 0.0}  # removed share -> the highest loss increase measured there
            for p in self.curve(group):
                share = 1.0 - p.kept / p.channels
                worst[share] = max(worst.get(share, 0.0), p.loss - self.base_loss)
            removed = np.array(sorted(worst))
            rise = np.maximum.accumulate(np.maximum(0.0, [worst[x] for x in removed]))
            rises[group] = (removed, rise)
        return rises

    def ranking(self) -> list[tuple[str, float]]:
        """Groups from least to most sensitive, by the mean loss increase over the ratios."""
        mean = {g: float(np.mean([p.loss - self.base_loss for p in self.curve(g)])) for g in self.groups}
        return sorted(mean.items(), key=lambda kv: kv[1])

    def describe(self) -> str:
        """One sentence: what was measured, on what, and how long it took."""
        ratios = sorted({p.ratio for p in self.points})
        return (
            f"Each of {len(self.groups)} groups pruned alone at ratios {ratios[0]:g} to {ratios[-1]:g} "
            f"({len(ratios)} steps) with the {self.scorer} scorer, BatchNorm statistics re-estimated, no "
            f"fine-tuning; base model: validation accuracy {self.base_accuracy:.4f}, loss {self.base_loss:.4f} "
            f"on the same samples. {self.seconds:.0f} s."
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["points"] = [asdict(p) for p in self.points]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        return cls(**{**data, "points": tuple(Point(**p) for p in data["points"])})


def analyse(
    traced: TracedModel,
    groups: Sequence[PrunableGroup],
    *,
    val: Split,
    calibration: Sequence[Batch],
    bn_batches: int,
    scorer: str,
    ratios: Sequence[float],
    batch_size: int,
    seed: int = 0,
    amp: bool = False,
    on_point: Callable[[Point, int, int], None] | None = None,
) -> Sensitivity:
    """Prune each of ``groups`` alone at each of ``ratios`` and measure the result (the base model is
    left as it is).

    Args:
        traced: The base model, traced, on the device the analysis runs on; its example input is
            the batch the MACs are counted for.
        groups: Its groups to analyse (:attr:`~autoprune.trial.surgery.TracedModel.groups`, or some of them).
        val: The validation examples every pruned model is measured on.
        calibration: Training batches the data-driven scorers look at; BatchNorm statistics are
            re-estimated on the first ``bn_batches`` of them.
        bn_batches: 0 keeps the base model's BatchNorm statistics.
        scorer: Ranks the channels.
        ratios: Fraction of the group's channels removed, each in turn.
        batch_size: Batch size of the measurement.
        seed: Seeds the random scorer.
        amp: bf16 autocast on CUDA.
        on_point: Called after each point with the point, its index and the point count (progress).
    """
    start = time.perf_counter()
    base, example_input = traced.model, traced.example_input
    reference = copy.deepcopy(base)  # recalibrated like the pruned copies: only the pruning differs
    recalibrate_batchnorm(reference, iter(calibration), bn_batches)
    base_loss, base_accuracy = loss_and_accuracy(reference, val, batch_size, amp)
    base_macs, base_params = count_macs_params(base, example_input)
    rank = make_scorer(scorer, seed=seed)
    points = []
    total = len(groups) * len(ratios)
    for index, (group, ratio) in enumerate(itertools.product(groups, ratios)):
        model, graph = traced.copy()
        policy = Policy({group.name: ratio}, scorer, finetune_steps=0, lr=1.0, seed=seed)
        surgery = Surgery(model, example_input, policy, rank, groups=traced.names, graph=graph)
        surgery.step(list(calibration) if rank.needs_data else ())
        recalibrate_batchnorm(model, iter(calibration), bn_batches)
        loss, acc = loss_and_accuracy(model, val, batch_size, amp)
        macs, params = count_macs_params(model, example_input)
        point = Point(group.name, float(ratio), group.channels, surgery.kept()[group.name], loss, acc, macs, params)
        points.append(point)
        if on_point is not None:
            on_point(point, index, total)
    return Sensitivity(
        scorer,
        base_loss,
        base_accuracy,
        base_macs,
        base_params,
        tuple(points),
        time.perf_counter() - start,
    )


__all__ = ["Point", "Sensitivity", "analyse"]
