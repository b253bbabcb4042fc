"""A language model's figures on token blocks: perplexity, and the KL divergence to a base model's
next-token distribution (EvoPress's score of a compressed model)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, use_cache=False).logits.float()


def _batches(blocks: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, len(blocks), batch_size):
        yield blocks[start : start + batch_size].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mean_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """The mean negative log-likelihood (nats) of every token of ``blocks`` but each block's first,
    given the tokens before it in its block."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in _batches(blocks, batch_size, _device(model)):
            logits = _logits(model, batch)[:, :-1]
            targets = batch[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            count += targets.numel()
    finally:
        model.train(was_training)
    return total / count


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """``exp`` of :func:`mean_nll`: lower is better."""
    return math.exp(mean_nll(model, blocks, batch_size))


@torch.no_grad()
def kl_to_base(base: nn.Module, model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """The mean over every token position of ``KL(base || model)`` between the two models'
    next-token distributions (nats): 0 for a model that predicts as the base does."""
    states = base.training, model.training
    base.eval()
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in _batches(blocks, batch_size, _device(model)):
            reference = F.log_softmax(_logits(base, batch.to(_device(base))).to(batch.device), dim=-1)
            pruned = F.log_softmax(_logits(model, batch), dim=-1)
            total += float(F.kl_div(pruned, reference, log_target=True, reduction="sum"))
            count += batch.numel()
    finally:
        base.train(states[0])
        model.train(states[1])
    return total / count
