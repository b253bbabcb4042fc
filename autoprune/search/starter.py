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

import math
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune.config import StudyConfig, config_from_dict
from autoprune.config_docs import field_docs, first_sentence, section_doc, sections, toml_value
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
LEVELS = ("50%", "25%", "12.5%")
"""The starter study's baselines: uniform pruning and the one-shot allocation at each of these shares of the
base model's MACs, its first trials. The allocation space is the one whose level picks beat uniform
pruning's in the comparisons (docs/compare.md; the relative space's picks on the CNN fell below
uniform's), and on models a few epochs of fine-tuning recover, the one-shot allocation plus a long final
fine-tune reached the best accuracy the search did (README, "Does the search pay?")."""


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


TEMPLATE: dict[str, tuple[str, ...]] = {
    "study": ("name", "device", "trials", "objectives", "baselines"),
    "model": ("name", "checkpoint"),
    "data": ("name", "root", "val_fraction", "batch_size", "image_size"),
    "train": ("epochs", "lr"),
    "space": (
        "kind",
        "granularity",
        "ratio_max",
        "scorers",
        "finetune_steps_min",
        "finetune_steps_max",
        "lr_min",
        "lr_max",
    ),
}
"""The keys the study file writes out, with the first sentence of each one's documentation."""

EXAMPLES: dict[str, dict[str, str | int]] = {
    "fidelity": {"rungs": 3, "eta": 3},
    "budget": {"max_macs": "50%", "max_size": "2MB", "min_accuracy": "98%"},
}
"""Sections the study file shows commented out, with example values."""


def study_text(config: StudyConfig, sizing: Sizing) -> str:
    """The commented study file: :data:`TEMPLATE`'s keys at ``config``'s values and the sizes measured,
    :data:`EXAMPLES` commented out, each key under the first sentence of its documentation in
    :mod:`autoprune.config`."""
    data, model = config.data, config.model
    trial_seconds = TRIAL_SECONDS_GPU if sizing.device.startswith("cuda") else TRIAL_SECONDS
    sized = {
        ("study", "trials"): (sizing.trials, f"{sizing.trials_note}; a rerun with more resumes the study"),
        ("train", "epochs"): (sizing.epochs, "when no checkpoint is given"),
        ("space", "finetune_steps_min"): (max(1, sizing.finetune_steps // 10), "a tenth of the most"),
        ("space", "finetune_steps_max"): (
            sizing.finetune_steps,
            f"about {trial_seconds:g} s of fine-tuning per trial here",
        ),
    }
    lines = [
        f"# A study written by `autoprune init` for {model.name} on {data.name}.",
        f"# Measured on this machine ({sizing.device}): {sizing.params:,} parameters, "
        f"{sizing.macs:,} MACs per example,",
        f"# {sizing.groups} prunable groups, {1000 * sizing.step_seconds:.0f} ms per fine-tune step "
        f"of {data.batch_size} examples.",
        f"# Estimated length: {sizing.hours:.1f} h for {sizing.trials} trials.",
        "# Every key not set here keeps its default: docs/settings.md lists them all.",
        "# Run:  autoprune search THIS_FILE      then:  autoprune report THIS_FILE",
        f"# The first {2 * len(LEVELS)} trials are uniform pruning and the one-shot allocation at "
        f"{', '.join(LEVELS)} of the base",
        "# MACs (study.baselines). Where a few epochs of fine-tuning recover the model, the one-shot picks plus a long",
        f"# final fine-tune did as well as the search: stop there (--trials {2 * len(LEVELS)}), then "
        "autoprune pick THIS_FILE",
        '# --max-macs 25% and autoprune finetune THIS_FILE --trial N --epochs 10 (README, "Does the search pay?").',
    ]
    classes = sections()
    for name, keys in TEMPLATE.items():
        docs = field_docs(classes[name])
        lines += ["", f"[{name}]"]
        for key in keys:
            value, note = sized.get((name, key), (getattr(getattr(config, name), key), ""))
            lines += _commented(first_sentence(docs[key]))
            lines.append(f"{key} = {toml_value(value)}" + (f"  # {note}" if note else ""))
    for name, examples in EXAMPLES.items():
        docs = field_docs(classes[name])
        lines += ["", f"# [{name}]", *_commented(f"{first_sentence(section_doc(classes[name]))} Uncomment to use.")]
        for key, example in examples.items():
            lines += _commented(first_sentence(docs[key]))
            lines.append(f"# {key} = {toml_value(example)}")
    return "\n".join(lines) + "\n"


def _commented(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 100)]


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
    """The settings ``autoprune init`` starts from (checked like a study file's): the ``allocation`` space
    with :data:`LEVELS` as its baselines, so the study opens with uniform pruning and the one-shot
    allocation at each level."""
    return config_from_dict(
        {
            "study": {"name": name, "device": device, "baselines": list(LEVELS)},
            "model": {"name": model, "checkpoint": checkpoint},
            "data": {"name": data, "root": root, "image_size": image_size},
            "space": {"granularity": "allocation"},
        }
    )


__all__ = ["LEVELS", "MAX_TRIALS", "MIN_TRIALS", "Sizing", "size_study", "starter_config", "study_text", "write_study"]
