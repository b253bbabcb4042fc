"""Surgery: structural removal of channels, through torch-pruning.

This is the only module that drives torch-pruning's dependency graph and pruner. Channels are
physically removed, so parameter tensors shrink and MACs fall; layers tied together (a conv, its
BatchNorm, the next layer's inputs, every output joined by a residual add) form a *group* that
loses the same channels. Groups are named by the dotted path of their root layer. The model's
output layer (the last conv or linear layer to run) keeps its outputs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune._logging import get_logger, warnings_to_debug
from autoprune.errors import AutopruneError
from autoprune.policy import Policy
from autoprune.scorers import Scorer
from autoprune.scorers._base import Batch, LossFn

log = get_logger(__name__)

_ROOT_TYPES = [nn.modules.conv._ConvNd, nn.Linear]


@dataclass(frozen=True)
class PrunableGroup:
    """A set of layers whose channels are removed together.

    Attributes:
        name: Dotted path of the root layer; keys the policy's ratios.
        channels: Channels the group has now.
        layers: Dotted paths of every layer the group touches.
    """

    name: str
    channels: int
    layers: tuple[str, ...]


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The last conv or linear layer to run: its outputs are the model's outputs."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, tuple(_ROOT_TYPES))
    ]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise AutopruneError("the model has no convolution or linear layer to prune")
    return [order[-1]]


class _Graph(tp.dependency.DependencyGraph):
    """torch-pruning's dependency graph, remembering the groups it walked while its model was whole.

    Walking the groups maps every channel index through every layer a group touches (a flatten
    multiplies them by the spatial size), and torch-pruning's pruner walks them all in its
    constructor and again in each step. Until the graph's first removal those walks give the same
    groups, so the first is kept and the others reuse it: a :meth:`TracedModel.copy` inherits what
    the template walked, and a trial's first prune step walks nothing.
    """

    _whole: dict[tuple[frozenset[str], tuple[type, ...]], list[Any]]

    def get_all_groups(
        self, ignored_layers: Sequence[nn.Module] = (), root_module_types: Sequence[type] = tuple(_ROOT_TYPES)
    ) -> Iterator[Any]:
        if self._pruning_history:
            return super().get_all_groups(ignored_layers=list(ignored_layers), root_module_types=root_module_types)
        whole = self.__dict__.setdefault("_whole", {})
        key = (frozenset(self._module2name.get(m, "") for m in ignored_layers), tuple(root_module_types))
        if key not in whole:
            whole[key] = list(
                super().get_all_groups(ignored_layers=list(ignored_layers), root_module_types=root_module_types)
            )
        return iter(whole[key])


class _Given:
    """Stands in for ``DependencyGraph()`` while a pruner is built on a graph traced before."""

    def __init__(self, graph: _Graph) -> None:
        self.graph = graph

    def build_dependency(self, model: nn.Module, **_tracing: object) -> _Graph:
        if model is not self.graph.model:
            raise AutopruneError("internal: a dependency graph was given for another model than the pruner's")
        return self.graph


@contextlib.contextmanager
def _traced_already(graph: _Graph) -> Iterator[None]:
    """While a torch-pruning pruner is constructed, have it take ``graph`` instead of tracing.

    ``BasePruner.__init__`` traces its model (``dependency.DependencyGraph().build_dependency(...)``)
    and takes no graph; for the length of the constructor its module's ``dependency`` is one whose
    graph is ``graph``. One pruner is built at a time in a process (trials do not run in threads);
    ``tests/test_trace_once.py`` pins this to torch-pruning's constructor.
    """
    module: Any = sys.modules[tp.pruner.BasePruner.__module__]
    real = module.dependency
    module.dependency = types.SimpleNamespace(DependencyGraph=lambda: _Given(graph))
    try:
        yield
    finally:
        module.dependency = real


class _PatchMergingSurgery(tp.pruner.function.BasePruningFunc):
    """Surgery on a Swin patch merging layer (timm's ``PatchMerging``, torchvision's adapted), which
    torch-pruning cannot trace through: it lays each 2×2 block of tokens side by side on the channel
    axis, so its ``reduction`` (and in Swin V1 its LayerNorm) sees the input width four times over,
    and an input channel ``i`` removed goes at ``i + k·dim`` for each of the four (as in
    torch-pruning's own Swin example). In Swin V2 the LayerNorm follows the ``reduction``'s outputs
    instead. ``layer`` is any module laid out so (:func:`_is_patch_merging`)."""

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        if not _norm_first(layer):
            tp.prune_layernorm_out_channels(layer.norm, list(idxs))
        tp.prune_linear_out_channels(layer.reduction, list(idxs))
        layer.out_dim = layer.reduction.out_features
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        dim = int(layer.dim)
        repeated = [i + k * dim for k in range(4) for i in idxs]
        if _norm_first(layer):
            tp.prune_layernorm_out_channels(layer.norm, repeated)
        tp.prune_linear_in_channels(layer.reduction, repeated)
        layer.dim = dim - len(set(idxs))
        return layer

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.reduction.out_features)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.dim)


def _norm_first(m: Any) -> bool:
    """Whether a patch merging layer normalises the joined tokens (Swin V1), not its output (V2)."""
    return tuple(m.norm.normalized_shape) == (4 * m.dim,)


def _is_patch_merging(m: nn.Module) -> bool:
    """A layer laid out as Swin's patch merging: an int ``dim``, a linear ``reduction`` over
    ``4 * dim`` channels, and a LayerNorm over those or over the reduction's outputs."""
    dim, norm, reduction = getattr(m, "dim", None), getattr(m, "norm", None), getattr(m, "reduction", None)
    return (
        isinstance(dim, int)
        and isinstance(norm, nn.LayerNorm)
        and isinstance(reduction, nn.Linear)
        and reduction.in_features == 4 * dim
        and tuple(norm.normalized_shape) in ((4 * dim,), (reduction.out_features,))
    )


def _customized(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """The layer types surgery handles itself, not through torch-pruning's trace."""
    return {type(m): _PatchMergingSurgery() for m in model.modules() if _is_patch_merging(m)}


def _trace(model: nn.Module, example_input: torch.Tensor) -> _Graph:
    """torch-pruning's dependency graph of ``model``, as its pruner builds it."""
    try:
        # torch-pruning traces through autograd (callers may be under no_grad); its notes on the
        # trace ("Unwrapped parameters detected") go to the debug log
        with torch.enable_grad(), warnings_to_debug(log):
            return _Graph().build_dependency(
                model,
                example_inputs=example_input,
                ignored_params=_position_biases(model),
                customized_pruners=_customized(model),
            )
    except AutopruneError:
        raise
    except Exception as exc:
        raise AutopruneError(f"torch-pruning cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc


def _pruner(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: _Graph,
    importance: Callable[[Any], torch.Tensor] | None = None,
    **kwargs: object,
) -> tp.pruner.BasePruner:
    with torch.enable_grad(), warnings_to_debug(log), _traced_already(graph):
        return tp.pruner.BasePruner(
            model,
            example_input,
            importance=importance or (lambda group: torch.zeros(len(group[0].idxs))),
            ignored_layers=output_layers(model, example_input) + whole_attention(model),
            root_module_types=_ROOT_TYPES,
            **kwargs,
        )


def _capped(ratio: float, root: nn.Module, multiple: int) -> float:
    """``ratio``, lowered where needed so that the group keeps at least ``multiple`` channels.

    torch-pruning keeps ``int(C * (1 - ratio))`` channels rounded down to the multiple; where that is
    zero it skips the group, so a higher ratio would remove nothing at all.
    """
    channels = getattr(root, "out_channels", getattr(root, "out_features", None))
    if not isinstance(channels, int):
        return ratio
    return max(0.0, min(ratio, (channels - multiple - 0.5) / channels))


def _groups(model: nn.Module, pruner: tp.pruner.BasePruner) -> list[tuple[str, Any]]:
    """(root layer's dotted path, torch-pruning group) for every prunable group, in the pruner's order."""
    names = {module: name for name, module in model.named_modules()}
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    return [(names[group[0].dep.target.module], group) for group in groups]


def _position_bias(m: nn.Module) -> torch.Tensor | None:
    """A window attention's relative position bias table (Swin's): a column per head."""
    table = getattr(m, "relative_position_bias_table", None)
    heads = getattr(m, "num_heads", None)
    return table if isinstance(table, torch.Tensor) and table.dim() == 2 and table.shape[1] == heads else None


def _position_biases(model: nn.Module) -> list[torch.Tensor]:
    """The position bias tables of the model's window attention. torch-pruning would map a head
    group's channel indices onto a table's columns, one per head, and refuse the group: surgery
    cuts the tables itself (:func:`_cut_position_bias`)."""
    return [table for m in model.modules() if (table := _position_bias(m)) is not None]


def attention_modules(model: nn.Module) -> dict[str, Any]:
    """The model's attention modules surgery removes whole heads from, by dotted path: those with a
    fused ``qkv`` linear layer of ``num_heads`` heads, each ``head_dim`` wide (the built-in ViT's,
    timm's) or with a relative position bias table of a column per head (Swin's window attention)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
        and (isinstance(getattr(m, "head_dim", None), int) or _position_bias(m) is not None)
    }


def whole_attention(model: nn.Module) -> list[nn.Module]:
    """The fused ``qkv`` layers of attention modules that surgery cannot tell the heads of (neither
    ``head_dim`` nor a position bias table with a column per head): they keep their outputs, so the
    attention keeps every head at its full width. Their inputs still follow the width of the tokens."""
    attention = attention_modules(model)
    return [
        m.qkv
        for name, m in model.named_modules()
        if name not in attention and isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads")
    ]


def _cut_position_bias(model: nn.Module, removals: Removal) -> None:
    """Drop the position-bias columns of the heads that ``removals`` (channel removals applied since
    the tables were last cut, in order) took from a window attention, and set its ``num_heads`` to
    match: torch-pruning does not see the table, which is indexed, not multiplied. torch-pruning
    removes a head group from the input channels of the attention's ``proj``, where head ``h`` is
    channels ``h·head_dim`` to ``(h + 1)·head_dim``."""
    modules = dict(model.named_modules())
    owners = {id(m.proj): m for m in attention_modules(model).values() if _position_bias(m) is not None}
    head_dims: dict[str, int] = {}
    for name, out, idxs in removals:
        attention = owners.get(id(modules.get(str(name))))
        if attention is None or out:
            continue
        table = attention.relative_position_bias_table
        if name not in head_dims:  # the width before these removals, over the heads then
            pending = sum(len(i) for n, o, i in removals if n == name and not o)
            head_dims[name] = (attention.proj.in_features + pending) // table.shape[1]
        gone = {int(i) // head_dims[name] for i in idxs}
        kept = [h for h in range(table.shape[1]) if h not in gone]
        attention.relative_position_bias_table = nn.Parameter(
            table.data[:, kept].clone(), requires_grad=table.requires_grad
        )
        attention.num_heads = len(kept)


def head_share(ratio: float, num_heads: int) -> float:
    """The share of a module's ``num_heads`` heads that surgery removes for a ``qkv`` group ratio
    (torch-pruning removes ``ceil(share * num_heads)`` of them): the ratio, capped so one head stays."""
    return min(ratio, (num_heads - 1.001) / num_heads)


def kept_heads(ratio: float, num_heads: int) -> int:
    """The heads of ``num_heads`` that surgery keeps for a ``qkv`` group ratio."""
    return num_heads - math.ceil(head_share(ratio, num_heads) * num_heads)


def kept_channels(channels: int, ratio: float, multiple: int) -> int:
    """The channels of a group of ``channels`` that surgery keeps at ``ratio``: ``int(channels * (1 - ratio))``
    rounded down to the multiple, at least one multiple (all of a group no larger than one)."""
    if ratio <= 0.0 or channels <= multiple:
        return channels
    kept = int(channels * (1.0 - ratio))
    return max(multiple, kept - kept % multiple)


def match_widths(model: nn.Module) -> None:
    """Set the widths a model reshapes with to what surgery left: each attention module's
    ``num_heads`` (and timm's ``attn_dim``) from its ``qkv`` layer, and a torchvision ViT's
    ``hidden_dim`` from its patch embedding ``conv_proj``."""
    for m in attention_modules(model).values():
        if isinstance(getattr(m, "head_dim", None), int):
            m.num_heads = m.qkv.out_features // (3 * m.head_dim)
        if isinstance(getattr(m, "attn_dim", None), int):
            m.attn_dim = m.num_heads * m.head_dim
    conv_proj = getattr(model, "conv_proj", None)
    if isinstance(getattr(model, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
        setattr(model, "hidden_dim", conv_proj.out_channels)  # noqa: B010 (nn.Module types its attributes as modules)


def _shared(graph: _Graph) -> dict[int, object]:
    """What every copy of ``graph`` shares with it instead of copying (a ``deepcopy`` memo): the
    ``ops`` module and the pruning functions (torch-pruning shares both between its graphs), the
    autograd nodes recorded while tracing (they cannot be copied and are not read afterwards), and
    the index lists of the groups walked while the model was whole (read to score and count
    channels; a removal walks a new group with its own lists)."""
    kept: list[object] = [graph.ops, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
    for node in graph.module2node.values():
        kept.append(node.grad_fn)
        if isinstance(node.module, nn.Module):
            kept += [v for v in vars(node.module).values() if hasattr(v, "next_functions")]
    for groups in graph.__dict__.get("_whole", {}).values():
        kept += [item.idxs for group in groups for item in group]
    return {id(obj): obj for obj in kept if obj is not None}


class TracedModel:
    """A model with torch-pruning's dependency graph of it, traced once.

    Tracing runs the model through autograd and builds the graph; walking the groups maps every
    channel index through the layers each group touches. Both happen here, once. Each :meth:`copy`
    is a new model with its own copy of the graph and of the walked groups, which :class:`Surgery`
    and :func:`rebuild` edit without tracing again. The traced model itself is never edited.

    Attributes:
        model: The model traced.
        example_input: The input it was traced with.
        groups: Its prunable groups, named by their root layer's dotted path.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model = model
        self.example_input = example_input
        self.graph = _trace(model, example_input)
        names = {module: name for name, module in model.named_modules()}
        self.groups = []
        for name, group in _groups(model, _pruner(model, example_input, self.graph)):
            layers = tuple(
                dict.fromkeys(names[item.dep.target.module] for item in group if item.dep.target.module in names)
            )
            self.groups.append(PrunableGroup(name, len(group[0].idxs), layers))
        self._shared = _shared(self.graph)

    @property
    def names(self) -> list[str]:
        """The groups' names."""
        return [g.name for g in self.groups]

    @property
    def heads(self) -> dict[str, int]:
        """The groups that lose whole attention heads (an attention module's ``qkv`` layer), with
        their head count: their kept channels are whole multiples of ``channels / heads``."""
        names = set(self.names)
        return {
            f"{name}.qkv": m.num_heads for name, m in attention_modules(self.model).items() if f"{name}.qkv" in names
        }

    def copy(self, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
        """A copy of the model and a copy of its graph that points at it (the model moved to ``device``)."""
        # deepcopy recurses along the graph's chains of nodes: a deep model needs more than Python's 1,000 frames
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 50 * len(self.graph.module2node) + 1000))
        try:
            model, graph = copy.deepcopy((self.model, self.graph), dict(self._shared))
        finally:
            sys.setrecursionlimit(limit)
        if device is not None:
            model.to(device)
        return model, graph


def find_groups(model: nn.Module, example_input: torch.Tensor) -> list[PrunableGroup]:
    """The model's prunable groups, named by their root layer's dotted path."""
    return TracedModel(model, example_input).groups


class Surgery:
    """Apply one policy to one model, in ``policy.prune_steps`` steps.

    The model is edited in place: give it a copy. Call :meth:`step` ``steps`` times, fine-tuning
    in between if you like; :meth:`kept` then says how many channels each group kept.

    Args:
        model: The model to edit (a copy of the base model).
        example_input: One input batch, for torch-pruning's tracing.
        policy: What to remove.
        scorer: Ranks the channels.
        groups: The model's group names (:attr:`TracedModel.groups`), when the caller already knows them.
        graph: The model's dependency graph, from the :meth:`TracedModel.copy` that gave the model;
            without it, the model is traced here.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        policy: Policy,
        scorer: Scorer,
        groups: Sequence[str] | None = None,
        graph: Any = None,
    ) -> None:
        self.model = model
        self.example_input = example_input
        self.policy = policy
        self.scorer = scorer
        self._calls = 0
        self._initial: dict[nn.Module, int] = {}
        """Each group's channels (by root layer) when first scored: what ``max_ratio`` is a share of."""
        modules = dict(model.named_modules())
        self._names = {module: name for name, module in modules.items()}
        round_to = policy.channel_multiple if policy.channel_multiple > 1 else None
        graph = graph if graph is not None else _trace(model, example_input)
        common: dict[str, Any] = dict(iterative_steps=policy.prune_steps, round_to=round_to)
        attention = {f"{name}.qkv": m for name, m in attention_modules(model).items()}
        # whole heads only: the ``qkv`` group's ratio is the share of heads removed (never the last one)
        heads = {
            attention[n].qkv: head_share(r, attention[n].num_heads)
            for n, r in policy.ratios.items()
            if n in attention and r > 0 and not policy.global_ranking
        }
        if attention:
            common |= dict(
                num_heads={m.qkv: m.num_heads for m in attention.values()},
                prune_num_heads=True,
                prune_head_dims=False,
                head_pruning_ratio_dict=heads,
            )
        global_heads = 0.0
        if policy.global_ranking:
            ratio = next(iter(policy.ratios.values()), 0.0)
            if attention:
                # heads ranked across all attention modules at the same share; each module's best head
                # scores infinite (:meth:`_ranked_score`), and the share leaves at least one per module
                total = sum(m.num_heads for m in attention.values())
                global_heads = max(0.0, min(ratio, 1 - (len(attention) + 0.5) / total))
            self._pruner = _pruner(
                model,
                example_input,
                graph,
                self._ranked_score,
                global_pruning=True,
                pruning_ratio=ratio,
                head_pruning_ratio=global_heads,
                **common,
            )
        else:
            self._pruner = _pruner(
                model,
                example_input,
                graph,
                self.scorer,
                pruning_ratio=0.0,
                pruning_ratio_dict={
                    modules[n]: _capped(r, modules[n], policy.channel_multiple)
                    for n, r in policy.ratios.items()
                    if n in modules and r > 0
                },
                **common,
            )
        # heads all go at the last step: locally torch-pruning takes each step's share of the heads left,
        # which compounds, and globally a step whose share adds no head to remove breaks its ranking
        for qkv, share in heads.items():
            self._pruner.head_pruning_ratio_dict[qkv] = [0.0] * policy.prune_steps + [share]
        if global_heads:
            self._pruner.per_step_head_pruning_ratio = [0.0] * policy.prune_steps + [global_heads]
        names = groups if groups is not None else [name for name, _group in _groups(model, self._pruner)]
        self._roots = {name: modules[name] for name in names}
        unknown = sorted((set(policy.ratios) | set(policy.group_bias)) - set(self._roots))
        if unknown:
            raise AutopruneError(
                f"the policy names groups this model does not have: {unknown}; it has: {sorted(self._roots)}"
            )

    @property
    def steps(self) -> int:
        return self.policy.prune_steps

    def _ranked_score(self, group: Any) -> torch.Tensor:
        """Scores for ranking across groups: divided by the group's mean (scorers' scales differ from
        layer to layer), shifted by the group's bias in units of the group's own standard deviation
        (so a bias moves about the same share of channels whatever the scorer or layer), and the
        group's best channels never ranked out: as many as uniform pruning at the policy's ``max_ratio``
        keeps of the group's channels before the first step (:func:`kept_channels`), and at least one
        ``channel_multiple`` (torch-pruning would otherwise leave a group whose channels all fall under
        the threshold wholly unpruned)."""
        scores = self.scorer(group).float()
        initial = self._initial.setdefault(group[0].dep.target.module, len(scores))
        mean = scores.mean()
        if mean > 0:
            scores = scores / mean
        bias = self.policy.group_bias.get(self._names.get(group[0].dep.target.module, ""), 0.0)
        if bias and len(scores) > 1:
            scores = scores + bias * scores.std()
        floor = kept_channels(initial, self.policy.max_ratio, self.policy.channel_multiple)
        keep = min(max(self.policy.channel_multiple, floor), len(scores))
        scores[scores.topk(keep).indices] = math.inf
        return scores

    def step(self, calibration: Sequence[Batch] = (), loss_fn: LossFn = nn.functional.cross_entropy) -> None:
        """Score the channels (after ``scorer.prepare`` on the calibration batches) and remove the lowest."""
        if self._calls >= self.steps:
            raise AutopruneError(f"surgery already took its {self.steps} step(s)")
        if self.scorer.needs_data:
            if not calibration:
                raise AutopruneError(f"scorer {self.scorer.name!r} needs calibration batches")
            self.scorer.prepare(self.model, calibration, loss_fn)
        done = len(self._pruner.DG.pruning_history())
        self._pruner.step()
        _cut_position_bias(self.model, self.removed()[done:])
        match_widths(self.model)
        self._calls += 1
        self._check_runs()

    def _check_runs(self) -> None:
        """A model torch-pruning edited but cannot run (a hard-coded reshape, say) fails here, clearly."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(self.example_input)
        except Exception as exc:
            raise AutopruneError(
                f"{type(self.model).__name__} no longer runs after surgery ({type(exc).__name__}: {exc}); "
                "torch-pruning cannot prune this architecture as it is"
            ) from exc
        finally:
            self.model.train(was_training)

    def kept(self) -> dict[str, int]:
        """Channels each group has now, by group name."""
        return {name: int(self._pruner.DG.get_out_channels(root)) for name, root in self._roots.items()}

    def removed(self) -> Removal:
        """Every channel removal so far, in order, as torch-pruning records it: (root layer's dotted
        path, whether output channels were removed, the indices removed). Replayed by
        :func:`rebuild`, it gives every layer exactly the channels surgery left it, whatever the
        group spans (a concatenation's branches included)."""
        return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in self._pruner.DG.pruning_history()]


Removal = list[list[Any]]
"""What :meth:`Surgery.removed` returns and :func:`rebuild` replays; plain JSON."""


def rebuild(
    model: nn.Module,
    example_input: torch.Tensor,
    kept: dict[str, int],
    removed: Removal | None = None,
    graph: Any = None,
) -> nn.Module:
    """Shrink an unpruned model in place to a pruned trial's architecture (a skeleton for its saved weights).

    With ``removed`` (:meth:`Surgery.removed`), torch-pruning replays the trial's removals and every
    layer gets exactly the trial's channels. Without it (trials stored before removals were
    recorded), each group loses its last channels down to its ``kept`` count: right for groups
    whose channels live in one layer, not for a group that spans a concatenation. ``graph`` is the
    model's dependency graph when it comes from :meth:`TracedModel.copy` (else it is traced here).
    """
    pruner = _pruner(model, example_input, graph if graph is not None else _trace(model, example_input))
    modules = dict(model.named_modules())
    if removed is not None:
        unknown = sorted({str(name) for name, _out, _idxs in removed} - set(modules))
        if unknown:
            raise AutopruneError(f"stored channel removals name layers this model does not have: {unknown}")
        with torch.enable_grad():
            pruner.DG.load_pruning_history(removed)
        _cut_position_bias(model, removed)
        match_widths(model)
        return model
    roots = {name: modules[name] for name, _group in _groups(model, pruner)}
    unknown = sorted(set(kept) - set(roots))
    if unknown:
        raise AutopruneError(f"stored channel counts name groups this model does not have: {unknown}")
    for name, count in kept.items():
        root = roots[name]
        pruner_of_root = pruner.DG.get_pruner_of_module(root)
        current = int(pruner_of_root.get_out_channels(root))
        if count < current:
            pruner.DG.get_pruning_group(root, pruner_of_root.prune_out_channels, list(range(count, current))).prune()
    match_widths(model)
    return model
