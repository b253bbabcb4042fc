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
from autoprune.basemodel import base_model, load_state, save_atomic
from autoprune.budget import Budget
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


def artifacts_dir(storage: str, study_name: str, runs_dir: str | Path = "runs") -> Path:
    """Where a study keeps its front's fine-tuned weights: next to a SQLite file
    (``runs/<name>.db`` → ``runs/<name>/``), else ``<runs_dir>/<name>/``."""
    if storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///") :]).parent / study_name
    return Path(runs_dir) / study_name


def budget_of(config: StudyConfig) -> Budget:
    """The study file's ``[budget]`` table as a :class:`Budget`."""
    return Budget.from_mapping(config.to_dict().get("budget", {}))


def _stored_constraints(trial: FrozenTrial) -> list[float]:
    return [float(v) for v in trial.user_attrs.get("constraints", [])]


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler. Budgets reach it as trial constraints: set by the objective with
    ``Trial.set_constraint`` on Optuna >= 5, through ``constraints_func`` on older versions."""
    name = config.study.sampler
    kwargs: dict[str, Any] = {}
    if budget_of(config) and not hasattr(optuna.trial.Trial, "set_constraint"):  # pragma: no cover - Optuna 4
        kwargs["constraints_func"] = _stored_constraints
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.study.population_size, seed=seed, **kwargs)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, **kwargs)
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

    def study_info(self, artifacts: Path | None = None) -> dict[str, Any]:
        ev = self.evaluator
        return {
            "config": ev.config.to_dict(),
            "base": ev.base_measurement.to_dict(),
            "base_checkpoint": str(self.base_path.resolve()),
            "artifacts": str(artifacts.resolve()) if artifacts is not None else None,
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
    budget = budget_of(config)
    resolved = budget.resolve(base_measurement.to_dict()) if budget else None
    if resolved is not None:
        log.info("budget (Optuna constraints): %s", resolved.describe_all())
    evaluator = TrialEvaluator(
        config=config,
        data=data,
        base=base,
        base_measurement=base_measurement,
        space=space,
        device=device,
        budget=resolved,
    )
    return Prepared(evaluator, path, groups)


def weight_path(folder: Path, number: int) -> Path:
    return folder / f"trial-{number}.pt"


def stored_weights(folder: Path) -> dict[int, Path]:
    """The fine-tuned weight files in an artifacts folder, by trial number."""
    found = {}
    for path in folder.glob("trial-*.pt"):
        number = path.stem.removeprefix("trial-")
        if number.isdigit():
            found[int(number)] = path
    return found


class WeightKeeper:
    """An Optuna callback: keeps the fine-tuned weights of front members only.

    After every trial it saves the trial's ``state_dict`` (as ``trial-<N>.pt``, atomically) when the
    trial is on the front, and deletes the files of trials that have left it; so the folder never
    holds more files than the front has members.
    """

    def __init__(self, evaluator: TrialEvaluator, folder: Path) -> None:
        self.evaluator = evaluator
        self.folder = folder

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        on_front = set(front_numbers(study))
        last = self.evaluator.last
        if trial.number in on_front and last is not None and last[0] == trial.number and last[1].model is not None:
            state = {k: v.detach().cpu().clone() for k, v in last[1].model.state_dict().items()}
            save_atomic(state, weight_path(self.folder, trial.number))
        self.evaluator.last = None
        for number, path in stored_weights(self.folder).items():
            if number not in on_front:
                path.unlink(missing_ok=True)


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
    artifacts = artifacts_dir(storage, config.study.name, config.study.runs_dir)
    if STUDY_ATTR not in study.user_attrs:
        study.set_user_attr(STUDY_ATTR, prepared.study_info(artifacts))
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
        callbacks=[WeightKeeper(prepared.evaluator, artifacts)],
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


def load_stored_study(storage: str, name: str) -> optuna.Study:
    """Open an existing study, never creating one; a missing one names the studies that exist."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        raise AutopruneError(f"no study database at {storage}; run `autoprune search` first")
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage=storage)
        raise AutopruneError(
            f"study {name!r} not found in {storage}; it holds: {', '.join(names) or 'no studies'}"
        ) from None


def study_artifacts(study: optuna.Study, storage: str | None = None) -> Path:
    """The folder holding a study's front weights (recorded at creation, else derived from the storage)."""
    info = study_info(study)
    recorded = info.get("artifacts")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    runs_dir = info["config"]["study"].get("runs_dir", "runs")
    if storage is None:
        storage = info["config"]["study"].get("storage") or f"sqlite:///{Path(runs_dir) / study.study_name}.db"
    return artifacts_dir(storage, study.study_name, runs_dir)


def front_numbers(study: optuna.Study) -> list[int]:
    """The numbers of ``study.best_trials``, without its deep copy of every trial (slow on big studies)."""
    try:
        from optuna.study._constrained_optimization import _is_constrained_optimization
        from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

        trials = study.get_trials(deepcopy=False)
        best = _get_pareto_front_trials_by_trials(trials, study.directions, _is_constrained_optimization(trials))
    except (ImportError, TypeError):  # pragma: no cover - private API moved: take the public, slower path
        best = study.best_trials
    return sorted(t.number for t in best)


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
                "finetune_cost": attrs.get("finetune_cost"),
                "finetune_steps": policy["finetune_steps"],
                "prune_steps": policy["prune_steps"],
                "lr": policy["lr"],
                "scorer": policy["scorer"],
                "baseline": attrs.get("baseline"),
            }
        )
    return rows


__all__ = [
    "WeightKeeper",
    "artifacts_dir",
    "budget_of",
    "front",
    "front_numbers",
    "front_rows",
    "load_stored_study",
    "open_study",
    "prepare",
    "rebuild_trial",
    "resolve_device",
    "run_study",
    "storage_url",
    "stored_weights",
    "study_artifacts",
    "study_info",
    "weight_path",
]
