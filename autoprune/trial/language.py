"""A language model's figures on token blocks (perplexity; the KL divergence to a base model's
next-token distribution, EvoPress's score of a compressed model), the scores that rank a decoder's
heads and channels by their activations, and the sensitivity analysis of a decoder."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from autoprune.trial.decoder import (
    HIDDEN,
    Decoder,
    choose,
    cut,
    decoder_counts,
    decoder_groups,
    kept_units,
    widths,
)
from autoprune.trial.sensitivity import Point, Sensitivity


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, use_cache=False).logits.float()


def _batches(blocks: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, len(blocks), batch_size):
        yield blocks[start : start + batch_size].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    """The mean negative log-likelihood (nats) of every token of ``blocks`` but each block's first,
    given the tokens before it in its block, and the share of those tokens that are the model's top
    prediction."""
    was_training = model.training
    model.eval()
    total, right, count = 0.0, 0, 0
    try:
        for batch in _batches(blocks, batch_size, _device(model)):
            logits = _logits(model, batch)[:, :-1]
            targets = batch[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            right += int((logits.argmax(dim=-1) == targets).sum())
            count += targets.numel()
    finally:
        model.train(was_training)
    return total / count, right / count


def mean_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """The mean negative log-likelihood of :func:`loss_and_accuracy`."""
    return loss_and_accuracy(model, blocks, batch_size)[0]


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, train: torch.Tensor, batch: int, generator: torch.Generator
) -> float:
    """One step of next-token training on ``batch`` blocks of ``train`` drawn with ``generator``
    (gradients clipped to norm 1): its loss."""
    rows = train[torch.randint(0, len(train), (batch,), generator=generator)].to(_device(model))
    loss = model(input_ids=rows, labels=rows, use_cache=False).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def recover(model: nn.Module, train: torch.Tensor, steps: int, *, batch: int, lr: float, seed: int) -> None:
    """Full fine-tuning of ``model`` for ``steps`` steps on random blocks of ``train`` (AdamW, constant
    ``lr``, batches drawn with ``seed``); the model is left in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        train_step(model, optimizer, train, batch, generator)
    model.eval()


def spaced(blocks: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` of ``blocks`` evenly spaced from the first to the last (all of them for 0 or more than
    there are): a split's blocks follow its documents, so these span them all."""
    if count <= 0 or count >= len(blocks):
        return blocks
    return blocks[torch.linspace(0, len(blocks) - 1, count).round().long()]


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """``exp`` of :func:`mean_nll`: lower is better."""
    return math.exp(mean_nll(model, blocks, batch_size))


@torch.no_grad()
def log_probs(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The model's next-token log-probabilities at every position of ``blocks`` (blocks × length × vocab)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [F.log_softmax(_logits(model, b), dim=-1) for b in _batches(blocks, batch_size, _device(model))]
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def kl_to_log_probs(reference: torch.Tensor, model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """The mean over every token position of ``KL(reference || model)``, ``reference`` being a base
    model's :func:`log_probs` on the same ``blocks`` (nats)."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        starts = range(0, len(blocks), batch_size)
        for start, batch in zip(starts, _batches(blocks, batch_size, _device(model)), strict=True):
            pruned = F.log_softmax(_logits(model, batch), dim=-1)
            target = reference[start : start + batch_size].to(pruned.device)
            total += float(F.kl_div(pruned, target, log_target=True, reduction="sum"))
    finally:
        model.train(was_training)
    return total / blocks.numel()


@torch.no_grad()
def kl_to_base(base: nn.Module, model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """The mean over every token position of ``KL(base || model)`` between the two models'
    next-token distributions (nats): 0 for a model that predicts as the base does."""
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        part = blocks[start : start + batch_size]
        total += kl_to_log_probs(log_probs(base, part, batch_size), model, part, batch_size) * part.numel()
    return total / blocks.numel()


REFERENCE_BYTES_MAX = 1 << 30
"""The most memory the base model's log-probabilities on the calibration blocks are kept in (1 GiB,
on the CPU); beyond it (32 blocks of 2,048 tokens over a 128 k vocabulary take 34 GB), every KL
computes them again: one more forward pass of the base model per trial."""


def reference_log_probs(base: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor | None:
    """The base model's :func:`log_probs` on ``blocks``, on the CPU, or ``None`` where they would take
    more than :data:`REFERENCE_BYTES_MAX` (then :func:`calibration_kl` computes them per batch)."""
    first = log_probs(base, blocks[:batch_size], batch_size).cpu()
    if first.element_size() * first.shape[-1] * blocks.numel() > REFERENCE_BYTES_MAX:
        return None
    rest = [
        log_probs(base, blocks[i : i + batch_size], batch_size).cpu()
        for i in range(batch_size, len(blocks), batch_size)
    ]
    return torch.cat([first, *rest])


def calibration_kl(
    model: nn.Module, *, base: nn.Module, blocks: torch.Tensor, reference: torch.Tensor | None, batch_size: int = 8
) -> float:
    """``KL(base || model)`` on ``blocks`` (:func:`kl_to_base`), from the base model's log-probabilities
    where :func:`reference_log_probs` kept them."""
    if reference is None:
        return kl_to_base(base, model, blocks, batch_size)
    return kl_to_log_probs(reference, model, blocks, batch_size)


@torch.no_grad()
def activation_scores(model: Decoder, blocks: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Each group's units scored by what they pass on, on ``blocks`` (calibration text): a head or
    MLP channel by the root mean square of its activation (the input of ``o_proj`` or
    ``down_proj``) times the norm of the weights that carry it out (Wanda's product, per unit); a
    hidden channel by the root mean square of its value after every norm, summed (Minitron's
    activation score of an embedding channel)."""
    layers = model.model.layers
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def add(name: str, x: torch.Tensor) -> None:
        squares = x.detach().float().pow(2).reshape(-1, x.shape[-1]).sum(dim=0)
        sums[name] = sums[name] + squares if name in sums else squares

    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a, i=i: add(f"heads.{i}", a[0])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, i=i: add(f"mlp.{i}", a[0])))
    norms = [model.model.norm] + [
        c for layer in layers for n, c in layer.named_children() if n not in ("self_attn", "mlp")
    ]
    for j, norm in enumerate(n for n in norms if isinstance(getattr(n, "weight", None), nn.Parameter)):
        hooks.append(norm.register_forward_hook(lambda _m, _a, out, j=j: add(f"norm.{j}", out)))
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(blocks, batch_size, _device(model)):
            _logits(model, batch)
            count += batch.numel()
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    w = widths(model)
    scores: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        rms = (sums[f"heads.{i}"] / count).sqrt().reshape(w.heads[i], -1).pow(2).sum(dim=1).sqrt()
        carried = layer.self_attn.o_proj.weight.detach().float().pow(2).sum(dim=0).reshape(w.heads[i], -1).sum(dim=1)
        scores[f"model.layers.{i}.self_attn"] = rms * carried.sqrt()
        down = layer.mlp.down_proj.weight.detach().float().pow(2).sum(dim=0).sqrt()
        scores[f"model.layers.{i}.mlp"] = (sums[f"mlp.{i}"] / count).sqrt() * down
    scores[HIDDEN] = torch.stack([(v / count).sqrt() for k, v in sums.items() if k.startswith("norm.")]).sum(dim=0)
    return scores


def analyse_decoder(
    model: Decoder,
    blocks: torch.Tensor,
    scores: dict[str, torch.Tensor],
    *,
    scorer: str,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    multiple: int = 1,
    batch_size: int = 8,
) -> Sensitivity:
    """The sensitivity analysis of a decoder: each group pruned alone at each of ``ratios`` (units
    ranked by ``scores``, named ``scorer``), measured without fine-tuning on ``blocks`` (calibration
    text, never the validation or test split): mean token loss and next-token accuracy."""
    start = time.perf_counter()
    base_loss, base_accuracy = loss_and_accuracy(model, blocks, batch_size)
    base_macs, base_params = decoder_counts(model)
    points = []
    for group in decoder_groups(model):
        for ratio in ratios:
            pruned = copy.deepcopy(model)
            kept = kept_units(pruned, {group.name: ratio}, multiple)[group.name]
            cut(pruned, choose(pruned, {group.name: kept}, scores))
            loss, accuracy = loss_and_accuracy(pruned, blocks, batch_size)
            macs, params = decoder_counts(pruned)
            points.append(Point(group.name, float(ratio), group.channels, kept, loss, accuracy, int(macs), int(params)))
            del pruned
    return Sensitivity(
        scorer, base_loss, base_accuracy, int(base_macs), int(base_params), tuple(points), time.perf_counter() - start
    )
