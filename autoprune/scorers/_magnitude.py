"""Scorers that read the weights alone: l1, l2, fpgm, bn_scale, random.

Each is defined on the channel's *own* parameters: the output filters of every conv or linear
layer the group removes together (several, across a residual add). The consumers' input weights
are not counted: a zeroed filter produces nothing, whatever its consumers would do with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from autoprune.scorers._base import Scorer, bn_layers, channels, filter_rows, out_layers

if TYPE_CHECKING:
    from torch_pruning.dependency import Group


def _norm_sum(group: Group, p: int) -> torch.Tensor:
    """Σ |w|^p over the group's output filters, per root channel."""
    total = torch.zeros(channels(group))
    for layer, idxs, root in out_layers(group):
        total.scatter_add_(0, root, filter_rows(layer, idxs).abs().pow(p).sum(1).float().cpu())
    return total


class L1(Scorer):
    """L1 norm of the channel's filters (Li et al., 2017)."""

    name = "l1"

    def __call__(self, group: Group) -> torch.Tensor:
        return _norm_sum(group, 1)


class L2(Scorer):
    """L2 norm of the channel's filters."""

    name = "l2"

    def __call__(self, group: Group) -> torch.Tensor:
        return _norm_sum(group, 2).sqrt()


class FPGM(Scorer):
    """Sum of Euclidean distances to the other filters (He et al., 2019).

    The filter nearest the geometric median scores lowest: the others can stand in for it.
    """

    name = "fpgm"

    def __call__(self, group: Group) -> torch.Tensor:
        parts = []
        for layer, idxs, root in out_layers(group):
            rows = filter_rows(layer, idxs).float().cpu()
            placed = torch.zeros(channels(group), rows.shape[1])
            placed[root] = rows
            parts.append(placed)
        if not parts:
            return torch.zeros(channels(group))
        filters = torch.cat(parts, dim=1)
        # the matmul shortcut (taken above 25 rows) loses precision exactly where FPGM looks: near-equal filters
        return torch.cdist(filters[None], filters[None], compute_mode="donot_use_mm_for_euclid_dist")[0].sum(1)


class BNScale(Scorer):
    """|γ| of the BatchNorm layers that follow the channel (Liu et al., 2017, network slimming).

    A group without BatchNorm falls back to ``l1``, so the scorer applies to every group.
    """

    name = "bn_scale"

    def __call__(self, group: Group) -> torch.Tensor:
        total = torch.zeros(channels(group))
        found = False
        for bn, idxs, root in bn_layers(group):
            gamma = bn.weight
            if not isinstance(gamma, torch.Tensor):
                continue
            total.scatter_add_(0, root, gamma.detach()[idxs].abs().float().cpu())
            found = True
        return total if found else _norm_sum(group, 1)


class Random(Scorer):
    """Uniform random scores from a generator seeded by the policy: the control every scorer must beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: Group) -> torch.Tensor:
        return torch.rand(channels(group), generator=self._generator)
