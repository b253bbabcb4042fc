"""Weight-level sparsity: single weights of convolution and linear layers zeroed, through
``torch.nn.utils.prune``.

PyTorch's own pruning utilities keep the books: each pruned layer holds ``weight_orig`` and a
``weight_mask``, and a forward pre-hook multiplies them, so a zeroed weight stays exactly zero
while the model fine-tunes (its gradient is masked too). :func:`torch.nn.utils.prune.l1_unstructured`
and :func:`~torch.nn.utils.prune.global_unstructured` choose the weights (by the scorer's scores,
handed over as ``importance_scores``, with whole counts so a layer loses exactly ⌊s·n⌋ weights);
successive steps only add to a mask. N:M, which those utilities do not offer, is a mask computed here
(the N highest scores of every M consecutive weights along the input channels) and handed to
:func:`~torch.nn.utils.prune.custom_from_mask`. torchao's sparsity API was the other candidate: it
targets 2:4 linear layers on CUDA and is built for one torch release at a time, where
``torch.nn.utils.prune`` covers convolutions too, on every device, with the installed torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from autoprune.errors import AutopruneError
from autoprune.policy import Sparsity
from autoprune.scorers._base import Batch, LossFn

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights can be sparse: every convolution and linear layer, by dotted path."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)}


def nm_eligible(module: nn.Module, m: int) -> bool:
    """Whether N:M groups of ``m`` fit the layer's input channels (per convolution group)."""
    weight = _weight(module)
    return weight.dim() >= 2 and weight.shape[1] % m == 0


def sparse_layers(model: nn.Module, kind: str, m: int) -> dict[str, int]:
    """The layers a study of ``kind`` (``space.kind``) may make sparse, with their weight counts: every
    convolution and linear layer for ``weights``; for the N:M kinds, those whose input channels ``m``
    divides; none for ``channels``."""
    if kind == "channels":
        return {}
    layers = weight_layers(model)
    return {
        name: _weight(module).numel() for name, module in layers.items() if kind == "weights" or nm_eligible(module, m)
    }


def schedule(step: int, steps: int) -> float:
    """Share of the target sparsity reached after prune step ``step`` of ``steps`` (1-based): the cubic
    schedule of gradual magnitude pruning (Zhu and Gupta, 2017), ``1 - (1 - step/steps)³``."""
    return 1.0 - (1.0 - step / steps) ** 3


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with (its mask applied)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _trained(module: nn.Module) -> torch.Tensor:
    """The parameter training updates: ``weight_orig`` under a mask, else ``weight``."""
    weight = getattr(module, "weight_orig", module.weight)
    assert isinstance(weight, torch.Tensor)
    return weight


def _mask(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "weight_mask", None)
    return mask if isinstance(mask, torch.Tensor) else torch.ones_like(_weight(module))


def _lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP scores (Lee et al., 2021): each score squared over the sum of the squares of the layer's
    scores at or above it."""
    flat = scores.flatten().double() ** 2
    order = flat.argsort()
    sorted_sq = flat[order]
    tail = sorted_sq.flip(0).cumsum(0).flip(0)
    lamp = torch.empty_like(flat)
    lamp[order] = sorted_sq / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return lamp.view_as(scores).float()


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The mask keeping the ``n`` highest of every ``m`` consecutive scores along dimension 1 (a
    weight's input channels), for every output channel and kernel position."""
    moved = scores.movedim(1, -1)
    if moved.shape[-1] % m:
        raise AutopruneError(f"{m} does not divide the {moved.shape[-1]} input channels of an N:M layer")
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups)
    keep.scatter_(1, groups.topk(n, dim=1).indices, 1.0)
    return keep.reshape(moved.shape).movedim(-1, 1)


class LampReference:
    """The per-layer kept shares that LAMP ranking gives a model at any overall kept share, from its
    weights as they are (the reference the ``layer`` granularity's offsets start from).

    Args:
        model: The base model.
        layers: The layers that may be sparse.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = weight_layers(model)
        self.sizes = {name: _weight(modules[name]).numel() for name in layers}
        scores = {name: _lamp(_weight(modules[name]).detach().abs().cpu()).flatten() for name in layers}
        self._sorted = {name: s.sort().values for name, s in scores.items()}
        self._all = torch.cat(list(scores.values())).sort().values

    def shares(self, density: float) -> dict[str, float]:
        """Kept share of each layer when ``density`` of all the layers' weights is kept."""
        total = self._all.numel()
        removed = min(total - 1, math.floor((1.0 - density) * total))
        threshold = self._all[removed - 1] if removed > 0 else -math.inf
        return {name: max(1, int((values > threshold).sum())) / values.numel() for name, values in self._sorted.items()}


class WeightMasks:
    """Apply a policy's :class:`~autoprune.policy.Sparsity` to a model, in ``steps`` prune steps.

    Args:
        model: The model to mask in place (a trial's copy, after any channel surgery step).
        sparsity: What to zero.
        steps: Prune steps; after step k the masks hold :func:`schedule` (k, steps) of the target,
            and the N:M masks come with the last.
        seed: Seeds the ``random`` scorer.
    """

    def __init__(self, model: nn.Module, sparsity: Sparsity, steps: int, seed: int = 0) -> None:
        self.model = model
        self.sparsity = sparsity
        self.steps = steps
        self.seed = seed
        self._calls = 0
        layers = weight_layers(model)
        unknown = sorted((set(sparsity.layers) | set(sparsity.nm_layers)) - set(layers))
        if unknown:
            raise AutopruneError(
                f"the policy's sparsity names layers this model does not have: {unknown}; it has: {sorted(layers)}"
            )
        self.layers = {name: layers[name] for name in sparsity.layers}
        self.nm_layers = {name: layers[name] for name in sparsity.nm_layers}

    @property
    def needs_data(self) -> bool:
        return self.sparsity.scorer == "taylor"

    def _scores(
        self, modules: Mapping[str, nn.Module], calibration: Sequence[Batch], loss_fn: LossFn
    ) -> dict[str, torch.Tensor]:
        """Each layer's weight scores; masked weights score 0."""
        scorer = self.sparsity.scorer
        if scorer == "random":
            generator = torch.Generator().manual_seed(self.seed)
            raw = {
                n: torch.rand(_weight(m).shape, generator=generator).to(_weight(m).device) for n, m in modules.items()
            }
        elif scorer == "taylor":
            raw = self._taylor(modules, calibration, loss_fn)
        else:
            raw = {n: _weight(m).detach().abs() for n, m in modules.items()}
        return {n: raw[n] * _mask(m) for n, m in modules.items()}

    def _taylor(
        self, modules: Mapping[str, nn.Module], calibration: Sequence[Batch], loss_fn: LossFn
    ) -> dict[str, torch.Tensor]:
        """|w · ∂L/∂w| summed over the calibration batches."""
        if not calibration:
            raise AutopruneError("the taylor weight scorer needs calibration batches")
        params = {n: _trained(m) for n, m in modules.items()}
        totals = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = self.model.training
        self.model.eval()
        with torch.enable_grad():
            for x, y in calibration:
                grads = torch.autograd.grad(loss_fn(self.model(x), y), list(params.values()), allow_unused=True)
                for (name, param), grad in zip(params.items(), grads, strict=True):
                    if grad is not None:
                        totals[name] += (param.detach() * grad).abs()
        self.model.train(was_training)
        return totals

    def step(self, calibration: Sequence[Batch] = (), loss_fn: LossFn = nn.functional.cross_entropy) -> None:
        """Zero more weights, up to this step's share of the target (and N:M on the last step)."""
        if self._calls >= self.steps:
            raise AutopruneError(f"the weight masks already took their {self.steps} step(s)")
        self._calls += 1
        share = schedule(self._calls, self.steps)
        if self.layers:
            scores = self._scores(self.layers, calibration, loss_fn)
            if self.sparsity.ranking == "layer":
                self._per_layer(scores, share)
            else:
                self._ranked_together(scores, share)
        if self._calls == self.steps and self.nm_layers:
            self._nm(self._scores(self.nm_layers, calibration, loss_fn))

    def _per_layer(self, scores: Mapping[str, torch.Tensor], share: float) -> None:
        threshold = self.sparsity.mode == "threshold"
        for name, module in self.layers.items():
            value = share * self.sparsity.layers[name]
            zeroed = int((_mask(module) == 0).sum())
            if threshold:
                target = int((scores[name] < value * float(scores[name].max())).sum())
            else:
                target = math.floor(value * scores[name].numel())
            prune.l1_unstructured(module, "weight", amount=max(0, target - zeroed), importance_scores=scores[name])

    def _ranked_together(self, scores: Mapping[str, torch.Tensor], share: float) -> None:
        if self.sparsity.ranking == "lamp":
            scores = {name: _lamp(s) for name, s in scores.items()}
        value = share * next(iter(self.sparsity.layers.values()))
        total = sum(s.numel() for s in scores.values())
        zeroed = sum(int((_mask(m) == 0).sum()) for m in self.layers.values())
        prune.global_unstructured(
            [(module, "weight") for module in self.layers.values()],
            pruning_method=prune.L1Unstructured,
            importance_scores={(module, "weight"): scores[name] for name, module in self.layers.items()},
            amount=max(0, math.floor(value * total) - zeroed),
        )

    def _nm(self, scores: Mapping[str, torch.Tensor]) -> None:
        n, m = self.sparsity.nm
        for name, module in self.nm_layers.items():
            if not nm_eligible(module, m):
                continue
            mask = nm_mask(scores[name], n, m) * _mask(module)
            if prune.is_pruned(module):
                prune.remove(module, "weight")
            prune.custom_from_mask(module, "weight", mask)

    def finish(self) -> dict[str, float]:
        """Make the zeros permanent (plain ``weight`` parameters again, zeros in place) and return
        the share of zero weights of every layer the policy names."""
        for module in weight_layers(self.model).values():
            if prune.is_pruned(module):
                prune.remove(module, "weight")
        return zero_shares(self.model, [*self.layers, *self.nm_layers])


def zero_shares(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Share of exactly-zero weights in each named layer (default: every convolution and linear layer)."""
    layers = weight_layers(model)
    return {
        name: float((_weight(layers[name]) == 0).float().mean()) for name in (names if names is not None else layers)
    }


@torch.no_grad()
def nonzero_macs(model: nn.Module, example_input: torch.Tensor, macs: int) -> int:
    """``macs`` less the multiply-accumulates of zero weights: each convolution or linear layer costs
    (its output positions) × (its non-zero weights) instead of × (all its weights). An N:M layer so
    costs N/M of its dense figure, what sparse tensor cores execute.
    """
    saved = [0]

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        weight = _weight(module)
        positions = output.numel() // output.shape[0] // weight.shape[0]
        saved[0] += positions * (weight.numel() - int(torch.count_nonzero(weight)))

    handles = [module.register_forward_hook(count) for module in weight_layers(model).values()]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs - saved[0]


@contextlib.contextmanager
def zeros_held(model: nn.Module) -> Iterator[None]:
    """Within the block, every zero weight of a convolution or linear layer stays zero (masks from the
    zeros as they stand, for training a sparse model further); afterwards the weights are plain again."""
    masked = []
    for module in weight_layers(model).values():
        weight = _weight(module)
        if not prune.is_pruned(module) and bool((weight == 0).any()):
            prune.custom_from_mask(module, "weight", (weight != 0).to(weight.dtype))
            masked.append(module)
    try:
        yield
    finally:
        for module in masked:
            prune.remove(module, "weight")


__all__ = [
    "LAYER_TYPES",
    "WeightMasks",
    "nm_eligible",
    "nm_mask",
    "nonzero_macs",
    "schedule",
    "sparse_layers",
    "weight_layers",
    "zero_shares",
    "zeros_held",
]
