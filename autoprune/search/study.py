"""The study: Optuna storage, sampler, baselines, resume, and rebuilding trials from storage."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autoprune._logging import get_logger, redact_url, warnings_to_debug
from autoprune.budget import Budget
from autoprune.config import OBJECTIVES, StudyConfig, baseline_share
from autoprune.data import DataSplits, load_data
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models import build_model
from autoprune.scorers import make_scorer
from autoprune.search.basemodel import load_base, load_state
from autoprune.search.front import measured, stored_constraints
from autoprune.search.gaps import GapSampler
from autoprune.search.storage import make_storage
from autoprune.search.switch import SwitchSampler
from autoprune.trial.allocation import Allocator
from autoprune.trial.cost import CostModel
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.metrics import count_macs_params, latency_ms, measure, size_bytes
from autoprune.trial.sensitivity import Sensitivity
from autoprune.trial.space import SearchSpace
from autoprune.trial.sparsity import LampReference, WeightMasks, nonzero_macs, sparse_layers
from autoprune.trial.surgery import PrunableGroup, Removal, Surgery, TracedModel, rebuild

log = get_logger(__name__)

CHANCE_MARGIN = 0.05
"""A base model less than this above chance accuracy (1 / classes) gets a warning before the study."""

STUDY_ATTR = "autoprune"
"""The study user attribute holding the settings, base-model figures and groups."""


NOTICEABLE_COST_ERROR = 0.001
"""Relative error of the cost model above which a study warns that trials miss their targets: a
tenth of the 1 % a trial may miss its target by anyway (:data:`autoprune.trial.allocation.LANDING`);
below it (timm's DeiT-tiny: 0.006 %) the error changes no trial."""


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
        gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.study.startup_trials, **kwargs)
        if name == "gaps":
            return GapSampler(gp, config.space.target, budget_of(config), _base_figures)
        if name == "switch":
            return SwitchSampler(
                gp,
                figure=config.space.target,
                bands=[share for b in config.study.baselines if (share := baseline_share(b)) is not None],
                offset_max=config.space.offset_max,
                seed=seed,
                base_figures=_base_figures,
            )
        return gp
    return optuna.samplers.RandomSampler(seed=seed)


def _base_figures(study: optuna.Study) -> dict[str, Any] | None:
    """The base model's figures the study recorded (``None`` before it has)."""
    info = study.user_attrs.get(STUDY_ATTR)
    return info["base"] if info else None


COMPARED = ("model", "data", "train", "space", "sensitivity", "budget")
"""Sections that define what a study's trials mean: a stored study whose values differ is refused."""


def search_space_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys (``space.ratio_max``, ``study.objectives``) whose values differ between a stored
    study's settings and a new study file's: trials made under one are not comparable to the other."""
    differ = []
    defaults = StudyConfig().to_dict()  # a key a study was stored without had its default
    for section in COMPARED:
        old, cur = {**defaults[section], **stored.get(section, {})}, new.get(section, {})
        differ += [f"{section}.{k}" for k in sorted(set(old) | set(cur)) if old.get(k) != cur.get(k)]
    if list(stored.get("study", {}).get("objectives", [])) != list(new["study"]["objectives"]):
        differ.append("study.objectives")
    return differ


def sampler_seed(config: StudyConfig, trials: int, worker: int = 0) -> int:
    """The sampler's seed: moves on with the trial count (a resumed study does not replay its first
    proposals) and differs between workers (they do not propose the same policies)."""
    return (config.study.seed + trials + 7919 * worker) % 2**32


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


RESULT_CODE = ("trial", "search", "models", "scorers", "data.py", "config.py", "policy.py", "budget.py", "registry.py")
"""The parts of the package that decide a trial's result: what :func:`code_sha256` covers. Benchmarks,
reports, exports, the command line and logging do not: editing a table's format keeps stored runs."""


@functools.cache
def code_sha256() -> str:
    """sha256 of the source files that decide a trial's result (:data:`RESULT_CODE`: their paths in the
    package and their contents): what a study records of the code that ran it, and what ``compare`` reruns
    a stored run for when it changed."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in RESULT_CODE:
            digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass
class Prepared:
    """Everything a study needs before its first trial."""

    evaluator: TrialEvaluator
    base_path: Path
    groups: list[PrunableGroup]
    sensitivity: Sensitivity | None = None
    """The base model's sensitivity analysis (``allocation`` granularity)."""

    def study_info(self, artifacts: Path | None = None) -> dict[str, Any]:
        ev = self.evaluator
        return {
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity is not None else None,
            "config": ev.config.to_dict(),
            "base": ev.base_measurement.to_dict(),
            "base_checkpoint": str(self.base_path.resolve()),
            "base_sha256": hashlib.sha256(self.base_path.read_bytes()).hexdigest(),
            "code_sha256": code_sha256(),
            "artifacts": str(artifacts.resolve()) if artifacts is not None else None,
            "groups": {g.name: g.channels for g in self.groups},
            "data_shape": {
                "num_classes": ev.data.num_classes,
                "in_channels": ev.data.in_channels,
                "image_size": ev.data.image_size,
                "example_input": list(ev.example_input.shape),
            },
        }


def prepare(
    config: StudyConfig,
    device: torch.device,
    *,
    base_checkpoint: Path | None = None,
    expected_base: dict[str, Any] | None = None,
    trust_checkpoint: bool = False,
    sensitivity: Sensitivity | None = None,
) -> Prepared:
    """Load the data and the base model, measure it and find its groups.

    Args:
        config: The study's settings.
        device: Where trials run.
        base_checkpoint: A worker's base model: the study's recorded file, when this machine has it.
        expected_base: The study's recorded base figures; a base model that measures otherwise (a
            machine that trained its own) is refused.
        trust_checkpoint: Allow a ``model.checkpoint`` that needs full unpickling.
        sensitivity: The study's stored sensitivity analysis (``allocation`` granularity): a worker
            or a resumed study allocates from the analysis the study was made with, wherever it runs.
    """
    data = load_data(config.data).to(device)
    base, path = load_base(config, data, device, base_checkpoint, trust_checkpoint)
    example = data.val.x[:1]
    base_measurement = measure(base, example, data.val, config.data.batch_size)
    if "latency_ms" in config.study.objectives or config.budget.max_latency_ms != "":
        batch = data.val.x[: config.trial.latency_batch_size]
        base_measurement = dataclasses.replace(
            base_measurement, latency_ms=latency_ms(base, batch, repeats=config.trial.latency_repeats)
        )
    if expected_base is not None:
        got = base_measurement.to_dict()
        if (got["macs"], got["params"]) != (expected_base["macs"], expected_base["params"]) or abs(
            got["accuracy"] - expected_base["accuracy"]
        ) > 0.01:
            raise ConfigError(
                f"this machine's base model ({path}: val acc {got['accuracy']:.4f}, {got['params']:,} params) is not "
                f"the study's (val acc {expected_base['accuracy']:.4f}, {expected_base['params']:,} params); "
                f"copy the study's base checkpoint to {base_checkpoint or path}"
            )
    traced = TracedModel(base, example)
    groups = traced.groups
    log.info(
        "base model: val acc %.4f, %s MACs, %s params, %s bytes, %d prunable groups, device %s",
        base_measurement.accuracy,
        f"{base_measurement.macs:,}",
        f"{base_measurement.params:,}",
        f"{base_measurement.size:,}",
        len(groups),
        device,
    )
    chance = 1.0 / data.num_classes
    if base_measurement.accuracy < chance + CHANCE_MARGIN:
        log.warning(
            "base model: validation accuracy %.4f is at chance (%.4f for %d classes): pruning it and "
            "fine-tuning the copies measures nothing; train it longer (train.epochs, train.lr) or give a "
            "trained model.checkpoint",
            base_measurement.accuracy,
            chance,
            data.num_classes,
        )
    allocator = None
    if config.space.channels and config.space.granularity == "allocation":
        sensitivity, allocator = study_allocator(config, data, traced, path, device, stored=sensitivity)
    else:
        sensitivity = None
    layers = sparse_layers(base, config.space.kind, config.space.nm_pair[1])
    space = SearchSpace(
        config.space,
        [g.name for g in groups],
        search_finetune_steps="finetune_cost" in config.study.objectives,
        allocator=allocator,
        layers=layers,
        lamp=LampReference(base, list(layers)) if config.space.kind == "weights" else None,
    )
    budget = budget_of(config)
    resolved = budget.resolve(base_measurement.to_dict()) if budget else None
    if resolved is not None:
        log.info("budget (Optuna constraints): %s", resolved.describe_all())
    evaluator = TrialEvaluator(
        config=config,
        data=data,
        traced=traced,
        base_measurement=base_measurement,
        space=space,
        device=device,
        budget=resolved,
    )
    return Prepared(evaluator, path, groups, sensitivity)


def study_allocator(
    config: StudyConfig,
    data: DataSplits,
    traced: TracedModel,
    base_checkpoint: Path,
    device: torch.device,
    *,
    stored: Sensitivity | None = None,
    figure: str | None = None,
) -> tuple[Sensitivity, Allocator]:
    """The base model's sensitivity analysis (the study's ``stored`` one, else the cached one) and
    its allocator for ``figure`` (default ``space.target``): what the ``allocation`` granularity and
    the headroom benchmark allocate from."""
    from autoprune.search.sensitivity import cached_sensitivity, make_allocator

    amp = config.trial.amp and device.type == "cuda"
    sensitivity = stored or cached_sensitivity(config, data, traced, base_checkpoint, amp=amp)[0]
    cost = CostModel.fit(traced, seed=config.study.seed)
    if cost.max_error > NOTICEABLE_COST_ERROR:
        log.warning(
            "cost model: off by up to %.1f%% on this model (the kept counts alone do not decide its cost, as where "
            "a group spans a concatenation): trials land near their %s target, not on it",
            100 * cost.max_error,
            figure or config.space.target,
        )
    allocator = make_allocator(config, sensitivity, cost, figure=figure)
    low, high = allocator.bounds
    log.info(
        "allocation: targets from %.1f%% to %.1f%% of the base model's %s; least sensitive groups first: %s",
        100 * low,
        100 * high,
        allocator.figure,
        ", ".join(g for g, _v in sensitivity.ranking()[:3]),
    )
    return sensitivity, allocator


def check_budget_reachable(prepared: Prepared) -> None:
    """Refuse, before any trial, a budget that no policy of the space can meet: an accuracy floor
    above the base model's validation accuracy (pruning and a brief fine-tune do not add accuracy),
    or ``max_*`` limits that the base model pruned at ``space.ratio_max`` in every group, at
    ``space.sparsity_max`` in every layer or with N:M wherever it fits (the smallest the space allows)
    does not fit, latency included (measured on the study's device as the trials measure it). A
    threshold-mode study is not checked: what a threshold zeroes depends on the fine-tuned weights."""
    ev = prepared.evaluator
    if ev.budget is None:
        return
    floor = ev.budget.limits.get("min_accuracy")
    if floor is not None and floor > ev.base_measurement.accuracy:
        raise ConfigError(
            f"no policy can meet {ev.budget.describe('min_accuracy')}: the base model's validation accuracy is "
            f"{ev.base_measurement.accuracy:.4f}, and pruned models are expected below it; lower min_accuracy "
            "(e.g. 99% of the base model's)"
        )
    limits = {k: v for k, v in ev.budget.limits.items() if k.startswith("max_")}
    if not limits:
        return
    cfg = ev.config.space
    if cfg.kind == "weights" and cfg.sparsity_mode == "threshold":
        return  # what a threshold zeroes depends on the fine-tuned weights
    # the space's own baseline at ratio_max, ranked by l1 (the channel counts decide the figures), with
    # sparsity_max in every layer or N:M wherever it fits
    policy = dataclasses.replace(ev.space.from_params(ev.space.baseline_params(cfg.ratio_max), seed=0), scorer="l1")
    if policy.sparsity is not None:
        layers = dict.fromkeys(policy.sparsity.layers, cfg.sparsity_max)
        policy = dataclasses.replace(
            policy, sparsity=dataclasses.replace(policy.sparsity, layers=layers, ranking="layer", scorer="magnitude")
        )
    model, graph = ev.traced.copy("cpu")
    model.eval()
    example = ev.example_input.cpu()
    scorer = make_scorer("l1", seed=0)
    surgery = Surgery(model, example, policy, scorer, groups=ev.space.groups, graph=graph) if policy.ratios else None
    masks = WeightMasks(model, policy.sparsity, 1) if policy.sparsity is not None else None
    if surgery is not None:
        for _ in range(surgery.steps):
            surgery.step()
    if masks is not None:
        masks.step()
        masks.finish()
    macs, params = count_macs_params(model, example)
    figures: dict[str, float] = {
        "macs": macs,
        "nonzero_macs": nonzero_macs(model, example, macs),
        "params": params,
        "size": size_bytes(model),
        "accuracy": 1.0,
    }
    smallest = f"{macs:,} MACs ({figures['nonzero_macs']:,} of non-zero weights), {params:,} params, "
    smallest += f"{figures['size']:,} bytes"
    if "max_latency_ms" in limits:
        settings = ev.config.trial
        model.to(ev.device)
        batch = ev.data.val.x[: settings.latency_batch_size]
        figures["latency_ms"] = latency_ms(model, batch, repeats=settings.latency_repeats)
        smallest += f", {figures['latency_ms']:.3g} ms"
    broken = {k: v for k, v in ev.budget.violations(figures).items() if k in limits and v > 0}
    if broken:
        where = [f"space.ratio_max = {cfg.ratio_max} in every group"] if cfg.channels else []
        if cfg.kind == "weights":
            where.append(f"space.sparsity_max = {cfg.sparsity_max} in every layer")
        elif cfg.kind != "channels":
            where.append(f"{cfg.nm} on every layer that takes it")
        raise ConfigError(
            f"no policy in the space can meet {', '.join(ev.budget.describe(k) for k in broken)}: "
            f"pruned at {' and '.join(where)}, the model still has {smallest}; "
            "prune harder (space.ratio_max, space.sparsity_max) or loosen the budget"
        )


def stored_sensitivity(info: dict[str, Any] | None) -> Sensitivity | None:
    """The sensitivity analysis a study's :func:`study_info` holds, if any."""
    data = (info or {}).get("sensitivity")
    return Sensitivity.from_dict(data) if data else None


def study_info(study: optuna.Study) -> dict[str, Any]:
    """The settings and base-model figures a study was created with."""
    info = study.user_attrs.get(STUDY_ATTR)
    if info is None:
        raise AutopruneError(f"study {study.study_name!r} was not made by autoprune (no {STUDY_ATTR!r} attribute)")
    return dict(info)


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
    return build_model(
        model_info["name"],
        num_classes=model_info["num_classes"],
        in_channels=model_info["in_channels"],
        image_size=model_info["image_size"],
    )


def model_info(info: dict[str, Any]) -> dict[str, Any]:
    """What :func:`build_pruned` needs to know of a study's model, from its :func:`study_info`."""
    shape = info["data_shape"]
    return {
        "name": info["config"]["model"]["name"],
        "num_classes": shape["num_classes"],
        "in_channels": shape["in_channels"],
        "image_size": shape["image_size"],
    }


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
    info = study_info(study)
    path = Path(info["base_checkpoint"])
    if not path.is_file():
        raise AutopruneError(
            f"the base model of study {study.study_name!r} is not on this machine (expected at {path}); "
            "copy it there, or run without distillation"
        )
    model = _built(model_info(info))
    load_state(model, path)
    return model.eval()


def rebuild_trial(study: optuna.Study, number: int, *, base_weights: bool = True) -> nn.Module:
    """The pruned architecture of trial ``number``, rebuilt from the stored study alone (on the CPU).

    The structure (every layer's channel count) is exactly the trial's; the weights are the base
    model's surviving channels (``base_weights``; needs the study's base checkpoint on this machine),
    else freshly initialized ones, for loading the trial's own. A trial's zeroed weights (weight-level
    sparsity) are in its own weights only: :func:`autoprune.results.export.trial_model` loads them.
    """
    info = study_info(study)
    attrs = stored_trial(study, number).user_attrs
    checkpoint = Path(info["base_checkpoint"]) if base_weights else None
    shape = info["data_shape"]["example_input"]
    return build_pruned(model_info(info), shape, attrs["kept"], attrs.get("removed"), base_checkpoint=checkpoint)


__all__ = [
    "COMPARED",
    "Prepared",
    "STUDY_ATTR",
    "budget_of",
    "build_pruned",
    "check_budget_reachable",
    "load_stored_study",
    "make_sampler",
    "model_info",
    "open_study",
    "prepare",
    "rebuild_trial",
    "resolve_device",
    "sampler_seed",
    "search_space_differences",
    "stored_base",
    "stored_sensitivity",
    "stored_trial",
    "study_allocator",
    "study_info",
]
