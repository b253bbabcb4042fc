"""One policy evaluated: copy the base model, apply the policy, fine-tune, measure. No Optuna here:
:mod:`autoprune.trial.objective` turns an Optuna trial into a policy and stores what this returns."""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune._logging import get_logger
from autoprune.budget import ResolvedBudget
from autoprune.config import StudyConfig
from autoprune.data import DataSplits, Split
from autoprune.errors import TrialFailed
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.finetune import Batches, Distillation, recalibrate_batchnorm, train_steps
from autoprune.trial.latency import measure_latency
from autoprune.trial.latency_model import LatencyModel
from autoprune.trial.metrics import Measurement, accuracy, count_macs_params, size_bytes
from autoprune.trial.space import SearchSpace
from autoprune.trial.sparsity import WeightMasks, nonzero_macs, zeros_held
from autoprune.trial.surgery import Removal, Surgery, TracedModel

log = get_logger(__name__)

PHASES = ("policy", "copy", "surgery", "recalibrate", "finetune", "evaluate", "measure")
"""Where a trial's time goes; ``policy`` is the search space turning the trial's parameters into a
policy (:func:`autoprune.trial.objective.run_trial` times it), ``recalibrate`` is adaptive
BatchNorm plus the first look."""


@dataclass
class TrialResult:
    """What one evaluated policy produced.

    Attributes:
        policy: The policy applied.
        measurement: Validation accuracy, MACs, parameters and size of the fine-tuned model.
        kept: Channels each group kept (empty when the policy removes no channels).
        removed: Every channel removal surgery made (:meth:`Surgery.removed`): what a rebuild replays.
        sparsity: Share of zero weights in each layer the policy's weight-level part names.
        finetune_cost: Training samples processed while fine-tuning.
        seconds: Wall time of each phase (``PHASES``).
        model: The fine-tuned model.
        first_look: Validation accuracy right after the first prune step and adaptive BatchNorm,
            before any fine-tuning (None when ``trial.recalibrate_batches`` is 0).
        early_stopped: The first look was hopeless, so fine-tuning was skipped; ``measurement``
            then describes the model as it stood at the first look.
        oom_retry_batch_size: The halved batch size the policy ran with after CUDA ran out of
            memory (:func:`evaluate_retrying_oom`), else ``None``.
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
    oom_retry_batch_size: int | None = None
    sparsity: dict[str, float] = field(default_factory=dict)

    def objective(self, name: str) -> float:
        if name == "finetune_cost":
            return float(self.finetune_cost)
        return float(getattr(self.measurement, name))


@dataclass(frozen=True)
class Continuation:
    """A fine-tune that goes on from an earlier trial's result (a promoted run): its model with the
    fine-tuned weights, what it recorded, and how many more steps to train.

    Attributes:
        model: The earlier trial's fine-tuned model (copied, never trained in place).
        steps: Fine-tune steps to add.
        seed: Seed of the added steps' batch order (another than the earlier fine-tune's).
        samples: Training samples the earlier trial's fine-tunes processed.
        kept, removed, sparsity: What the earlier trial recorded of its surgery and masks.
        label: What the trial's log line adds ("rung 1 of trial 12").
    """

    model: nn.Module
    steps: int
    seed: int
    samples: int
    kept: dict[str, int]
    removed: Removal
    sparsity: dict[str, float] = field(default_factory=dict)
    label: str = ""


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
    """Evaluates policies against one base model and data.

    The base model comes traced (:class:`~autoprune.trial.surgery.TracedModel`): every trial copies
    the model together with its dependency graph, so no trial traces it again.
    """

    def __init__(
        self,
        *,
        config: StudyConfig,
        data: DataSplits,
        traced: TracedModel,
        base_measurement: Measurement,
        space: SearchSpace,
        device: torch.device,
        budget: ResolvedBudget | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.traced = traced
        self.base = base = traced.model
        self.base_measurement = base_measurement
        self.space = space
        self.device = device
        self.example_input = data.val.x[:1]
        self.amp = config.trial.amp and device.type == "cuda"
        self.needs_latency = config.needs_latency
        self.latency_model: LatencyModel | None = None
        """Predicts trials' latency instead of timing it, where the study says so (set by ``prepare``)."""
        if self.amp and data.train.x.dim() == 4:
            self.data = dataclasses.replace(data, train=_channels_last(data.train), val=_channels_last(data.val))
        self.budget = budget if budget else None
        self.distillation = (
            Distillation(base, config.trial.distill_weight, config.trial.distill_temperature)
            if config.trial.distill_weight > 0
            else None
        )

    def evaluate(
        self, policy: Policy, *, batch_size: int | None = None, start: Continuation | None = None
    ) -> TrialResult:
        """Apply ``policy`` to a copy of the base model, fine-tune it and measure it, in batches of
        ``batch_size`` (default: the study's ``data.batch_size``); or, with ``start``, fine-tune a copy of
        an earlier trial's model further (:meth:`continued`)."""
        if start is not None:
            return self.continued(policy, start, batch_size=batch_size)
        timer = _Timer(self.device)
        settings = self.config.trial
        batch_size = batch_size or self.config.data.batch_size
        generator = torch.Generator().manual_seed(policy.seed)
        torch.manual_seed(policy.seed)
        with timer.phase("copy"):
            model, graph = self.traced.copy() if policy.ratios else (copy.deepcopy(self.base), None)
        with timer.phase("surgery"):
            surgery, masks = self._surgery(model, graph, policy)
        batches = self.data.train.shuffled_batches(batch_size, generator)
        needs_data = (surgery is not None and surgery.scorer.needs_data) or (masks is not None and masks.needs_data)
        calibration_count = self.config.space.calibration_batches if needs_data else 0
        samples = 0
        first_look = None
        for step in range(policy.prune_steps):
            with timer.phase("surgery"):
                calibration = list(itertools.islice(batches, calibration_count))
                if surgery is not None:
                    surgery.step(calibration)
                if masks is not None:
                    masks.step(calibration)
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
                    return self._measured(model, timer, policy, surgery, masks, first_look, samples, first_look, True)
            share = policy.finetune_steps // policy.prune_steps + (step < policy.finetune_steps % policy.prune_steps)
            with timer.phase("finetune"):
                samples += self._finetune(model, batches, share, policy.lr)
        model.eval()
        with timer.phase("evaluate"):
            val_accuracy = accuracy(model, self.data.val, batch_size, amp=self.amp)
        return self._measured(model, timer, policy, surgery, masks, val_accuracy, samples, first_look, False)

    def continued(self, policy: Policy, start: Continuation, *, batch_size: int | None = None) -> TrialResult:
        """Fine-tune a copy of ``start.model`` for ``start.steps`` more steps (one new cosine schedule from
        ``policy.lr``, zero weights held at zero) and measure it; surgery and masks are the earlier trial's."""
        timer = _Timer(self.device)
        batch_size = batch_size or self.config.data.batch_size
        torch.manual_seed(start.seed)
        with timer.phase("copy"):
            model = copy.deepcopy(start.model).to(self.device)
        batches = self.data.train.shuffled_batches(batch_size, torch.Generator().manual_seed(start.seed))
        with timer.phase("finetune"), zeros_held(model):
            samples = self._finetune(model, batches, start.steps, policy.lr)
        model.eval()
        with timer.phase("evaluate"):
            val_accuracy = accuracy(model, self.data.val, batch_size, amp=self.amp)
        result = self._measured(
            model, timer, policy, None, None, val_accuracy, start.samples + samples, None, False, kept=start.kept
        )
        return dataclasses.replace(result, removed=start.removed, sparsity=start.sparsity)

    def _finetune(self, model: nn.Module, batches: Batches, steps: int, lr: float) -> int:
        """``steps`` steps of the study's fine-tune (channels_last under amp); the samples they took."""
        if self.amp and self.data.train.x.dim() == 4:
            model.to(memory_format=torch.channels_last)
        return train_steps(
            model,
            batches,
            steps=steps,
            lr=lr,
            weight_decay=self.config.train.weight_decay,
            amp=self.amp,
            distillation=self.distillation,
        )

    def _surgery(self, model: nn.Module, graph: object, policy: Policy) -> tuple[Surgery | None, WeightMasks | None]:
        """What edits ``model`` (with its dependency ``graph``) for ``policy``: channel surgery (when it
        removes channels) and weight masks (when it has a weight-level part)."""
        surgery = None
        if policy.ratios:
            scorer = make_scorer(policy.scorer, seed=policy.seed)
            surgery = Surgery(model, self.example_input, policy, scorer, groups=self.space.groups, graph=graph)
        masks = None
        if policy.sparsity is not None:
            masks = WeightMasks(model, policy.sparsity, policy.prune_steps, seed=policy.seed)
        return surgery, masks

    def _measured(
        self,
        model: nn.Module,
        timer: _Timer,
        policy: Policy,
        surgery: Surgery | None,
        masks: WeightMasks | None,
        val_accuracy: float,
        samples: int,
        first_look: float | None,
        early_stopped: bool,
        *,
        kept: dict[str, int] | None = None,
    ) -> TrialResult:
        """Measure MACs, parameters, size (and latency when the study needs it: predicted from ``kept``,
        the groups' channels, by the study's latency model where it has one) and wrap up."""
        settings = self.config.trial
        model.eval()
        with timer.phase("measure"):
            sparsity = masks.finish() if masks is not None else {}
            macs, params = count_macs_params(model, self.example_input)
            if kept is None:
                kept = surgery.kept() if surgery is not None else {}
            latency = None
            if self.latency_model is not None:
                latency = self.latency_model.predict(kept)
            elif self.needs_latency:
                latency = measure_latency(model, self.data.val.x[: settings.latency_batch_size], settings).ms
            measurement = Measurement(
                val_accuracy, macs, params, size_bytes(model), latency, nonzero_macs(model, self.example_input, macs)
            )
        removed = surgery.removed() if surgery is not None else []
        return TrialResult(
            policy,
            measurement,
            kept,
            removed,
            samples,
            timer.seconds,
            model,
            first_look,
            early_stopped,
            sparsity=sparsity,
        )


def evaluate_retrying_oom(evaluator: TrialEvaluator, policy: Policy, start: Continuation | None = None) -> TrialResult:
    """``evaluator.evaluate(policy, start=start)``; when CUDA runs out of memory, once more at half the
    batch size (the result records it as ``oom_retry_batch_size``). Out of memory again, the trial fails.

    Raises:
        TrialFailed: CUDA ran out of memory at both batch sizes.
    """
    try:
        return evaluator.evaluate(policy, start=start)
    except torch.cuda.OutOfMemoryError:
        pass
    free_cuda()
    full = evaluator.config.data.batch_size
    half = max(1, full // 2)
    log.warning("CUDA out of memory at batch size %d: running the trial again at %d", full, half)
    try:
        result = evaluator.evaluate(policy, batch_size=half, start=start)
    except torch.cuda.OutOfMemoryError:
        free_cuda()
        raise TrialFailed(f"CUDA out of memory at batch size {full} and again at {half}") from None
    return dataclasses.replace(result, oom_retry_batch_size=half)


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["PHASES", "Continuation", "TrialEvaluator", "TrialResult", "evaluate_retrying_oom", "free_cuda"]
