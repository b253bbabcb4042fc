"""Scorers that look at calibration batches: taylor and gradient_norm."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from autoprune.scorers._base import (
    Batch,
    LossFn,
    Scorer,
    bn_layers,
    channels,
    filter_rows,
    in_layers,
    out_layers,
)

if TYPE_CHECKING:
    from torch_pruning.dependency import Group


def _backward_passes(
    model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, after_backward: Callable[[], None]
) -> None:
    """Run forward and backward on each batch in eval mode (BatchNorm statistics stay as they are)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                after_backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


class Taylor(Scorer):
    """First-order Taylor estimate of the loss change when the channel is removed.

    Removing a channel zeroes it in the input ``a`` of every layer that consumes it, which changes
    the loss by about ``-Σ a·∂L/∂a`` (Molchanov et al., 2017). The score is ``|Σ a·∂L/∂a|`` summed
    over the consumers and all positions in a batch, then its absolute value added up over the
    calibration batches.
    """

    name = "taylor"
    needs_data = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._contrib: dict[nn.Module, list[torch.Tensor]] = {}

    def prepare(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> None:
        self._contrib = {}
        handles = []

        def on_forward(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            activation = inputs[0]
            if not activation.requires_grad:
                return
            values = activation.detach()  # not the activation itself: see below

            def on_grad(grad: torch.Tensor) -> None:
                product = (values * grad).float()
                per_channel = (
                    product.sum(dim=(0, *range(2, product.dim())))
                    if isinstance(module, nn.modules.conv._ConvNd)
                    else product.reshape(-1, product.shape[-1]).sum(0)
                )
                self._contrib.setdefault(module, []).append(per_channel.cpu())

            # A hook that holds the tensor it is registered on makes a cycle through autograd's C++ side,
            # which the garbage collector cannot see: the activation, the hook, its module and with it the
            # trial's model would never be freed.
            activation.register_hook(on_grad)

        for module in model.modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                handles.append(module.register_forward_hook(on_forward))
        try:
            _backward_passes(model, batches, loss_fn, lambda: None)
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, group: Group) -> torch.Tensor:
        consumers = [(layer, idxs, root) for layer, idxs, root in in_layers(group) if layer in self._contrib]
        score = torch.zeros(channels(group))
        if not consumers:
            return score
        for batch in range(len(self._contrib[consumers[0][0]])):
            total = torch.zeros(channels(group))
            for layer, idxs, root in consumers:
                total.scatter_add_(0, root, self._contrib[layer][batch][idxs])
            score += total.abs()
        return score


class GradientNorm(Scorer):
    """Gradient magnitude of the loss with respect to the channel's own parameters.

    ``sqrt(Σ_batches Σ g²)`` over the channel's output filters (and biases) and its BatchNorm
    γ and β: a channel the loss does not depend on scores zero.
    """

    name = "gradient_norm"
    needs_data = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._squared: dict[object, torch.Tensor] = {}

    def prepare(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self._squared = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}

        def accumulate() -> None:
            for p in params:
                if p.grad is not None:
                    self._squared[p] += p.grad.detach().float() ** 2

        _backward_passes(model, batches, loss_fn, accumulate)

    def __call__(self, group: Group) -> torch.Tensor:
        total = torch.zeros(channels(group))
        for layer, idxs, root in out_layers(group):
            total.scatter_add_(0, root, filter_rows(layer, idxs, self._squared[layer.weight]).sum(1).cpu())
            if layer.bias is not None:
                total.scatter_add_(0, root, self._squared[layer.bias][idxs].cpu())
        for bn, idxs, root in bn_layers(group):
            for param in (bn.weight, bn.bias):
                if param is not None:
                    total.scatter_add_(0, root, self._squared[param][idxs].cpu())
        return total.sqrt()
