"""The cost model: MACs and parameters of a pruned model from its groups' kept-channel counts alone,
without surgery.

Every layer's MACs and parameters are, for torch-pruning's counter, a polynomial of degree at most
two in the channel counts of the groups that touch it (a conv's input group times its output group,
a BatchNorm's one group, a depthwise conv's one group). :meth:`CostModel.fit` finds, for each
layer, which groups touch it (pruning each group alone changes it) and fits that polynomial to
the layer's counts on a few pruned copies of the base model: ``2 G + 3`` surgeries for ``G``
groups, once. It then checks itself on other random prunings against the counter's totals and
records the largest relative error (:attr:`CostModel.max_error`): 0 up to float rounding where the
counts alone decide the cost, more where they do not. A group whose channels span a concatenation
is such a case: which branch loses the channels depends on the scorer, not on the count.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import Surgery, TracedModel

if TYPE_CHECKING:
    from autoprune.trial.latency_model import LatencyModel

EXACT = 1e-9
"""Relative error below which the model counts as exact (float rounding of the fit)."""


_OUTSIDE = "<outside every module>"


@dataclasses.dataclass(frozen=True)
class _Term:
    """One layer's figure as a polynomial in the kept counts of the groups that touch it: the
    coefficients of :func:`_monomials`."""

    groups: tuple[str, ...]
    coefficients: tuple[float, ...]


def _monomials(groups: Sequence[str], kept: Mapping[str, float]) -> list[float]:
    """1, each group's count, and every product of two of them (squares included)."""
    counts = [float(kept[g]) for g in groups]
    return [1.0, *counts, *(a * b for a, b in itertools.combinations_with_replacement(counts, 2))]


def _layer_figures(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(MACs, parameters) of every module by dotted path, its own and not its children's, as
    torch-pruning's counter and ``model.parameters()`` count them; the counter's MACs outside every
    module are under :data:`_OUTSIDE`."""
    was_training = model.training
    total, _params, macs, _layer_params = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    model.train(was_training)
    figures: dict[str, tuple[float, float]] = {}
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        # the counter's figure for a module includes its children's; some modules it counts whole
        # (timm's attention), leaving their layers uncounted: what is left after the children is the module's own
        within = float(macs.get(module) or 0)
        own_macs = max(0.0, within - sum(float(macs.get(child) or 0) for child in module.children()))
        figures[name] = (own_macs, float(own))
    figures[_OUTSIDE] = (float(total) - sum(m for m, _p in figures.values()), 0.0)
    return figures


@dataclasses.dataclass(frozen=True)
class _Quadratic:
    """A figure summed over every layer: ``constant + linear · k + k · quadratic · k`` for the vector
    ``k`` of kept counts (groups in the cost model's order); evaluated for many ``k`` at once."""

    constant: float
    linear: np.ndarray
    quadratic: np.ndarray

    @classmethod
    def of(cls, terms: Sequence[_Term], names: Sequence[str]) -> _Quadratic:
        index = {g: i for i, g in enumerate(names)}
        constant, linear, quadratic = 0.0, np.zeros(len(names)), np.zeros((len(names), len(names)))
        for term in terms:
            at = [index[g] for g in term.groups]
            constant += term.coefficients[0]
            for i, c in zip(at, term.coefficients[1 : 1 + len(at)], strict=True):
                linear[i] += c
            pairs = itertools.combinations_with_replacement(at, 2)
            for (i, j), c in zip(pairs, term.coefficients[1 + len(at) :], strict=True):
                quadratic[i, j] += c
        return cls(constant, linear, quadratic)

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        return self.constant + kept @ self.linear + np.einsum("...i,ij,...j->...", kept, self.quadratic, kept)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """MACs and parameters of the base model pruned to given per-group kept-channel counts.

    Attributes:
        base: Kept channels of every group in the unpruned model; its order is the order of the
            vectors :meth:`predict_many` takes.
        max_error: The largest relative error of :meth:`predict` (MACs or parameters) on the
            random prunings :meth:`fit` checked it on; at most :data:`EXACT` where the counts
            alone decide the cost.
        heads: The groups that lose whole attention heads, with their head count
            (:attr:`~autoprune.trial.surgery.TracedModel.heads`).
        latency: The study's latency model, which gives the figure ``latency_ms`` (none: only MACs
            and parameters).
    """

    base: dict[str, int]
    max_error: float
    _macs: _Quadratic
    _params: _Quadratic
    heads: dict[str, int] = dataclasses.field(default_factory=dict)
    latency: LatencyModel | None = None

    @property
    def exact(self) -> bool:
        return self.max_error <= EXACT

    @property
    def groups(self) -> list[str]:
        return list(self.base)

    def predict(self, kept: Mapping[str, int]) -> tuple[float, float]:
        """(MACs, parameters) with each group at its ``kept`` count (groups not named: unpruned)."""
        unknown = sorted(set(kept) - set(self.base))
        if unknown:
            raise AutopruneError(f"the cost model has no groups {unknown}; it has: {sorted(self.base)}")
        counts = np.array([float(kept.get(g, c)) for g, c in self.base.items()])
        return float(self._macs(counts)), float(self._params(counts))

    def predict_many(self, kept: np.ndarray, figure: str = "macs") -> np.ndarray:
        """``figure`` (``macs``, ``params`` or, with a latency model, ``latency_ms``) for each row of kept
        counts (columns: :attr:`groups`)."""
        if figure == "latency_ms":
            if self.latency is None:
                raise AutopruneError("latency_ms needs the study's latency model, and this cost model has none")
            return self.latency.predict_many(np.asarray(kept, dtype=float))
        return (self._macs if figure == "macs" else self._params)(np.asarray(kept, dtype=float))

    @classmethod
    def fit(cls, traced: TracedModel, *, seed: int = 0, checks: int = 4) -> CostModel:
        """Fit the cost model of ``traced.model`` (left unchanged) from pruned CPU copies of it.

        Args:
            traced: The base model, traced; its example input's first row is the batch of one
                the MACs are counted for.
            seed: Seeds the random prunings of the fit and of the checks.
            checks: Random prunings the fitted model is checked on (:attr:`max_error`).
        """
        example = traced.example_input[:1].cpu()
        return cls.fit_probes(
            traced.names,
            lambda ratios: pruned_copy(traced, example, ratios),
            lambda model: _layer_figures(model, example),
            lambda model: count_macs_params(model, example),
            heads=traced.heads,
            seed=seed,
            checks=checks,
        )

    @classmethod
    def fit_probes(
        cls,
        names: Sequence[str],
        prune: Callable[[Mapping[str, float]], tuple[nn.Module, dict[str, int]]],
        figures: Callable[[nn.Module], dict[str, tuple[float, float]]],
        count: Callable[[nn.Module], tuple[float, float]],
        *,
        heads: Mapping[str, int],
        seed: int = 0,
        checks: int = 4,
    ) -> CostModel:
        """Fit the cost model of a base model whose groups are ``names``: ``prune`` gives a copy pruned
        by given ratios and its groups' kept counts, ``figures`` each layer's (MACs, parameters) by
        name, ``count`` the whole model's, counted apart. ``2 G + 3`` prunings fit it; ``checks``
        random prunings more check it against ``count``."""
        rng = random.Random(seed)
        plans: list[dict[str, float]] = [{}, *({g: 0.5} for g in names)]
        plans += [dict.fromkeys(names, level) for level in (0.3, 0.7)]
        plans += [{g: rng.uniform(0.0, 0.8) for g in names} for _ in names]
        probes = [(kept, figures(model)) for model, kept in map(prune, plans)]
        base = {g: int(probes[0][0][g]) for g in names}
        single = dict(zip(names, probes[1 : 1 + len(names)], strict=True))
        terms: list[list[_Term]] = [[], []]
        for layer in probes[0][1]:
            for figure in (0, 1):
                before = probes[0][1][layer][figure]
                touching = tuple(g for g in names if single[g][1].get(layer, (0.0, 0.0))[figure] != before)
                a = np.array([_monomials(touching, kept) for kept, _f in probes])
                y = np.array([f.get(layer, (0.0, 0.0))[figure] for _kept, f in probes])
                solution, *_ = np.linalg.lstsq(a, y, rcond=None)
                terms[figure].append(_Term(touching, tuple(float(c) for c in solution)))
        fitted = cls(base, 0.0, _Quadratic.of(terms[0], names), _Quadratic.of(terms[1], names), dict(heads))
        error = 0.0
        for _ in range(checks):
            model, kept = prune({g: rng.uniform(0.0, 0.85) for g in names})
            counted = count(model)
            predicted = fitted.predict(kept)
            error = max([error, *(abs(p - c) / c for p, c in zip(predicted, counted, strict=True) if c)])
        return dataclasses.replace(fitted, max_error=error)


def pruned_copy(
    traced: TracedModel, example: torch.Tensor, ratios: Mapping[str, float], *, multiple: int = 1
) -> tuple[nn.Module, dict[str, int]]:
    """A CPU copy of the traced model pruned by ``ratios`` (l1 scorer, one step, kept channels rounded
    to ``multiple``), and the groups' kept counts."""
    model, graph = traced.copy("cpu")
    pruned = {g: r for g, r in ratios.items() if r > 0}
    policy = Policy(ratios=pruned, scorer="l1", finetune_steps=1, lr=0.01, channel_multiple=multiple)
    surgery = Surgery(model, example, policy, make_scorer("l1"), groups=traced.names, graph=graph)
    surgery.step()
    return model, surgery.kept()


__all__ = ["EXACT", "CostModel", "pruned_copy"]
