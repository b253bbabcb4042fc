"""One trial: copy the base model, apply the policy, fine-tune, measure."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune._logging import get_logger
from autoprune.budget import ResolvedBudget
from autoprune.config import StudyConfig
from autoprune.data import DataSplits, Split
from autoprune.finetune import recalibrate_batchnorm, train_steps
from autoprune.metrics import Measurement, accuracy, count_macs_params, latency_ms, size_bytes
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.space import SearchSpace
from autoprune.surgery import Removal, Surgery

log = get_logger(__name__)

PHASES = ("copy", "surgery", "recalibrate", "finetune", "evaluate", "measure")
"""Where a trial's time goes; ``recalibrate`` is adaptive BatchNorm plus the first look."""


@dataclass
class TrialResult:
    """What one evaluated policy produced.

    Attributes:
        policy: The policy applied.
        measurement: Validation accuracy, MACs, parameters and size of the fine-tuned model.
        kept: Channels each group kept.
        removed: Every channel removal surgery made (:meth:`Surgery.removed`): what a rebuild replays.
        finetune_cost: Training samples processed while fine-tuning.
        seconds: Wall time of each phase (``PHASES``).
        model: The fine-tuned model.
        first_look: Validation accuracy right after the first prune step and adaptive BatchNorm,
            before any fine-tuning (None when ``trial.recalibrate_batches`` is 0).
        early_stopped: The first look was hopeless, so fine-tuning was skipped; ``measurement``
            then describes the model as it stood at the first look.
    """

    policy: Policy
    measurement: Measurement
    kept: dict[str, int]
    removed: Removal
    finetune_cost: int
    seconds: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None
    first_look: float | None = None
    early_stopped: bool = False

    def objective(self, name: str) -> float:
        if name == "finetune_cost":
            return float(self.finetune_cost)
        return float(getattr(self.measurement, name))


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward ``study.trials``: completed, or stopped early by its first look
    (PRUNED with ``early_stopped``); surplus trials a worker gave up do not."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("early_stopped"))
    )


def _channels_last(split: Split) -> Split:
    return dataclasses.replace(split, x=split.x.contiguous(memory_format=torch.channels_last))


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.timer.seconds[self.name] += time.perf_counter() - self.start


class TrialEvaluator:
    """Evaluates policies against one base model and data; :meth:`run` evaluates an Optuna trial's."""

    def __init__(
        self,
        *,
        config: StudyConfig,
        data: DataSplits,
        base: nn.Module,
        base_measurement: Measurement,
        space: SearchSpace,
        device: torch.device,
        budget: ResolvedBudget | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.base = base
        self.base_measurement = base_measurement
        self.space = space
        self.device = device
        self.example_input = data.val.x[:1]
        self.amp = config.trial.amp and device.type == "cuda"
        self.needs_latency = "latency_ms" in config.study.objectives or config.budget.max_latency_ms != ""
        if self.amp and data.train.x.dim() == 4:
            self.data = dataclasses.replace(data, train=_channels_last(data.train), val=_channels_last(data.val))
        self.budget = budget if budget else None

    def evaluate(self, policy: Policy) -> TrialResult:
        """Apply ``policy`` to a copy of the base model, fine-tune it and measure it."""
        timer = _Timer(self.device)
        settings = self.config.trial
        batch_size = self.config.data.batch_size
        generator = torch.Generator().manual_seed(policy.seed)
        torch.manual_seed(policy.seed)
        with timer.phase("copy"):
            model = copy.deepcopy(self.base)
        with timer.phase("surgery"):
            scorer = make_scorer(policy.scorer, seed=policy.seed)
            surgery = Surgery(model, self.example_input, policy, scorer, groups=self.space.groups)
        batches = self.data.train.shuffled_batches(batch_size, generator)
        calibration_count = self.config.space.calibration_batches if scorer.needs_data else 0
        samples = 0
        first_look = None
        for step in range(surgery.steps):
            with timer.phase("surgery"):
                surgery.step(list(itertools.islice(batches, calibration_count)))
            if step == 0 and settings.recalibrate_batches > 0:
                with timer.phase("recalibrate"):
                    recalibrate_batchnorm(model, batches, settings.recalibrate_batches)
                    first_look = accuracy(
                        model, self.data.val.head(settings.first_look_samples), batch_size, amp=self.amp
                    )
                if (
                    settings.early_stop_margin >= 0
                    and first_look < 1 / self.data.num_classes + settings.early_stop_margin
                ):
                    return self._measured(model, timer, policy, surgery, first_look, samples, first_look, True)
            share = policy.finetune_steps // surgery.steps + (step < policy.finetune_steps % surgery.steps)
            with timer.phase("finetune"):
                if self.amp and self.data.train.x.dim() == 4:
                    model.to(memory_format=torch.channels_last)
                samples += train_steps(
                    model, batches, steps=share, lr=policy.lr, weight_decay=self.config.train.weight_decay, amp=self.amp
                )
        model.eval()
        with timer.phase("evaluate"):
            val_accuracy = accuracy(model, self.data.val, batch_size, amp=self.amp)
        return self._measured(model, timer, policy, surgery, val_accuracy, samples, first_look, False)

    def _measured(
        self,
        model: nn.Module,
        timer: _Timer,
        policy: Policy,
        surgery: Surgery,
        val_accuracy: float,
        samples: int,
        first_look: float | None,
        early_stopped: bool,
    ) -> TrialResult:
        """Measure MACs, parameters, size (and latency when the study needs it) and wrap up."""
        settings = self.config.trial
        model.eval()
        with timer.phase("measure"):
            macs, params = count_macs_params(model, self.example_input)
            latency = None
            if self.needs_latency:
                batch = self.data.val.x[: settings.latency_batch_size]
                latency = latency_ms(model, batch, repeats=settings.latency_repeats)
            measurement = Measurement(val_accuracy, macs, params, size_bytes(model), latency)
        kept, removed = surgery.kept(), surgery.removed()
        return TrialResult(policy, measurement, kept, removed, samples, timer.seconds, model, first_look, early_stopped)

    def run(self, trial: optuna.Trial) -> TrialResult:
        """Suggest the trial's policy, evaluate it and store what it did in the trial (its user
        attributes and budget constraints).

        Raises:
            TrialFailed: the policy produced no model (a NaN loss, say).
            optuna.TrialPruned: the first look was hopeless; the trial stopped early.
        """
        policy = self.space.suggest(trial, seed=self.config.study.seed + trial.number)
        trial.set_user_attr("policy", policy.to_dict())
        result = self.evaluate(policy)
        for name, value in self.record(result).items():
            trial.set_user_attr(name, value)
        if result.early_stopped:
            log.info("%s  stopped early: first look hopeless", self.progress_line(trial.number, result))
            raise optuna.TrialPruned(f"first-look accuracy {result.first_look:.4f} is hopeless")
        note = ""
        if self.budget is not None:
            violations = self.budget.violations(result.measurement.to_dict())
            trial.set_user_attr("constraints", list(violations.values()))
            if hasattr(trial, "set_constraint"):  # Optuna >= 5: named constraints the samplers read
                for key, value in violations.items():
                    trial.set_constraint(key, value)
            broken = [k for k, v in violations.items() if v > 0]
            note = f"  infeasible ({', '.join(broken)})" if broken else ""
        log.info("%s%s", self.progress_line(trial.number, result), note)
        return result

    def values(self, result: TrialResult) -> tuple[float, ...]:
        """The study's objective values of a result, in ``study.objectives`` order."""
        return tuple(result.objective(name) for name in self.config.study.objectives)

    @staticmethod
    def record(result: TrialResult) -> dict[str, Any]:
        """The user attributes a trial stores: enough to rebuild and report it from storage alone."""
        return {
            **result.measurement.to_dict(),
            "finetune_cost": result.finetune_cost,
            "first_look_accuracy": result.first_look,
            "early_stopped": result.early_stopped,
            "kept": result.kept,
            "removed": result.removed,
            "seconds": {k: round(v, 4) for k, v in result.seconds.items()},
        }

    def progress_line(self, number: int, result: TrialResult) -> str:
        base = self.base_measurement
        m = result.measurement
        return (
            f"trial {number:>4}  {result.policy.summary()}  acc {m.accuracy:.4f}  "
            f"MACs {100 * m.macs / base.macs:5.1f}%  size {100 * m.size / base.size:5.1f}%  "
            f"{sum(result.seconds.values()):.1f}s"
        )
