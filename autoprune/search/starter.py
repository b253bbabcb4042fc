"""The study file ``autoprune init`` writes: commented, with sizes chosen for this machine and model.

What is measured before writing: the model built for the data's shape (parameters, MACs, prunable
groups) and the seconds one fine-tune step takes here, on the study's device. From them:

- ``space.finetune_steps_max``: as many steps as fit in :data:`TRIAL_SECONDS` (CPU) or
  :data:`TRIAL_SECONDS_GPU` (GPU) per trial, within 20 to 1,000;
- ``study.trials``: as many trials as fit in :data:`STUDY_HOURS` hours, within :data:`MIN_TRIALS` to :data:`MAX_TRIALS`;
- ``train.epochs`` (without a checkpoint): the config default, fewer on a CPU for a large dataset.

Everything else keeps the defaults of :mod:`autoprune.config`, written out with a comment so the
user sees what to change.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune.config import StudyConfig, config_from_dict
from autoprune.data import load_data
from autoprune.models import build_model
from autoprune.trial.finetune import train_steps
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import find_groups

TRIAL_SECONDS = 10.0
"""Seconds of fine-tuning a trial gets on a CPU."""
TRIAL_SECONDS_GPU = 3.0
"""Seconds of fine-tuning a trial gets on a GPU."""
STUDY_HOURS = 8.0
"""The study's length: overnight."""
MIN_TRIALS, MAX_TRIALS = 20, 500
"""The bounds of ``study.trials``: fewer trials show no front; more, and a fast model would run days."""
_TIMED_STEPS = 5


@dataclass(frozen=True)
class Sizing:
    """What was measured, and the sizes chosen from it."""

    device: str
    params: int
    macs: int
    groups: int
    train_examples: int
    step_seconds: float
    batch_size: int
    finetune_steps: int
    trials: int
    epochs: int

    @property
    def hours(self) -> float:
        """The study's estimated length: base-model training, then fine-tuning plus as much again for
        the rest of each trial."""
        training = self.epochs * math.ceil(self.train_examples / self.batch_size) * self.step_seconds
        return (training + self.trials * 2 * self.finetune_steps * self.step_seconds) / 3600

    @property
    def trials_note(self) -> str:
        """Why ``trials`` is what it is: the hours it fills, or the bound it was held to."""
        if self.trials == MAX_TRIALS:
            return f"the most init chooses (about {self.hours:.1f} h here)"
        if self.trials == MIN_TRIALS:
            return f"the fewest init chooses (about {self.hours:.1f} h here)"
        return f"sized for about {STUDY_HOURS:g} hours"


def size_study(config: StudyConfig, device: torch.device) -> Sizing:
    """Measure the study's model and data on ``device`` and choose the sizes."""
    data = load_data(config.data).to(device)
    model = build_model(
        config.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
    ).to(device)
    example = data.val.x[:1]
    macs, params = count_macs_params(model, example)
    groups = len(find_groups(model, example))
    batches = data.train.shuffled_batches(config.data.batch_size, torch.Generator().manual_seed(0))
    amp = config.trial.amp and device.type == "cuda"  # as the trials will run
    train_steps(model, batches, steps=3, lr=0.01, weight_decay=0.0, amp=amp)  # warm-up: first calls allocate, tune
    start = time.perf_counter()
    train_steps(model, batches, steps=_TIMED_STEPS, lr=0.01, weight_decay=0.0, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step = (time.perf_counter() - start) / _TIMED_STEPS
    budget = TRIAL_SECONDS_GPU if device.type == "cuda" else TRIAL_SECONDS
    steps = min(1000, max(20, int(budget / step)))
    trials = min(MAX_TRIALS, max(MIN_TRIALS, int(STUDY_HOURS * 3600 / (2 * steps * step))))
    epoch_steps = math.ceil(len(data.train) / config.data.batch_size)
    epochs = config.train.epochs
    if device.type != "cuda":  # base training on a CPU: at most about an hour
        epochs = max(1, min(epochs, int(3600 / (epoch_steps * step))))
    return Sizing(
        str(device), params, macs, groups, len(data.train), step, config.data.batch_size, steps, trials, epochs
    )


def study_text(config: StudyConfig, sizing: Sizing) -> str:
    """The commented study file."""
    data, model = config.data, config.model
    checkpoint_note = "your trained weights (a state_dict file)" if model.checkpoint else "empty: train once, cache"
    trial_seconds = TRIAL_SECONDS_GPU if sizing.device.startswith("cuda") else TRIAL_SECONDS
    return f"""# A study written by `autoprune init` for {model.name} on {data.name}.
# Measured on this machine ({sizing.device}): {sizing.params:,} parameters, {sizing.macs:,} MACs per example,
# {sizing.groups} prunable groups, {1000 * sizing.step_seconds:.0f} ms per fine-tune step of {data.batch_size} examples.
# Estimated length: {sizing.hours:.1f} h for {sizing.trials} trials.
# Every key not set here keeps the default documented in autoprune/config.py.
# Run:  autoprune search THIS_FILE      then:  autoprune report THIS_FILE

[study]
name = {_toml(config.study.name)}
device = {_toml(config.study.device)}        # auto: CUDA when present
trials = {sizing.trials}             # {sizing.trials_note}; a rerun with more resumes the study
objectives = ["accuracy", "macs", "size"]   # add "finetune_cost" to search the fine-tune length too
baselines = [0.25, 0.5, 0.75]   # uniform-ratio references enqueued first

[model]
name = {_toml(model.name)}
checkpoint = {_toml(model.checkpoint)}  # {checkpoint_note}

[data]
name = {_toml(data.name)}
root = {_toml(data.root)}
val_fraction = {data.val_fraction}      # of the training data: scores the trials
batch_size = {data.batch_size}
image_size = {data.image_size}          # 0: the data's own size

[train]
epochs = {sizing.epochs}              # base-model training, when no checkpoint is given
lr = {config.train.lr}

[space]
kind = "channels"         # or weights | n:m | channels+n:m: weight-level sparsity, with objectives
                          # ["accuracy", "nonzero_macs", "size"] (docs/sparsity.md)
granularity = "relative"  # relative | offset (residual networks) | allocation | layer | uniform | global
ratio_max = 0.8
scorers = ["l1", "l2", "taylor", "sensitivity", "fpgm", "bn_scale"]
finetune_steps_min = {max(1, sizing.finetune_steps // 10)}
finetune_steps_max = {sizing.finetune_steps}    # about {trial_seconds:g} s of fine-tuning per trial here
lr_min = 0.001
lr_max = 0.1

# [fidelity]              # promotion: once the trials have run, the best third of each band of MACs
# rungs = 3               # is fine-tuned on to 3x, then 9x its steps (more time; a better ranking)
# eta = 3

[budget]                  # limits on the pruned model; uncomment to use
# max_macs = "50%"
# max_size = "2MB"
# min_accuracy = "98%"
"""


def _toml(value: str) -> str:
    """A TOML basic string: JSON's escapes (quotes, backslashes, control characters as \\uXXXX) are TOML's."""
    return json.dumps(value)


def write_study(config: StudyConfig, device: torch.device, out: Path) -> tuple[Path, Sizing]:
    """Size the study and write its file to ``out``; the file's settings load back as ``config``'s."""
    sizing = size_study(config, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(study_text(config, sizing), encoding="utf-8")
    return out, sizing


def starter_config(
    *,
    name: str,
    model: str,
    data: str,
    root: str = "",
    image_size: int = 0,
    checkpoint: str = "",
    device: str = "auto",
) -> StudyConfig:
    """The settings ``autoprune init`` starts from (checked like a study file's)."""
    return config_from_dict(
        {
            "study": {"name": name, "device": device},
            "model": {"name": model, "checkpoint": checkpoint},
            "data": {"name": data, "root": root, "image_size": image_size},
        }
    )


__all__ = ["MAX_TRIALS", "MIN_TRIALS", "Sizing", "size_study", "starter_config", "study_text", "write_study"]
