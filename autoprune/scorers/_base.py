"""The scorer protocol and the group walk every scorer shares."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

if TYPE_CHECKING:
    from torch_pruning.dependency import Group

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


class Scorer:
    """Ranks the channels of a group: a higher score means keep.

    Call order, once per prune step: ``prepare(model, batches, loss_fn)`` (a no-op unless the
    scorer looks at data), then ``__call__(group)`` for every group of that model, then the
    surgery removes the lowest-scored channels. Subclasses implement ``__call__`` only; those that
    need data also override ``prepare`` and set ``needs_data``.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def prepare(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> None:
        """Collect what ``__call__`` needs from the model and calibration batches."""

    def __call__(self, group: Group) -> torch.Tensor:
        """One score per channel of the group's root layer (its ``idxs`` order)."""
        raise NotImplementedError


def channels(group: Group) -> int:
    """Number of channels the group's root layer has (the length of every score vector)."""
    return len(group[0].idxs)


def group_layers(group: Group, fns: tuple[Any, ...]) -> Iterator[tuple[nn.Module, list[int], torch.Tensor]]:
    """The group's layers pruned by one of ``fns``: (layer, own indices, root indices).

    Own indices address the layer's own channel dimension; root indices say which channel of the
    group's root each one belongs to (they differ across a flatten, for example).
    """
    for item in group:
        dep, idxs = item.dep, item.idxs
        if dep.pruning_fn not in fns or any(r is None for r in item.root_idxs):
            continue
        yield dep.layer, list(idxs), torch.as_tensor(item.root_idxs, dtype=torch.long)


def out_layers(group: Group) -> Iterator[tuple[nn.Module, list[int], torch.Tensor]]:
    """Convolutions and linear layers whose *output* channels the group removes."""
    return group_layers(group, _OUT_FNS)


def in_layers(group: Group) -> Iterator[tuple[nn.Module, list[int], torch.Tensor]]:
    """Convolutions and linear layers whose *input* channels the group removes (the consumers)."""
    return group_layers(group, _IN_FNS)


def bn_layers(group: Group) -> Iterator[tuple[nn.Module, list[int], torch.Tensor]]:
    """BatchNorm layers of the group."""
    return group_layers(group, (tp.prune_batchnorm_out_channels,))


def filter_rows(layer: nn.Module, idxs: list[int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """The output filters ``idxs`` of a conv or linear layer, one flattened row each.

    ``weight`` defaults to the layer's weight; pass a tensor of the same shape (a gradient) to
    read that instead.
    """
    tensor = typing.cast(torch.Tensor, layer.weight if weight is None else weight).detach()
    if getattr(layer, "transposed", False):
        tensor = tensor.transpose(0, 1)
    return tensor[idxs].flatten(1)
