"""Allocation: per-group kept channels for a MACs (or parameter) target, from the sensitivity
curves and the cost model, without surgery.

The solver is greedy, by predicted loss per MAC saved. From every group at its highest allowed
count (all its channels unless ``ratio_min`` > 0) it takes, again and again, the one step down (one
``channel_multiple`` of one group) that costs the least predicted loss
(:meth:`~autoprune.trial.sensitivity.Sensitivity.penalty`) per unit of the figure it saves, until
every group is at its lowest. That one pass, made once per study, is the allocation for every
target at once: the allocation for a target is the point of the pass nearest it (or, for a
budget, the first point at or under it).

Greedy rather than a knapsack or Lagrangian solver because the cost does not add up over groups:
a convolution's MACs are its input group's channels times its output group's, so what a step
saves depends on where the neighbouring groups stand. The greedy pass asks the cost model at every
step, so it sees that interaction; a knapsack over per-group costs cannot.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.trial.cost import CostModel
from autoprune.trial.sensitivity import Sensitivity
from autoprune.trial.surgery import kept_channels, kept_heads

LANDING = 0.01
"""How near its target (relative) a trial's figure must land before :meth:`Allocator.solve` stops
moving single groups toward it."""


def kept_ratio(kept: int, channels: int) -> float:
    """The pruning ratio that makes torch-pruning keep exactly ``kept`` of ``channels`` (it keeps
    ``int(channels * (1 - ratio))``, then rounds down to the channel multiple, which ``kept`` is; of
    a group of attention heads, where ``kept`` is whole heads, it removes ``ceil(ratio * heads)`` heads,
    which is all the others)."""
    return 0.0 if kept >= channels else 1.0 - (kept + 0.5) / channels


def _uniform_kept(channels: int, ratio: float, multiple: int, heads: int = 0) -> int:
    """What surgery keeps of a group at ``ratio``: whole heads of a group with ``heads``, else
    ``int(channels * (1 - ratio))`` rounded down to the multiple, at least one multiple."""
    if heads:
        return kept_heads(ratio, heads) * (channels // heads)
    return kept_channels(channels, ratio, multiple)


def log_scale_bisection(figure: Callable[[float], float], target: float, steps: int) -> list[tuple[float, float]]:
    """The points ``(log factor, figure)`` a bisection over log factors in [-20, 20] visits, for a
    ``figure`` that rises with a common scale factor: the factor shrinks where the figure reaches
    ``target`` and grows where it falls short."""
    low, high = -20.0, 20.0
    visited = []
    for _ in range(steps):
        middle = (low + high) / 2
        value = figure(middle)
        visited.append((middle, value))
        if value >= target:
            high = middle
        else:
            low = middle
    return visited


@dataclass(frozen=True)
class Levels:
    """The kept counts a group may have: multiples of ``channel_multiple`` from as few as surgery
    keeps at ``ratio_max`` (``int(C * (1 - ratio_max))`` rounded down to the multiple, so the lowest
    levels are uniform pruning at ``ratio_max``) to as many as ``ratio_min`` leaves, and all its
    channels when ``ratio_min`` is 0 or when no multiple fits (the group is then not pruned). A group
    that loses whole attention heads keeps whole heads: as many as surgery keeps at some ratio within
    the bounds (it rounds the heads removed up, so at ``ratio_max`` 0.8 one of six heads stays)."""

    counts: tuple[np.ndarray, ...]
    """Per group (in the cost model's order), its allowed kept counts, rising."""

    @classmethod
    def of(
        cls,
        channels: np.ndarray,
        *,
        multiple: int,
        ratio_min: float,
        ratio_max: float,
        heads: Sequence[int] = (),
    ) -> Levels:
        """``heads``: per group, its attention heads (0 for a group of channels), when any group has them."""
        counts = []
        for c, h in itertools.zip_longest(channels.astype(int), heads, fillvalue=0):
            low = _uniform_kept(c, ratio_max, multiple, h)  # from as few as surgery keeps at ratio_max
            if h:  # whole heads, up to as many as at ratio_min
                step = c // h
                high = kept_heads(ratio_min, h) * step
            else:
                step = multiple
                high = math.floor(c * (1.0 - ratio_min) + 1e-9)
            levels = [k for k in range(step, c, step) if low <= k <= high]
            if ratio_min == 0.0 or not levels:
                levels.append(int(c))
            counts.append(np.array(sorted(set(levels)), dtype=float))
        return cls(tuple(counts))

    def snap(self, wanted: np.ndarray) -> np.ndarray:
        """Each group's allowed count nearest to ``wanted`` (rows of wanted counts)."""
        out = np.empty_like(wanted, dtype=float)
        for i, levels in enumerate(self.counts):
            at = np.clip(np.searchsorted(levels, wanted[..., i]), 1, max(len(levels) - 1, 1))
            below, above = levels[at - 1], levels[np.minimum(at, len(levels) - 1)]
            out[..., i] = np.where(np.abs(wanted[..., i] - below) <= np.abs(above - wanted[..., i]), below, above)
        return out

    @property
    def lowest(self) -> np.ndarray:
        return np.array([levels[0] for levels in self.counts])

    @property
    def highest(self) -> np.ndarray:
        return np.array([levels[-1] for levels in self.counts])


class Allocator:
    """Allocations of one base model for any target of one figure.

    Args:
        sensitivity: The base model's sensitivity analysis.
        cost: Its cost model (same groups).
        figure: ``macs`` or ``params``: what a target is a fraction of.
        channel_multiple: Kept counts are multiples of this (``space.channel_multiple``).
        ratio_min: No group loses less than this share of its channels (unless it keeps them all).
        ratio_max: No group loses more.
    """

    def __init__(
        self,
        sensitivity: Sensitivity,
        cost: CostModel,
        *,
        figure: str = "macs",
        channel_multiple: int = 1,
        ratio_min: float = 0.0,
        ratio_max: float = 0.8,
    ) -> None:
        missing = sorted(set(cost.groups) - set(sensitivity.groups))
        if missing:
            raise AutopruneError(f"the sensitivity analysis has no curve for groups {missing}; run it again")
        self.sensitivity = sensitivity
        self.cost = cost
        self.figure = figure
        self.groups = cost.groups
        self.channels = np.array([cost.base[g] for g in self.groups], dtype=float)
        self.multiple = channel_multiple
        self.heads = [cost.heads.get(g, 0) for g in self.groups]
        self.levels = Levels.of(
            self.channels, multiple=channel_multiple, ratio_min=ratio_min, ratio_max=ratio_max, heads=self.heads
        )
        self.base_cost = float(cost.predict_many(self.channels, figure))
        self._path, self._path_cost = self._greedy()

    def fraction(self, kept: np.ndarray) -> np.ndarray:
        """The figure of each row of kept counts, as a fraction of the base model's."""
        return self.cost.predict_many(kept, self.figure) / self.base_cost

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest target the levels can reach (fractions of the base figure)."""
        return float(self._path_cost[-1]), float(self._path_cost[0])

    def _greedy(self) -> tuple[np.ndarray, np.ndarray]:
        """Every point of the greedy pass from the highest levels down, with its figure (fractions)."""
        position = np.array([len(levels) - 1 for levels in self.levels.counts])
        # each group's predicted loss at each of its levels, looked up by position
        penalty = [
            self.sensitivity.penalty(g, levels / c)
            for g, levels, c in zip(self.groups, self.levels.counts, self.channels, strict=True)
        ]
        kept = self.levels.highest.copy()
        path, costs = [kept.copy()], [float(self.fraction(kept))]
        while True:
            movable = np.flatnonzero(position > 0)
            if len(movable) == 0:
                break
            candidates = np.repeat(kept[None, :], len(movable), axis=0)
            candidates[np.arange(len(movable)), movable] = [self.levels.counts[i][position[i] - 1] for i in movable]
            saved = costs[-1] - self.fraction(candidates)
            lost = np.array([penalty[i][position[i] - 1] - penalty[i][position[i]] for i in movable])
            # the least loss per share of the figure saved; a step that saves nothing comes last
            score = np.where(saved > 1e-12, lost / np.maximum(saved, 1e-12), np.inf)
            best = int(np.lexsort((-saved, score))[0])
            moved = int(movable[best])
            position[moved] -= 1
            kept = candidates[best]
            path.append(kept.copy())
            costs.append(float(self.fraction(kept)))
        return np.array(path), np.array(costs)

    def allocate(self, target: float, *, at_most: bool = False) -> dict[str, int]:
        """Kept channels per group for ``target`` (a fraction of the base model's figure): the point
        of the greedy pass nearest it, or with ``at_most`` the first point at or under it (the last
        point for a target below every point)."""
        return self._named(self._kept_for(target, at_most=at_most))

    def _kept_for(self, target: float, *, at_most: bool = False) -> np.ndarray:
        if not at_most:
            return self._path[int(np.argmin(np.abs(self._path_cost - target)))]
        under = np.flatnonzero(self._path_cost <= target + 1e-12)
        return self._path[under[0] if len(under) else -1]

    def solve(self, target: float, mix: float, offsets: Mapping[str, float]) -> dict[str, int]:
        """Kept channels per group for a trial of the ``allocation`` space: each group keeps
        ``(allocation's kept fraction)^mix · e^offset`` times one common factor, snapped to its levels,
        with the factor (bisected) that brings the figure nearest ``target``, then single groups moved
        one level while that misses it by more than :data:`LANDING`. With mix 1 and no offset
        that is the allocation for ``target`` (:meth:`allocate`, the same rule: nearest); with mix 0
        and no offset, uniform pruning."""
        return self._named(self._solved(target, mix, offsets))

    def _solved(self, target: float, mix: float, offsets: Mapping[str, float]) -> np.ndarray:
        if mix == 1.0 and not any(offsets.values()):
            return self._kept_for(target)
        allocated = self._kept_for(target) / self.channels
        shape = mix * np.log(allocated) + np.array([float(offsets.get(g, 0.0)) for g in self.groups])
        visited = log_scale_bisection(lambda factor: float(self.fraction(self._scaled(shape, factor))), target, 60)
        nearest = min(visited, key=lambda point: abs(point[1] - target))[0]  # the first of equals
        return self._nudged(self._scaled(shape, nearest), target)

    def _nudged(self, kept: np.ndarray, target: float) -> np.ndarray:
        """``kept``, with single groups moved one level at a time (the move that brings the figure
        nearest ``target`` first) while the figure misses ``target`` by more than
        :data:`LANDING`: a common factor moves coarse groups (whole heads) together, and their
        steps can jump over the target."""
        index = [{float(k): i for i, k in enumerate(levels)} for levels in self.levels.counts]
        miss = abs(float(self.fraction(kept)) - target)
        while miss > LANDING * target:
            moves = []
            for g, levels in enumerate(self.levels.counts):
                at = index[g][float(kept[g])]
                for to in (at - 1, at + 1):
                    if 0 <= to < len(levels):
                        moved = kept.copy()
                        moved[g] = levels[to]
                        moves.append(moved)
            if not moves:
                break
            candidates = np.array(moves)
            misses = np.abs(self.fraction(candidates) - target)
            best = int(np.argmin(misses))
            if misses[best] >= miss:
                break
            kept, miss = candidates[best], float(misses[best])
        return kept

    def target_at_most(self, share: float, mixes: tuple[float, ...]) -> float:
        """The largest target at which :meth:`solve` (no offsets) lands at or under ``share`` of the
        base figure for every mix in ``mixes`` (0: uniform pruning, 1: the allocation), so that
        references enqueued at it sit at the same figure and inside a user's band; the lowest
        reachable target when none does."""

        def over(target: float) -> bool:
            return any(float(self.fraction(self._solved(target, m, {}))) > share for m in mixes)

        low, high = self.bounds
        if not over(min(share, high)):
            return min(share, high)
        if over(low):
            return low
        high = share
        for _ in range(40):
            middle = (low + high) / 2
            if over(middle):
                high = middle
            else:
                low = middle
        return low

    def _scaled(self, shape: np.ndarray, factor: float) -> np.ndarray:
        wanted = np.exp(np.minimum(shape + factor, 0.0)) * self.channels
        return self.levels.snap(np.clip(wanted, self.levels.lowest, self.levels.highest))

    def uniform_target(self, ratio: float) -> float:
        """The figure (fraction of the base model's) of uniform pruning at ``ratio``, kept counts as
        surgery leaves them: ``int(channels * (1 - ratio))`` rounded down to the channel multiple,
        at least one multiple (all the channels of a group smaller than one); whole heads of a group
        of attention heads."""
        counts = np.array(
            [_uniform_kept(int(c), ratio, self.multiple, h) for c, h in zip(self.channels, self.heads, strict=True)],
            dtype=float,
        )
        return float(self.fraction(counts))

    def _named(self, kept: np.ndarray) -> dict[str, int]:
        return {g: int(k) for g, k in zip(self.groups, kept, strict=True)}

    def ratios(self, kept: Mapping[str, int]) -> dict[str, float]:
        """The policy ratios that make surgery keep exactly ``kept`` (:func:`kept_ratio`)."""
        return {g: kept_ratio(int(kept[g]), int(c)) for g, c in zip(self.groups, self.channels, strict=True)}


__all__ = ["LANDING", "Allocator", "Levels", "kept_ratio"]
