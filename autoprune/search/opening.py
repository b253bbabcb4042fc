"""Opening a study to run trials in: the device it runs on, its sampler and the sampler's seed, its
storage."""

from __future__ import annotations

import os
import socket
import zlib
from typing import Any

import optuna
import torch

from autoprune._logging import get_logger, redact_url, warnings_to_debug
from autoprune.budget import Budget
from autoprune.config import OBJECTIVES, StudyConfig
from autoprune.errors import AutopruneError, ConfigError
from autoprune.search.front import stored_constraints
from autoprune.search.gaps import GapSampler
from autoprune.search.record import LANGUAGE_ATTR, StudyRecord, is_language_study
from autoprune.search.storage import make_storage
from autoprune.search.switch import SwitchSampler

log = get_logger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use cpu or auto")
    return device


def budget_of(config: StudyConfig) -> Budget:
    """The study file's ``[budget]`` table as a :class:`Budget`."""
    return Budget.from_mapping(config.to_dict().get("budget", {}))


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler. Budgets reach it as trial constraints: set by the objective with
    ``Trial.set_constraint`` on Optuna >= 5, through ``constraints_func`` on older versions."""
    name = config.sampler
    kwargs: dict[str, Any] = {}
    if budget_of(config) and not hasattr(optuna.trial.Trial, "set_constraint"):  # pragma: no cover - Optuna 4
        kwargs["constraints_func"] = stored_constraints
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.study.population_size, seed=seed, **kwargs)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=config.study.startup_trials, **kwargs
        )
    if name in ("gp", "gaps", "switch"):
        gp = gp_sampler(seed, config.study.startup_trials, **kwargs)
        if name == "gaps":
            return GapSampler(gp, config.space.target, budget_of(config), _base_figures)
        if name == "switch":
            return SwitchSampler(
                gp,
                figure=config.space.target,
                bands=config.levels,
                offset_max=config.space.offset_max,
                seed=seed,
                base_figures=_base_figures,
                quality=next((o for o in config.study.objectives if o in ("perplexity", "kl")), "accuracy"),
            )
        return gp
    return optuna.samplers.RandomSampler(seed=seed)


PRELIMINARY_SAMPLES = 512
"""Random points the GP sampler scores with its acquisition function before its local searches from
the best of them: BoTorch's usual ``raw_samples`` (Optuna's default is 2,048). Scoring them is most of a
proposal's time once a study holds hundreds of trials, since the expected hypervolume improvement
sums over every box of the front (``reports/bench/gp-time-*.md``)."""


def gp_sampler(seed: int, startup_trials: int, **kwargs: Any) -> optuna.samplers.GPSampler:
    """Optuna's GP sampler, scoring :data:`PRELIMINARY_SAMPLES` random points per proposal (an Optuna
    without that setting keeps its own)."""
    gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials, **kwargs)
    if hasattr(gp, "_n_preliminary_samples"):
        gp._n_preliminary_samples = PRELIMINARY_SAMPLES
    return gp


def _base_figures(study: optuna.Study) -> dict[str, Any] | None:
    """The base model's figures the study recorded (``None`` before it has), an image classifier's or a
    language model's."""
    if is_language_study(study):
        return dict(study.user_attrs[LANGUAGE_ATTR]["base"])
    record = StudyRecord.find(study)
    return record.base.to_dict() if record is not None else None


def sampler_seed(config: StudyConfig, trials: int, worker: int = 0) -> int:
    """The sampler's seed: moves on with the trial count (a resumed study does not replay its first
    proposals) and differs between workers (they do not propose the same policies)."""
    return (config.study.seed + trials + 7919 * worker) % 2**32


def worker_number(index: int | None) -> int:
    """What sets a worker's sampler seed apart (:func:`sampler_seed`): ``index + 1`` for the workers
    ``search --workers`` starts (0 is the search process), else a hash of the machine's name and the
    process ID (the containers of a cluster all run their worker as process 1; their names differ)."""
    if index is not None:
        return index + 1
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())


def free_name(storage: optuna.storages.BaseStorage, name: str) -> str:
    """``name-2``, ``name-3``...: the first that names no study in ``storage`` (``--new-study``)."""
    taken = set(optuna.get_all_study_names(storage=storage))
    return next(f"{name}-{i}" for i in range(2, 10_000) if f"{name}-{i}" not in taken)


def open_study(
    config: StudyConfig,
    storage: str | optuna.storages.BaseStorage,
    *,
    create: bool = True,
    worker: int = 0,
) -> optuna.Study:
    """Load the study, or create it (with ``create``) when it does not exist; its sampler's seed
    comes from :func:`sampler_seed`."""
    directions = [optuna.study.StudyDirection[OBJECTIVES[o].upper()] for o in config.study.objectives]
    shown = redact_url(storage) if isinstance(storage, str) else "its storage"
    if isinstance(storage, str):
        storage = make_storage(storage)
    try:
        study = optuna.load_study(study_name=config.study.name, storage=storage)
    except KeyError:
        if not create:
            raise AutopruneError(f"study {config.study.name!r} not found in {shown}") from None
        study = optuna.create_study(storage=storage, study_name=config.study.name, directions=directions)
    except ValueError as exc:
        raise ConfigError(f"study {config.study.name!r} cannot be opened: {exc}") from None
    if list(study.directions) != directions:
        raise ConfigError(
            f"study {config.study.name!r} in {shown} was created with other objectives; "
            "choose another study.name or storage, or pass --new-study"
        )
    study.sampler = make_sampler(config, sampler_seed(config, len(study.trials), worker))
    if study.metric_names is None:
        with warnings_to_debug(log):  # Optuna calls the method experimental
            study.set_metric_names(list(config.study.objectives))
    return study


def load_stored_study(
    storage: str, name: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.Study:
    """Open an existing study, never creating one; a missing one names the studies that exist.
    A worker gives the heartbeat settings it runs trials with (:func:`make_storage`)."""
    opened = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, create=False)
    try:
        return optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(storage=opened)
        raise AutopruneError(
            f"study {name!r} not found in {redact_url(storage)}; it holds: {', '.join(names) or 'no studies'}"
        ) from None


__all__ = [
    "budget_of",
    "free_name",
    "load_stored_study",
    "make_sampler",
    "open_study",
    "resolve_device",
    "sampler_seed",
    "worker_number",
]
