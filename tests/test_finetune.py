from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from autoprune.data import Split
from autoprune.errors import TrialFailed
from autoprune.trial.finetune import recalibrate_batchnorm, train_steps


def _split(n: int = 40) -> Split:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=generator)
    return Split(x, (x.flatten(1).sum(1) > 0).long())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))


def test_train_steps_counts_samples_and_learns() -> None:
    split, model = _split(), _net()
    batches = split.shuffled_batches(8, torch.Generator().manual_seed(1))
    before = nn.functional.cross_entropy(model(split.x), split.y).item()
    assert train_steps(model, batches, steps=30, lr=0.05, weight_decay=0.0) == 30 * 8
    assert nn.functional.cross_entropy(model(split.x), split.y).item() < before
    assert train_steps(model, batches, steps=0, lr=0.05, weight_decay=0.0) == 0


def test_non_finite_loss_fails_the_trial_with_the_step() -> None:
    split, model = _split(), _net()
    with torch.no_grad():
        model[4].weight.fill_(float("nan"))
    with pytest.raises(TrialFailed, match="loss became nan at step 0"):
        train_steps(model, split.shuffled_batches(8, torch.Generator()), steps=3, lr=0.1, weight_decay=0.0)


def test_shuffled_batches_are_seeded_and_cover_each_epoch() -> None:
    split = _split(12)
    a = list(itertools.islice(split.shuffled_batches(4, torch.Generator().manual_seed(5)), 3))
    b = list(itertools.islice(split.shuffled_batches(4, torch.Generator().manual_seed(5)), 3))
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    seen = torch.cat([y for _, y in a])
    assert len(seen) == 12 and sorted(torch.cat([x for x, _ in a]).flatten().tolist()) == sorted(
        split.x.flatten().tolist()
    )


def test_recalibrated_batchnorm_holds_the_statistics_of_the_batches() -> None:
    split, model = _split(), _net()
    model.eval()
    x = split.x[:16]
    recalibrate_batchnorm(model, iter([(x, split.y[:16])]), count=1)
    conv_out = model[0](x)
    bn = model[1]
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(bn.running_var, conv_out.var(dim=(0, 2, 3), unbiased=True), atol=1e-5)
    assert bn.momentum == 0.1
    assert not model.training
