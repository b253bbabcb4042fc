"""Surgery on a Hugging Face decoder-only language model: whole attention heads and MLP width per
layer, and the hidden size.

The models are those laid out as Llama (Llama, Qwen2, Mistral, and the like): ``model.embed_tokens``,
``model.layers[i]`` with ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``, RMS norms,
``model.norm`` and ``lm_head``. Their groups are known from that layout, not traced: torch-pruning's
dependency graph of a one-layer, 64-wide Llama of transformers 5 did not finish walking its groups in
five minutes. torch-pruning's pruning functions still cut the tensors.

Groups, each named by a dotted path:

- ``model.layers.I.self_attn``: the layer's query heads. Each head keeps its whole width (rotary
  embeddings rotate it as one). With as many key/value heads as query heads, a head goes with its key
  and value heads. With grouped-query attention (``K`` key/value heads, each shared by ``g`` query
  heads), every key/value head is kept and loses the same number of its query heads, so the kept
  count is a multiple of ``K`` and each query head still reads its own key/value head.
- ``model.layers.I.mlp``: the layer's MLP width (gate and up outputs, down inputs).
- ``model.embed_tokens``: the hidden size, shared by the embedding, every projection's inputs or
  outputs, every norm and ``lm_head``'s inputs (tied embeddings stay tied).

A pruned model's per-layer widths do not fit a Hugging Face configuration, which has one width per
model: :func:`save_pruned` writes them into the saved ``config.json`` (``autoprune_widths``) and
:func:`load_pruned` builds the model at the widest and cuts each layer to its own widths before
loading the weights. Llama's configuration also refuses a hidden size that is not a multiple of its
heads: ``hidden_size`` names the next multiple there, and ``autoprune_widths`` the real one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.trial.cost import CostModel
from autoprune.trial.surgery import PrunableGroup

HIDDEN = "model.embed_tokens"
WIDTHS = "autoprune_widths"
"""The saved configuration's key for the per-layer widths."""

Decoder = Any
"""A Hugging Face causal language model laid out as Llama's (an ``nn.Module`` whose parts are read by name)."""

Keep = dict[str, list[int]]
"""Kept unit indices by group (query heads, MLP channels, hidden channels): plain JSON."""


@dataclass(frozen=True)
class Widths:
    """A decoder's widths: the hidden size, and per layer its query heads, key/value heads and MLP width."""

    hidden: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    intermediate: tuple[int, ...]


def _path(i: int, part: str) -> str:
    return f"model.layers.{i}.{part}"


def _layers(model: Decoder) -> list[Any]:
    """The decoder layers, each checked to be laid out as Llama's, or an AutopruneError naming what is missing."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise AutopruneError(
            f"{type(model).__name__} is not a decoder laid out as Llama's (model.layers and lm_head): "
            "autoprune prunes Llama, Qwen2, Mistral and models laid out as they are"
        )
    for i, layer in enumerate(layers):
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        missing = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj") if not _linear(attention, p)]
        missing += [f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj") if not _linear(mlp, p)]
        if missing or not isinstance(getattr(attention, "head_dim", None), int):
            what = ", ".join(missing) or "self_attn.head_dim"
            raise AutopruneError(f"{type(model).__name__}'s layer {i} has no {what}: it is not laid out as Llama's")
    return list(layers)


def _linear(module: Any, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def is_decoder(model: Decoder) -> bool:
    """Whether ``model`` is a decoder this module prunes."""
    try:
        _layers(model)
    except AutopruneError:
        return False
    return True


def widths(model: Decoder) -> Widths:
    """The decoder's widths as its layers have them now."""
    layers = _layers(model)
    heads, kv, inter = [], [], []
    for layer in layers:
        attention = layer.self_attn
        heads.append(attention.q_proj.out_features // attention.head_dim)
        kv.append(attention.k_proj.out_features // attention.head_dim)
        inter.append(layer.mlp.gate_proj.out_features)
    return Widths(model.lm_head.in_features, tuple(heads), tuple(kv), tuple(inter))


def decoder_groups(model: Decoder) -> list[PrunableGroup]:
    """The decoder's groups (module docstring), with their channels: heads, MLP width, hidden size."""
    w = widths(model)
    groups = []
    for i in range(len(w.heads)):
        attention = [_path(i, f"self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        groups.append(PrunableGroup(_path(i, "self_attn"), w.heads[i], tuple(attention)))
        mlp = [_path(i, f"mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")]
        groups.append(PrunableGroup(_path(i, "mlp"), w.intermediate[i], tuple(mlp)))
    groups.append(PrunableGroup(HIDDEN, w.hidden, (HIDDEN, "lm_head")))
    return groups


def head_multiple(model: Decoder) -> dict[str, int]:
    """Each attention group's kept-head multiple: its key/value heads under grouped-query attention, else 1."""
    w = widths(model)
    pairs = enumerate(zip(w.heads, w.kv_heads, strict=True))
    return {_path(i, "self_attn"): (k if h > k else 1) for i, (h, k) in pairs}


def kept_units(model: Decoder, ratios: Mapping[str, float], multiple: int = 1) -> dict[str, int]:
    """What each group keeps at ``ratios`` (share removed, by group): ``int(units * (1 - ratio))``,
    rounded down to the group's multiple (``multiple`` for MLP and hidden channels, the key/value
    heads for grouped heads), and at least one multiple."""
    unknown = sorted(set(ratios) - {g.name for g in decoder_groups(model)})
    if unknown:
        raise AutopruneError(f"the policy names groups this model does not have: {unknown}")
    heads = head_multiple(model)
    kept = {}
    for group in decoder_groups(model):
        step = heads.get(group.name, multiple)
        count = int(group.channels * (1.0 - ratios.get(group.name, 0.0)))
        kept[group.name] = group.channels if group.channels <= step else max(step, count - count % step)
    return kept


def _rows(weight: torch.Tensor, units: int) -> torch.Tensor:
    """Sum of squares of each unit's block of output rows (a unit is ``rows / units`` rows)."""
    return weight.detach().float().pow(2).reshape(units, -1).sum(dim=1)


def _columns(weight: torch.Tensor, units: int) -> torch.Tensor:
    return _rows(weight.t(), units)


def magnitude_scores(model: Decoder) -> dict[str, torch.Tensor]:
    """Each group's units scored by their weights' magnitude: per layer the sum of squares of the
    unit's rows or columns, averaged over the layers the unit spans (torch-pruning's
    ``GroupMagnitudeImportance(p=2, group_reduction="mean")``, over the layout's groups)."""
    layers = _layers(model)
    w = widths(model)
    scores: dict[str, torch.Tensor] = {}
    hidden: list[torch.Tensor] = [_columns(model.model.embed_tokens.weight, w.hidden)]
    for i, layer in enumerate(layers):
        a, m = layer.self_attn, layer.mlp
        per_head = [_rows(a.q_proj.weight, w.heads[i]), _columns(a.o_proj.weight, w.heads[i])]
        if w.heads[i] == w.kv_heads[i]:
            per_head += [_rows(a.k_proj.weight, w.heads[i]), _rows(a.v_proj.weight, w.heads[i])]
        scores[_path(i, "self_attn")] = torch.stack(per_head).mean(dim=0)
        scores[_path(i, "mlp")] = torch.stack(
            [_rows(m.gate_proj.weight, w.intermediate[i]), _rows(m.up_proj.weight, w.intermediate[i])]
            + [_columns(m.down_proj.weight, w.intermediate[i])]
        ).mean(dim=0)
        hidden += [_columns(p.weight, w.hidden) for p in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)]
        hidden += [_rows(p.weight, w.hidden) for p in (a.o_proj, m.down_proj)]
    hidden.append(_columns(model.lm_head.weight, w.hidden))
    scores[HIDDEN] = torch.stack(hidden).mean(dim=0)
    return scores


def choose(model: Decoder, kept: Mapping[str, int], scores: Mapping[str, torch.Tensor]) -> Keep:
    """The units each group keeps: its ``kept[group]`` best by ``scores``, in their original order.
    Grouped heads keep the same number of query heads of each key/value head, the best of each."""
    heads = head_multiple(model)
    keep: Keep = {}
    for group in decoder_groups(model):
        count = kept.get(group.name, group.channels)
        score = scores[group.name]
        if count >= group.channels:
            keep[group.name] = list(range(group.channels))
        elif heads.get(group.name, 1) > 1:
            k = heads[group.name]
            g = group.channels // k
            best = score.reshape(k, g).topk(count // k, dim=1).indices.sort(dim=1).values
            keep[group.name] = (best + torch.arange(k, device=best.device).unsqueeze(1) * g).flatten().tolist()
        else:
            keep[group.name] = sorted(score.topk(count).indices.tolist())
    return keep


def _removed(units: int, kept: list[int], size: int = 1) -> list[int]:
    """The channel indices a unit cut removes: every channel of each unit not kept (``size`` channels a unit)."""
    gone = sorted(set(range(units)) - set(kept))
    return [u * size + j for u in gone for j in range(size)]


def cut(model: Decoder, keep: Keep) -> nn.Module:
    """Cut the decoder in place to the units ``keep`` names (:func:`choose`, or a stored record), and
    set the attributes its forward reads (each attention's ``num_key_value_groups``) and its
    configuration's widths."""
    layers = _layers(model)
    w = widths(model)
    unknown = sorted(set(keep) - {g.name for g in decoder_groups(model)})
    if unknown:
        raise AutopruneError(f"the record names groups this model does not have: {unknown}")
    for i, layer in enumerate(layers):
        a, m = layer.self_attn, layer.mlp
        heads = keep.get(_path(i, "self_attn"))
        if heads is not None and len(heads) < w.heads[i]:
            d = a.head_dim
            gone = _removed(w.heads[i], heads, d)
            tp.prune_linear_out_channels(a.q_proj, gone)
            tp.prune_linear_in_channels(a.o_proj, gone)
            if w.heads[i] == w.kv_heads[i]:
                tp.prune_linear_out_channels(a.k_proj, gone)
                tp.prune_linear_out_channels(a.v_proj, gone)
            elif len(heads) % w.kv_heads[i]:
                raise AutopruneError(
                    f"layer {i} keeps {len(heads)} query heads, not a multiple of its {w.kv_heads[i]} key/value heads"
                )
        inter = keep.get(_path(i, "mlp"))
        if inter is not None and len(inter) < w.intermediate[i]:
            gone = _removed(w.intermediate[i], inter)
            tp.prune_linear_out_channels(m.gate_proj, gone)
            tp.prune_linear_out_channels(m.up_proj, gone)
            tp.prune_linear_in_channels(m.down_proj, gone)
    hidden = keep.get(HIDDEN)
    if hidden is not None and len(hidden) < w.hidden:
        _cut_hidden(model, layers, hidden, w.hidden)
    _match(model)
    return model


def _cut_hidden(model: Decoder, layers: list[Any], kept: list[int], hidden: int) -> None:
    gone = _removed(hidden, kept)
    embed, head = model.model.embed_tokens, model.lm_head
    tied = head.weight is embed.weight
    tp.prune_embedding_out_channels(embed, gone)
    if tied:
        head.weight = embed.weight
        head.in_features = embed.embedding_dim
    else:
        tp.prune_linear_in_channels(head, gone)
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        for proj in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            tp.prune_linear_in_channels(proj, gone)
        for proj in (a.o_proj, m.down_proj):
            tp.prune_linear_out_channels(proj, gone)
    for norm in hidden_norms(model):
        norm.weight = nn.Parameter(norm.weight.data[kept].clone(), requires_grad=norm.weight.requires_grad)


def hidden_norms(model: Decoder) -> list[Any]:
    """The norms over the hidden size: each layer's (its children but the attention and the MLP, those
    with a weight) and the final ``model.norm``."""
    children = [c for layer in _layers(model) for n, c in layer.named_children() if n not in ("self_attn", "mlp")]
    return [c for c in [*children, model.model.norm] if isinstance(getattr(c, "weight", None), nn.Parameter)]


def _match(model: Decoder) -> None:
    """Set the attributes a decoder's forward reads, and its configuration, to the widths it has now."""
    w = widths(model)
    for layer, heads, kv in zip(_layers(model), w.heads, w.kv_heads, strict=True):
        layer.self_attn.num_key_value_groups = heads // kv
        for name in ("intermediate_size", "hidden_size"):
            if hasattr(layer.mlp, name):
                setattr(layer.mlp, name, layer.mlp.gate_proj.out_features if name == "intermediate_size" else w.hidden)
    config = model.config
    head_dim = _layers(model)[0].self_attn.head_dim
    config.head_dim = head_dim
    config.num_attention_heads = max(w.heads)
    # Llama's configuration refuses a hidden size that is not a multiple of its heads: it names the
    # next multiple, the width load_pruned builds at before it cuts to the real one (in WIDTHS)
    config.hidden_size = -(-w.hidden // config.num_attention_heads) * config.num_attention_heads
    config.num_key_value_heads = max(w.kv_heads)
    config.intermediate_size = max(w.intermediate)
    uniform = len(set(w.heads)) == len(set(w.kv_heads)) == len(set(w.intermediate)) == 1
    fits = uniform and config.hidden_size == w.hidden
    setattr(config, WIDTHS, None if fits else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(w).items()})


def save_pruned(model: Decoder, folder: str | Path, tokenizer: Any = None) -> Path:
    """Save a pruned decoder as a Hugging Face checkpoint (``save_pretrained``): its configuration
    carries the per-layer widths; :func:`load_pruned` reloads it (so does ``from_pretrained`` when
    every layer kept the same widths and the hidden size is a multiple of the heads)."""
    folder = Path(folder)
    _match(model)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_pruned(folder: str | Path) -> nn.Module:
    """A decoder saved by :func:`save_pruned`, with its weights, in eval mode.

    The model is built at its widest widths from the saved configuration (no weights read), each
    layer cut to its own widths, and the saved weights loaded into it (every one, ``lm_head``'s aside where it is tied).
    """
    from autoprune.models._hf import transformers_module

    transformers = transformers_module()
    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    per_layer = getattr(config, WIDTHS, None)
    if not per_layer:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    most, shared = config.num_attention_heads, config.num_key_value_heads
    keep: Keep = {}
    rows = zip(per_layer["heads"], per_layer["kv_heads"], per_layer["intermediate"], strict=True)
    for i, (heads, kv, inter) in enumerate(rows):
        if kv != (heads if most == shared else shared):
            raise AutopruneError(f"{folder}: layer {i}'s {heads} query and {kv} key/value heads do not fit its config")
        if most == shared:
            keep[_path(i, "self_attn")] = list(range(heads))
        else:  # the first heads // shared query heads of each key/value head
            group = most // shared
            keep[_path(i, "self_attn")] = [h * group + j for h in range(shared) for j in range(heads // shared)]
        keep[_path(i, "mlp")] = list(range(inter))
    keep[HIDDEN] = list(range(int(per_layer.get("hidden", config.hidden_size))))
    cut(model, keep)
    missing, unexpected = model.load_state_dict(_state(folder), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise AutopruneError(f"{folder}'s weights do not fit its widths: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def _state(folder: Path) -> dict[str, torch.Tensor]:
    """The saved weights of a checkpoint folder (one safetensors file or an index of several)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(folder / f).items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise AutopruneError(f"{folder} holds no model.safetensors")
    return load_file(single)


def _skeleton(model: Decoder) -> Decoder:
    """A copy of an unpruned decoder's architecture on the meta device: shapes, no weights."""
    from autoprune.models._hf import transformers_module

    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        return transformers_module().AutoModelForCausalLM.from_config(config)


def _layer_figures(model: Decoder) -> dict[str, tuple[float, float]]:
    """(MACs per token, parameters) of every module by dotted path, its own: a linear layer's MACs
    are its weight's size (torch-pruning's counter counts no other MACs in a decoder), a parameter
    counts once (a tied ``lm_head`` shares the embedding's)."""
    seen: set[int] = set()
    figures = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        macs = module.in_features * module.out_features if isinstance(module, nn.Linear) else 0
        figures[name] = (float(macs), float(sum(p.numel() for p in own)))
    return figures


def decoder_counts(model: Decoder) -> tuple[float, float]:
    """(MACs per token, parameters) of a decoder: its linear layers' weights, each parameter once."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return float(linear), float(sum(p.numel() for p in model.parameters()))


def decoder_cost(model: Decoder, *, seed: int = 0) -> CostModel:
    """The decoder's cost model: MACs per token and parameters from its groups' kept counts, fitted
    on pruned copies of its architecture (meta tensors: no weights copied) and checked on others."""
    names = [g.name for g in decoder_groups(model)]
    per_layer = widths(model).heads
    heads = {name: per_layer[i] // step for i, (name, step) in enumerate(head_multiple(model).items())}

    def prune(ratios: Mapping[str, float]) -> tuple[nn.Module, dict[str, int]]:
        twin = _skeleton(model)
        kept = kept_units(twin, ratios)
        cut(twin, {g.name: list(range(kept[g.name])) for g in decoder_groups(twin)})
        return twin, kept

    return CostModel.fit_probes(names, prune, _layer_figures, decoder_counts, heads=heads, seed=seed)
