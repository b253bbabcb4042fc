"""The training loop shared by base-model training and trial fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import TrialFailed

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a no-op context on other devices."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the base model) while fine-tuning: the loss becomes
    ``(1 - weight) · CE(student, y) + weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``
    (Hinton et al., 2015: the student matches the teacher's softened outputs; T² keeps the gradient's
    scale as T changes).

    Attributes:
        teacher: The model whose outputs are matched; run in eval mode, without gradients.
        weight: α in [0, 1]; 0 is plain cross-entropy.
        temperature: T > 0.
    """

    teacher: nn.Module
    weight: float
    temperature: float = 4.0

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hard = nn.functional.cross_entropy(logits, y)
        if self.weight == 0:
            return hard
        with torch.no_grad():
            was_training = self.teacher.training
            self.teacher.eval()
            teacher = self.teacher(x).float()
            self.teacher.train(was_training)
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits.float() / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.weight) * hard + self.weight * t * t * soft


def sgd(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """The optimizer of every training run: SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def train_steps(
    model: nn.Module,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    amp: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    distillation: Distillation | None = None,
    span: range | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """:func:`sgd` with cosine decay from ``lr`` to 0 over ``steps`` steps.

    Returns the number of samples processed. A non-finite loss raises :class:`TrialFailed`.
    ``amp`` runs the forward pass under bf16 autocast on CUDA (ignored elsewhere).
    ``on_step(step, loss)`` is called after every step (for progress output).
    ``distillation``: the loss of :class:`Distillation` instead of plain cross-entropy.
    ``span`` and ``optimizer`` run a part of a longer run (the steps in ``span`` of the ``steps``-long
    schedule, with the run's optimizer, momentum and all): by default all of it, with a new optimizer.
    """
    span = range(steps) if span is None else span
    if steps <= 0 or not span:
        return 0
    model.train()
    optimizer = sgd(model, lr, weight_decay) if optimizer is None else optimizer
    samples = 0
    for step in span:
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
        x, y = next(batches)
        with autocast(x.device, amp):
            logits = model(x)
            loss = distillation.loss(logits, x, y) if distillation else nn.functional.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise TrialFailed(f"the fine-tune loss became {loss.item()} at step {step} (lr {lr:.3g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(y)
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return samples


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Batches, count: int) -> None:
    """Adaptive BatchNorm: re-estimate every BatchNorm's running statistics on ``count`` batches.

    After surgery the statistics describe channels that are gone or inputs that changed; a few
    forward passes in train mode (with a cumulative average, no weight updates) set them right,
    so the pruned model's accuracy before fine-tuning says something about the policy.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or count <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for _ in range(count):
        x, _y = next(batches)
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
