"""The final fine-tune: train a chosen trial's pruned model to convergence, resumable after a kill.

A search judges every trial after a brief fine-tune; the model a user deploys deserves a long one.
:func:`final_finetune` continues from the trial's kept weights with :func:`~autoprune.trial.finetune.sgd`
on one cosine schedule over the whole run, optionally distilling from the base model, and writes a
checkpoint after every epoch to ``<artifacts>/finetune/trial-<N>-<recipe key>/checkpoint.pt``: the
model, the optimizer (momentum included), the step, the batch order's generator and torch's random
state. A run started again with the same recipe continues from its last checkpoint and, on the CPU,
ends with exactly the weights an uninterrupted run gives; a finished run returns its model at once.
Zero weights (weight-level sparsity) stay zero throughout.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from autoprune._logging import get_logger
from autoprune._progress import EpochLines, format_seconds, progress_bar
from autoprune.data import DataSplits
from autoprune.errors import AutopruneError
from autoprune.search.basemodel import cpu_state
from autoprune.search.paths import study_artifacts
from autoprune.search.rebuild import stored_base, stored_trial
from autoprune.search.record import StudyRecord
from autoprune.trial.finetune import Distillation, sgd, train_steps
from autoprune.trial.metrics import accuracy
from autoprune.trial.sparsity import zeros_held

log = get_logger(__name__)

CHECKPOINT = "checkpoint.pt"
DEFAULT_EPOCHS = 20
"""Epochs of ``autoprune finetune`` when neither ``--epochs`` nor ``--steps`` is given."""


@dataclass(frozen=True)
class Recipe:
    """How a final fine-tune trains. Two runs with equal recipes share their checkpoints.

    Attributes:
        steps: Optimizer steps in all.
        steps_per_epoch: Full batches in one pass over the train split; a checkpoint follows each.
        lr: Peak learning rate, decayed to 0 on one cosine over ``steps``.
        distill_weight: α of :class:`~autoprune.trial.finetune.Distillation` (0: plain cross-entropy).
    """

    steps: int
    steps_per_epoch: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    distill_weight: float = 0.0
    distill_temperature: float = 4.0

    @property
    def epochs(self) -> int:
        """Checkpoints in the run: whole epochs, the last one possibly partial."""
        return -(-self.steps // self.steps_per_epoch)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        distill = (
            f", distilled from the base model (α {self.distill_weight:g}, T {self.distill_temperature:g})"
            if self.distill_weight > 0
            else ""
        )
        return (
            f"{self.steps} steps ({self.steps / self.steps_per_epoch:.3g} epochs) of batch {self.batch_size} "
            f"at lr {self.lr:.3g}, cosine{distill}"
        )


@dataclass(frozen=True)
class FinetuneSettings:
    """What a user chose of a final fine-tune (``autoprune finetune`` or ``export --finetune-epochs``);
    ``None`` leaves a setting to :func:`recipe_for`."""

    epochs: int | None = None
    steps: int | None = None
    lr: float | None = None
    distill_weight: float | None = None
    distill_temperature: float | None = None
    fresh: bool = False
    """Discard the checkpoint an earlier run of the same recipe left, and start again."""

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise AutopruneError("give the length of the fine-tune as --epochs or as --steps, not both")
        if (self.epochs is not None and self.epochs <= 0) or (self.steps is not None and self.steps <= 0):
            raise AutopruneError(f"the fine-tune needs at least one step (epochs {self.epochs}, steps {self.steps})")
        if self.lr is not None and not self.lr > 0:
            raise AutopruneError(f"the fine-tune's lr must be > 0 (got {self.lr})")
        if self.distill_weight is not None and not 0 <= self.distill_weight <= 1:
            raise AutopruneError(f"the distillation weight must be in [0, 1] (got {self.distill_weight})")
        if self.distill_temperature is not None and not self.distill_temperature > 0:
            raise AutopruneError(f"the distillation temperature must be > 0 (got {self.distill_temperature})")


def recipe_for(study: optuna.Study, number: int, data: DataSplits, settings: FinetuneSettings) -> Recipe:
    """The recipe of a final fine-tune of trial ``number``: what ``settings`` leave open comes from
    the trial (lr, seed) and the study (batch size, weight decay, distillation), and the length
    defaults to :data:`DEFAULT_EPOCHS` epochs."""
    config = StudyRecord.from_study(study).config
    policy = stored_trial(study, number).user_attrs["policy"]
    batch_size = config.data.batch_size
    steps_per_epoch = max(1, len(data.train) // min(batch_size, len(data.train)))
    return Recipe(
        steps=settings.steps or (settings.epochs or DEFAULT_EPOCHS) * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        lr=settings.lr or float(policy["lr"]),
        weight_decay=config.train.weight_decay,
        batch_size=batch_size,
        seed=int(policy["seed"]),
        distill_weight=config.trial.distill_weight if settings.distill_weight is None else settings.distill_weight,
        distill_temperature=settings.distill_temperature or config.trial.distill_temperature,
    )


@dataclass
class FinetuneResult:
    """A finished final fine-tune.

    Attributes:
        model: The fine-tuned model, on the CPU, in eval mode.
        history: One entry per epoch: ``epoch``, ``step``, ``loss`` (mean training loss), ``val_accuracy``
            and ``seconds`` (training time up to that checkpoint, over every process that worked on it).
        resumed_at: The step this process started from (0: from the trial's weights).
        checkpoint: Where the checkpoint lives (a file, or a key in a bucket).
    """

    model: nn.Module
    recipe: Recipe
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_at: int = 0
    checkpoint: str = ""

    @property
    def seconds(self) -> float:
        return self.history[-1]["seconds"] if self.history else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": asdict(self.recipe), "history": self.history, "seconds": self.seconds}


def finetune_key(number: int, recipe: Recipe) -> str:
    """The key, in the study's artifact store, of trial ``number``'s checkpoint by ``recipe``."""
    return f"finetune/trial-{number}-{recipe.key()}/{CHECKPOINT}"


def final_finetune(
    study: optuna.Study,
    number: int,
    model: nn.Module,
    data: DataSplits,
    recipe: Recipe,
    *,
    storage: str | None = None,
    device: torch.device | None = None,
    fresh: bool = False,
) -> FinetuneResult:
    """Fine-tune trial ``number``'s ``model`` (its kept weights, as
    :func:`~autoprune.results.export.trial_model` gives them) by ``recipe``, in place, continuing
    from the recipe's last checkpoint where one exists. On a terminal a bar shows the epoch, loss,
    validation accuracy and time left; elsewhere a line is logged about every tenth of the epochs.
    ``fresh`` discards that checkpoint first.

    Raises:
        AutopruneError: distillation is asked for and the base model's weights are not on this machine.
    """
    device = device or torch.device("cpu")
    artifacts = study_artifacts(study, storage)
    key = finetune_key(number, recipe)
    path = artifacts.where(key)
    if fresh:
        artifacts.remove(key)
    stored = artifacts.get(key)
    checkpoint = torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True) if stored is not None else None
    if checkpoint is not None and checkpoint["recipe"] != asdict(recipe):
        raise AutopruneError(f"{path} was written by another recipe; run again with --fresh to start over")
    model.to(device)
    on_device = data.to(device)
    distillation = (
        Distillation(stored_base(study).to(device).eval(), recipe.distill_weight, recipe.distill_temperature)
        if recipe.distill_weight > 0
        else None
    )
    generator = torch.Generator()
    with zeros_held(model):
        optimizer = sgd(model, recipe.lr, recipe.weight_decay)
        if checkpoint is None:
            step, history, seconds = 0, [], 0.0
            generator.manual_seed(recipe.seed)
            torch.manual_seed(recipe.seed)
        else:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            generator.set_state(checkpoint["generator"])
            torch.set_rng_state(checkpoint["torch_rng"])
            if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
            step, history, seconds = checkpoint["step"], checkpoint["history"], checkpoint["seconds"]
            if step < recipe.steps:
                log.info(
                    "trial %d: resuming the final fine-tune at step %d of %d (%s)", number, step, recipe.steps, path
                )
            else:
                log.info("trial %d: the final fine-tune by this recipe is done; its model is in %s", number, path)
        resumed_at = step
        lines = EpochLines(f"trial {number}", recipe.epochs, recipe.steps, done=step)
        losses: list[float] = []
        with progress_bar(recipe.steps, desc=f"fine-tune trial {number}", unit="step", initial=step) as bar:

            def on_step(_step: int, loss: float) -> None:
                losses.append(loss)
                if bar is not None:
                    bar.update(1)

            while step < recipe.steps:
                start = time.perf_counter()
                span = range(step, min(step + recipe.steps_per_epoch, recipe.steps))
                losses.clear()
                # a fresh iterator per epoch: it draws that epoch's order from the generator, whose
                # state the checkpoint keeps
                train_steps(
                    model,
                    on_device.train.shuffled_batches(recipe.batch_size, generator),
                    steps=recipe.steps,
                    lr=recipe.lr,
                    weight_decay=recipe.weight_decay,
                    on_step=on_step,
                    distillation=distillation,
                    span=span,
                    optimizer=optimizer,
                )
                step = span.stop
                val = accuracy(model, on_device.val, recipe.batch_size)
                seconds += time.perf_counter() - start
                epoch = len(history) + 1
                loss = sum(losses) / len(losses)
                history.append({"epoch": epoch, "step": step, "loss": loss, "val_accuracy": val, "seconds": seconds})
                buffer = io.BytesIO()
                torch.save(
                    {
                        "recipe": asdict(recipe),
                        "step": step,
                        "model": cpu_state(model),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                        "history": history,
                        "seconds": seconds,
                    },
                    buffer,
                )
                artifacts.put(key, buffer.getvalue())
                lines(bar, epoch, step, loss, val)
    model.cpu().eval()
    if resumed_at < recipe.steps:
        val = history[-1]["val_accuracy"]
        log.info("trial %d: final fine-tune done in %s, val acc %.4f", number, format_seconds(seconds), val)
    return FinetuneResult(model, recipe, history, resumed_at, path)


__all__ = [
    "CHECKPOINT",
    "DEFAULT_EPOCHS",
    "FinetuneResult",
    "FinetuneSettings",
    "Recipe",
    "final_finetune",
    "finetune_key",
    "recipe_for",
]
