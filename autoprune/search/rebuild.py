"""Rebuilding a stored trial's model from the study alone: its architecture, the base model's
surviving weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models import build_model
from autoprune.search.basemodel import load_state
from autoprune.search.front import measured
from autoprune.search.record import StudyRecord
from autoprune.trial.surgery import Removal, rebuild


def build_pruned(
    model_info: dict[str, Any],
    example_shape: Sequence[int],
    kept: dict[str, int],
    removed: Removal | None = None,
    *,
    base_checkpoint: Path | None = None,
) -> nn.Module:
    """A pruned architecture: the named model (with the base model's weights from
    ``base_checkpoint``, else freshly initialized) with a trial's channel removals (``removed``)
    replayed or, for trials stored without them, shrunk to ``kept`` channels per group.

    Args:
        model_info: ``name``, ``num_classes``, ``in_channels`` and ``image_size`` of the model.
        example_shape: The shape of one input batch, for torch-pruning's tracing.
    """
    model = _built(model_info)
    if base_checkpoint is not None:
        load_state(model, base_checkpoint)
    with torch.enable_grad():  # torch-pruning traces through autograd
        return rebuild(model, torch.zeros(list(example_shape)), kept, removed)


def _built(model_info: dict[str, Any]) -> nn.Module:
    """The named model, freshly initialized."""
    return build_model(
        model_info["name"],
        num_classes=model_info["num_classes"],
        in_channels=model_info["in_channels"],
        image_size=model_info["image_size"],
    )


def stored_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of a stored study, which completed with a record of its surgery (``kept``)."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            if not measured(trial):
                raise AutopruneError(f"trial {number} of study {study.study_name!r} did not complete")
            return trial
    raise AutopruneError(f"study {study.study_name!r} has no trial {number}")


def stored_base(study: optuna.Study) -> nn.Module:
    """The study's base model with its trained weights (CPU, eval mode).

    Raises:
        AutopruneError: its checkpoint is not on this machine.
    """
    record = StudyRecord.from_study(study)
    path = record.base_checkpoint
    if not path.is_file():
        raise AutopruneError(
            f"the base model of study {study.study_name!r} is not on this machine (expected at {path}); "
            "copy it there, or run without distillation"
        )
    model = _built(record.model_info())
    load_state(model, path)
    return model.eval()


def rebuild_trial(study: optuna.Study, number: int, *, base_weights: bool = True) -> nn.Module:
    """The pruned architecture of trial ``number``, rebuilt from the stored study alone (on the CPU).

    The structure (every layer's channel count) is exactly the trial's; the weights are the base
    model's surviving channels (``base_weights``; needs the study's base checkpoint on this machine),
    else freshly initialized ones, for loading the trial's own. A trial's zeroed weights (weight-level
    sparsity) are in its own weights only: :func:`autoprune.results.export.trial_model` loads them.
    """
    record = StudyRecord.from_study(study)
    attrs = stored_trial(study, number).user_attrs
    checkpoint = record.base_checkpoint if base_weights else None
    shape = record.data_shape.example_input
    return build_pruned(record.model_info(), shape, attrs["kept"], attrs.get("removed"), base_checkpoint=checkpoint)


__all__ = ["build_pruned", "rebuild_trial", "stored_base", "stored_trial"]
