"""The study: Optuna storage, sampler, baselines, resume, and rebuilding trials from storage."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune._logging import get_logger
from autoprune.basemodel import base_model, load_state
from autoprune.config import OBJECTIVES, StudyConfig, config_from_dict
from autoprune.data import load_data
from autoprune.errors import AutopruneError, ConfigError, TrialFailed
from autoprune.metrics import measure
from autoprune.models import build_model
from autoprune.objective import TrialEvaluator
from autoprune.space import SearchSpace
from autoprune.surgery import PrunableGroup, find_groups, rebuild

log = get_logger(__name__)

STUDY_ATTR = "autoprune"
"""The study user attribute holding the settings, base-model figures and groups."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use cpu or auto")
    return device


def storage_url(config: StudyConfig) -> str:
    """The study's storage: the configured URL, else a SQLite file in the runs folder."""
    if config.study.storage:
        return config.study.storage
    runs = Path(config.study.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / config.study.name}.db"


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    name = config.study.sampler
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.study.population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(config: StudyConfig, storage: str) -> optuna.Study:
    """Create the study, or load it when it exists; the sampler's seed moves on with the trial count,
    so a resumed study does not replay the proposals of its first run."""
    directions = [optuna.study.StudyDirection[OBJECTIVES[o].upper()] for o in config.study.objectives]
    try:
        study = optuna.create_study(
            storage=storage, study_name=config.study.name, directions=directions, load_if_exists=True
        )
    except ValueError as exc:
        raise ConfigError(f"study {config.study.name!r} cannot be opened: {exc}") from None
    if list(study.directions) != directions:
        raise ConfigError(
            f"study {config.study.name!r} in {storage} was created with other objectives; "
            "choose another study.name or storage"
        )
    study.sampler = make_sampler(config, config.study.seed + len(study.trials))
    if study.metric_names is None:
        study.set_metric_names(list(config.study.objectives))
    return study


@dataclass
class Prepared:
    """Everything a study needs before its first trial."""

    evaluator: TrialEvaluator
    base_path: Path
    groups: list[PrunableGroup]

    def study_info(self) -> dict[str, Any]:
        ev = self.evaluator
        return {
            "config": ev.config.to_dict(),
            "base": ev.base_measurement.to_dict(),
            "base_checkpoint": str(self.base_path),
            "groups": {g.name: g.channels for g in self.groups},
            "data_shape": {
                "num_classes": ev.data.num_classes,
                "in_channels": ev.data.in_channels,
                "image_size": ev.data.image_size,
                "example_input": list(ev.example_input.shape),
            },
        }


def prepare(config: StudyConfig, device: torch.device) -> Prepared:
    """Load the data and the base model, measure it and find its groups."""
    data = load_data(config.data).to(device)
    base, path = base_model(config, data, device)
    example = data.val.x[:1]
    base_measurement = measure(base, example, data.val, config.data.batch_size)
    groups = find_groups(base, example)
    log.info(
        "base model: val acc %.4f, %s MACs, %s params, %s bytes, %d prunable groups, device %s",
        base_measurement.accuracy,
        f"{base_measurement.macs:,}",
        f"{base_measurement.params:,}",
        f"{base_measurement.size:,}",
        len(groups),
        device,
    )
    space = SearchSpace(config.space, [g.name for g in groups])
    evaluator = TrialEvaluator(
        config=config, data=data, base=base, base_measurement=base_measurement, space=space, device=device
    )
    return Prepared(evaluator, path, groups)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_study(
    config: StudyConfig,
    *,
    storage: str | None = None,
    device: torch.device | None = None,
) -> optuna.Study:
    """Run (or resume) the study until it holds ``config.study.trials`` completed trials."""
    storage = storage or storage_url(config)
    study = open_study(config, storage)
    prepared = prepare(config, device or resolve_device(config.study.device))
    if STUDY_ATTR not in study.user_attrs:
        study.set_user_attr(STUDY_ATTR, prepared.study_info())
    if not study.trials:
        for ratio in config.study.baselines:
            study.enqueue_trial(
                prepared.evaluator.space.baseline_params(ratio), user_attrs={"baseline": ratio}, skip_if_exists=True
            )
    remaining = config.study.trials - len(finished(study))
    if remaining <= 0:
        log.info("study %r already holds %d completed trials", config.study.name, len(finished(study)))
        return study
    log.info("study %r: running %d trial(s) in %s", config.study.name, remaining, storage)
    start = time.perf_counter()
    study.optimize(
        prepared.evaluator,
        n_trials=remaining,
        timeout=config.study.timeout or None,
        catch=(TrialFailed,),
    )
    log.info(
        "study %r: %d completed trials, %.1fs this run",
        config.study.name,
        len(finished(study)),
        time.perf_counter() - start,
    )
    return study


def study_info(study: optuna.Study) -> dict[str, Any]:
    """The settings and base-model figures a study was created with."""
    info = study.user_attrs.get(STUDY_ATTR)
    if info is None:
        raise AutopruneError(f"study {study.study_name!r} was not made by autoprune (no {STUDY_ATTR!r} attribute)")
    return dict(info)


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated completed trials, by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def rebuild_trial(study: optuna.Study, number: int) -> nn.Module:
    """The pruned architecture of trial ``number``, rebuilt from the stored study alone (on the CPU).

    The structure (every layer's channel count) is exactly the trial's; the weights are the base
    model's surviving channels.
    """
    info = study_info(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials or "kept" not in trials[0].user_attrs:
        raise AutopruneError(f"study {study.study_name!r} has no completed trial {number}")
    config = config_from_dict(info["config"])
    shape = info["data_shape"]
    model = build_model(
        config.model.name,
        num_classes=shape["num_classes"],
        in_channels=shape["in_channels"],
        image_size=shape["image_size"],
    )
    load_state(model, Path(info["base_checkpoint"]))
    return rebuild(model, torch.zeros(shape["example_input"]), trials[0].user_attrs["kept"])


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The front as rows: every figure absolute and as % of the base model, plus the policy's budget."""
    base = study_info(study)["base"]
    rows = []
    for trial in front(study):
        attrs = trial.user_attrs
        policy = attrs["policy"]
        rows.append(
            {
                "trial": trial.number,
                "accuracy": attrs["accuracy"],
                "macs": attrs["macs"],
                "macs_pct": 100.0 * attrs["macs"] / base["macs"],
                "params": attrs["params"],
                "params_pct": 100.0 * attrs["params"] / base["params"],
                "size": attrs["size"],
                "size_pct": 100.0 * attrs["size"] / base["size"],
                "finetune_steps": policy["finetune_steps"],
                "prune_steps": policy["prune_steps"],
                "scorer": policy["scorer"],
                "baseline": attrs.get("baseline"),
            }
        )
    return rows


__all__ = [
    "front",
    "front_rows",
    "open_study",
    "prepare",
    "rebuild_trial",
    "resolve_device",
    "run_study",
    "storage_url",
    "study_info",
]
