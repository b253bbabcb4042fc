from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config
from torch import nn

from autoprune.config import TrialSection
from autoprune.data import Split
from autoprune.errors import ConfigError, TrialFailed
from autoprune.search.run import run_study
from autoprune.trial import evaluate, finetune
from autoprune.trial.finetune import Distillation, recalibrate_batchnorm, train_steps


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


def _trained(distillation: Distillation | None, seed: int = 3) -> nn.Module:
    split, model = _split(), _net()
    torch.manual_seed(seed)
    batches = split.shuffled_batches(8, torch.Generator().manual_seed(seed))
    train_steps(model, batches, steps=20, lr=0.05, weight_decay=1e-4, distillation=distillation)
    return model


def _teacher() -> nn.Module:
    teacher = _net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return teacher.eval()


def test_distillation_at_weight_zero_is_plain_fine_tuning_bit_for_bit() -> None:
    plain = _trained(None)
    distilled = _trained(Distillation(_teacher(), weight=0.0))
    assert all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), distilled.state_dict().values(), strict=True)
    )


def test_distillation_loss_is_zero_when_the_student_is_the_teacher() -> None:
    teacher = _teacher()
    x, y = _split().x, _split().y
    with torch.no_grad():
        logits = teacher(x)
    loss = Distillation(teacher, weight=1.0, temperature=3.0).loss(logits, x, y)
    assert abs(float(loss)) < 1e-6
    assert float(Distillation(teacher, weight=0.5).loss(logits, x, y)) == pytest.approx(
        0.5 * float(nn.functional.cross_entropy(logits, y)), abs=1e-6
    )


def test_distillation_moves_the_student_toward_the_teacher_and_leaves_the_teacher_alone() -> None:
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = _split().x
    plain = _trained(None)
    distilled = _trained(Distillation(teacher, weight=1.0, temperature=2.0))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    with torch.no_grad():
        target = nn.functional.softmax(teacher(x), 1)

        def gap(m: nn.Module) -> float:
            return float((nn.functional.softmax(m.eval()(x), 1) - target).abs().mean())

        assert gap(distilled) < gap(plain)


@pytest.mark.parametrize(
    ("key", "value"), [("distill_weight", 1.5), ("distill_weight", -0.1), ("distill_temperature", 0)]
)
def test_distillation_settings_are_checked(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"trial.{key}"):
        TrialSection(**{key: value})


def test_a_study_with_distillation_runs_every_trial_with_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "distilled", "study.trials=3", "trial.distill_weight=0.5", "study.baselines=[0.5]")
    seen: list[Distillation | None] = []
    original = finetune.train_steps

    def spy(*args: Any, **kwargs: Any) -> int:
        seen.append(kwargs.get("distillation"))
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "train_steps", spy)
        study = run_study(config)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3
    assert seen and all(d is not None and d.weight == 0.5 and d.temperature == 4.0 for d in seen)
