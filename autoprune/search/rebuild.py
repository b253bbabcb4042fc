"""Rebuilding a stored trial's model from the study alone: its architecture, the base model's
surviving weights, the base checkpoint checked by its sha256 and fetched from the store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autoprune._logging import get_logger
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models import build_model
from autoprune.search.artifacts import BASE_KEY, Artifacts
from autoprune.search.basemodel import load_state
from autoprune.search.front import measured
from autoprune.search.paths import study_artifacts
from autoprune.search.record import StudyRecord
from autoprune.trial.surgery import Removal, rebuild

log = get_logger(__name__)


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


def base_file(record: StudyRecord, artifacts: Artifacts) -> Path:
    """The study's base checkpoint on this machine, checked against its recorded sha256: the recorded
    file, else a copy fetched from the study's artifact store into ``<runs_dir>/cache/``. A study's
    base model is never trained again.

    Raises:
        ConfigError: this machine's file at the recorded path is another model, or the base model
            is neither on this machine nor in the store.
    """
    path, want = record.base_checkpoint, record.base_sha256
    if path.is_file():
        got = _sha256(path.read_bytes())
        if want is not None and got != want:
            fix = (
                "remove it, and the study's is fetched from its artifact store"
                if record.base_in_store
                else "replace it with the study's, copied from the machine that made the study"
            )
            raise ConfigError(
                f"this machine's {path} is not the study's base model "
                f"(sha256 {got[:12]}, the study's {want[:12]}): {fix}"
            )
        return path
    if not record.base_in_store or want is None:
        raise ConfigError(
            f"the study's base model is not on this machine (expected at {path}): copy it there, or make the "
            "study with --artifacts URL (study.artifacts) so that every machine fetches it"
        )
    local = Path(record.config.study.runs_dir) / "cache" / f"study-base-{want[:16]}.pt"
    if local.is_file() and _sha256(local.read_bytes()) == want:
        return local
    where = artifacts.where(BASE_KEY)
    data = artifacts.get(BASE_KEY)
    if data is None:
        raise ConfigError(f"the study's base model is missing from its artifact store ({where})")
    if _sha256(data) != want:
        raise ConfigError(
            f"{where} is not the study's base model (sha256 {_sha256(data)[:12]}, the study's {want[:12]})"
        )
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, local)
    log.info("base model: fetched %s (%s bytes) to %s", where, f"{len(data):,}", local)
    return local


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_base(study: optuna.Study) -> nn.Module:
    """The study's base model with its trained weights (CPU, eval mode), from this machine or the
    study's artifact store (:func:`base_file`).

    Raises:
        ConfigError: its checkpoint is neither on this machine nor in the store, or is another model.
    """
    record = StudyRecord.from_study(study)
    model = _built(record.model_info())
    load_state(model, base_file(record, study_artifacts(study)))
    return model.eval()


def rebuild_trial(study: optuna.Study, number: int, *, base_weights: bool = True) -> nn.Module:
    """The pruned architecture of trial ``number``, rebuilt from the stored study alone (on the CPU).

    The structure (every layer's channel count) is exactly the trial's; the weights are the base
    model's surviving channels (``base_weights``; the study's base checkpoint, :func:`base_file`),
    else freshly initialized ones, for loading the trial's own. A trial's zeroed weights (weight-level
    sparsity) are in its own weights only: :func:`autoprune.results.export.trial_model` loads them.
    """
    record = StudyRecord.from_study(study)
    attrs = stored_trial(study, number).user_attrs
    checkpoint = base_file(record, study_artifacts(study)) if base_weights else None
    shape = record.data_shape.example_input
    return build_pruned(record.model_info(), shape, attrs["kept"], attrs.get("removed"), base_checkpoint=checkpoint)


__all__ = ["base_file", "build_pruned", "rebuild_trial", "stored_base", "stored_trial"]
