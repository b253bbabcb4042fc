"""The study: Optuna storage, sampler, baselines, resume, and rebuilding trials from storage."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune._logging import get_logger
from autoprune.basemodel import base_model, cache_path, cpu_state, load_state, new_model, save_atomic
from autoprune.budget import Budget
from autoprune.config import OBJECTIVES, StudyConfig, config_from_dict
from autoprune.data import load_data
from autoprune.errors import AutopruneError, ConfigError, TrialFailed, TrialsFailing
from autoprune.metrics import count_macs_params, latency_ms, measure, size_bytes
from autoprune.models import build_model
from autoprune.objective import TrialEvaluator, TrialResult, counts_toward_total
from autoprune.scorers import make_scorer
from autoprune.space import SearchSpace
from autoprune.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, make_storage, redact_url
from autoprune.surgery import PrunableGroup, Surgery, find_groups, rebuild

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
    """The folder of a study's name: next to a SQLite file (``runs/<name>.db`` → ``runs/<name>/``),
    else ``<runs_dir>/<name>/``. A study keeps its front's weights in a subfolder named by its ID
    (:func:`study_artifacts`)."""
    if storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///") :]).parent / study_name
    if storage.startswith("journal:///"):
        return Path(storage[len("journal://") :]).parent / study_name
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
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=config.study.startup_trials, **kwargs
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.study.startup_trials, **kwargs)
    return optuna.samplers.RandomSampler(seed=seed)


COMPARED = ("model", "data", "train", "space", "budget")
"""Sections that define what a study's trials mean: a stored study whose values differ is refused."""


def search_space_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys (``space.ratio_max``, ``study.objectives``) whose values differ between a stored
    study's settings and a new study file's: trials made under one are not comparable to the other."""
    differ = []
    for section in COMPARED:
        old, cur = stored.get(section, {}), new.get(section, {})
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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) across processes on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _trusted_checkpoint(config: StudyConfig) -> StudyConfig:
    """With ``--trust-checkpoint``: a checkpoint that needs full unpickling (a pickled model, a
    training checkpoint with other objects) is unpickled once and its state_dict written under
    ``runs/cache/``; the study then reads that file with ``weights_only=True`` like any other."""

    source = Path(config.model.checkpoint)
    if not source.is_file():
        raise ConfigError(f"checkpoint not found: {source}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = Path(config.study.runs_dir) / "cache" / f"trusted-{source.stem}-{digest}.pt"
    if not target.is_file():
        log.warning("--trust-checkpoint: unpickling %s in full (this runs any code the file holds)", source)
        obj = torch.load(source, map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        elif isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(obj.get(key), (dict, nn.Module)):
                    obj = obj[key]
                    break
            if isinstance(obj, nn.Module):
                obj = obj.state_dict()
        if not isinstance(obj, dict):
            raise ConfigError(f"checkpoint {source} holds a {type(obj).__name__}: no state_dict found in it")
        save_atomic({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, target)
    model = dataclasses.replace(config.model, checkpoint=str(target))
    return dataclasses.replace(config, model=model)


def _load_base(
    config: StudyConfig, data: Any, device: torch.device, base_checkpoint: Path | None, trust: bool
) -> tuple[nn.Module, Path]:
    if base_checkpoint is not None and base_checkpoint.is_file():
        model = new_model(config, data)
        load_state(model, base_checkpoint)
        return model.to(device).eval(), base_checkpoint
    if trust and config.model.checkpoint:
        config = _trusted_checkpoint(config)
    try:
        # one process trains (or reads) the cached base model at a time; the others then read it
        with file_lock(cache_path(config).with_suffix(".lock")):
            return base_model(config, data, device)
    except ConfigError as exc:
        if "cannot be read as weights" in str(exc):
            raise ConfigError(
                f"{exc}; if the file is your own full pickle (not a state_dict), pass --trust-checkpoint"
            ) from None
        raise


def prepare(
    config: StudyConfig,
    device: torch.device,
    *,
    base_checkpoint: Path | None = None,
    expected_base: dict[str, Any] | None = None,
    trust_checkpoint: bool = False,
) -> Prepared:
    """Load the data and the base model, measure it and find its groups.

    Args:
        config: The study's settings.
        device: Where trials run.
        base_checkpoint: A worker's base model: the study's recorded file, when this machine has it.
        expected_base: The study's recorded base figures; a base model that measures otherwise (a
            machine that trained its own) is refused.
        trust_checkpoint: Allow a ``model.checkpoint`` that needs full unpickling.
    """
    data = load_data(config.data).to(device)
    base, path = _load_base(config, data, device, base_checkpoint, trust_checkpoint)
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
    space = SearchSpace(
        config.space,
        [g.name for g in groups],
        search_finetune_steps="finetune_cost" in config.study.objectives,
    )
    budget = budget_of(config)
    resolved = budget.resolve(base_measurement.to_dict()) if budget else None
    if resolved is not None:
        log.info("budget (Optuna constraints): %s", resolved.describe_all())
    from autoprune.workers import OomRetryingEvaluator

    evaluator = OomRetryingEvaluator(
        config=config,
        data=data,
        base=base,
        base_measurement=base_measurement,
        space=space,
        device=device,
        budget=resolved,
    )
    return Prepared(evaluator, path, groups)


def check_budget_reachable(prepared: Prepared) -> None:
    """Refuse, before any trial, a budget that no policy of the space can meet: an accuracy floor
    above the base model's validation accuracy (pruning and a brief fine-tune do not add accuracy),
    or ``max_*`` limits that the base model pruned at ``space.ratio_max`` in every group (the
    smallest the space allows) does not fit, latency included (measured on the study's device as
    the trials measure it)."""
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
    # the space's own baseline at ratio_max, ranked by l1 (the channel counts decide the figures)
    policy = dataclasses.replace(ev.space.from_params(ev.space.baseline_params(cfg.ratio_max), seed=0), scorer="l1")
    model = copy_to_cpu(ev.base)
    example = ev.example_input.cpu()
    surgery = Surgery(model, example, policy, make_scorer("l1", seed=0), groups=ev.space.groups)
    for _ in range(surgery.steps):
        surgery.step()
    macs, params = count_macs_params(model, example)
    figures: dict[str, float] = {"macs": macs, "params": params, "size": size_bytes(model), "accuracy": 1.0}
    smallest = f"{macs:,} MACs, {params:,} params, {figures['size']:,} bytes"
    if "max_latency_ms" in limits:
        settings = ev.config.trial
        model.to(ev.device)
        batch = ev.data.val.x[: settings.latency_batch_size]
        figures["latency_ms"] = latency_ms(model, batch, repeats=settings.latency_repeats)
        smallest += f", {figures['latency_ms']:.3g} ms"
    broken = {k: v for k, v in ev.budget.violations(figures).items() if k in limits and v > 0}
    if broken:
        raise ConfigError(
            f"no policy in the space can meet {', '.join(ev.budget.describe(k) for k in broken)}: "
            f"pruned at space.ratio_max = {cfg.ratio_max} everywhere the model still has {smallest}; "
            "raise space.ratio_max or loosen the budget"
        )


def copy_to_cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


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


def _feasible(constraints: Sequence[float]) -> bool:
    return all(c <= 0 for c in constraints)


def may_join_front(study: optuna.Study, values: Sequence[float], constraints: Sequence[float]) -> bool:
    """Whether a trial with these objective values and budget violations can be on the study's
    front: it is feasible and no completed feasible trial dominates it. A trial dominated now is
    never on the front later; one that passes may still leave it when better trials come."""
    if not _feasible(constraints):
        return False
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    mine = [sign * v for sign, v in zip(signs, values, strict=True)]
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.values is None or not _feasible(_stored_constraints(other)):
            continue
        theirs = [sign * v for sign, v in zip(signs, other.values, strict=True)]
        if theirs != mine and all(t >= m for t, m in zip(theirs, mine, strict=True)):
            return False
    return True


class WeightKeeper:
    """Keeps the fine-tuned weights of front members only, each checked to load back.

    :meth:`keep` runs inside a trial, before it completes. When the trial can join the front
    (:func:`may_join_front`), it rebuilds the trial's architecture from what the trial stores (the
    base model and the removals surgery made), loads the fine-tuned weights into it, writes them
    as ``trial-<N>.pt`` (atomically) and records the file's sha256 in the trial (``weights_sha256``);
    weights that do not load back fail the trial with the reason. Called as an Optuna callback after
    every trial, it deletes the files of trials that are not on the front, so the folder never holds
    more files than the front has members.

    Args:
        folder: The study's artifacts folder (:func:`study_artifacts`).
        base: The base model, copied to the CPU once for the rebuilds.
        example_input: One input batch for torch-pruning's tracing.
    """

    def __init__(self, folder: Path, base: nn.Module, example_input: torch.Tensor) -> None:
        self.folder = folder
        self._base = copy_to_cpu(base)
        self._example = example_input[:1].cpu()

    def keep(self, trial: optuna.Trial, result: TrialResult, values: Sequence[float]) -> None:
        """Save the trial's weights when it can join the front, checked to load into its rebuilt model.

        Raises:
            TrialFailed: the weights do not load into the architecture rebuilt from the trial's record.
        """
        if result.model is None or not may_join_front(trial.study, values, trial.user_attrs.get("constraints", [])):
            return
        state = cpu_state(result.model)
        skeleton = rebuild(copy.deepcopy(self._base), self._example, result.kept, result.removed)
        try:
            skeleton.load_state_dict(state)
        except Exception as exc:  # RuntimeError for shapes; layers' own checks raise others
            reason = " ".join(str(exc).split())
            raise TrialFailed(f"its weights do not load into the model rebuilt from its record: {reason}") from None
        path = weight_path(self.folder, trial.number)
        save_atomic(state, path)
        trial.set_user_attr("weights_sha256", hashlib.sha256(path.read_bytes()).hexdigest())

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Several workers share the folder: list the files first, then read the front from
        # storage, so a file another worker has just written for a trial on the front (written
        # before its trial completes) is never taken for a stale one.
        files = stored_weights(self.folder)
        if not files:
            return
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        on_front = set(front_numbers(study))  # after the running ones: a trial that completes between is in one
        for number, path in files.items():
            if number not in on_front and number not in running:
                path.unlink(missing_ok=True)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count toward the study's total (:func:`counts_toward_total`)."""
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]


def _free_name(storage: optuna.storages.BaseStorage, name: str) -> str:
    taken = set(optuna.get_all_study_names(storage=storage))
    return next(f"{name}-{i}" for i in range(2, 10_000) if f"{name}-{i}" not in taken)


def _stored_config(info: dict[str, Any]) -> dict[str, Any]:
    return dict(info.get("config", {}))


def _public_config(config: StudyConfig) -> dict[str, Any]:
    """The settings as stored in the study: the storage URL without its password."""
    data = config.to_dict()
    data["study"]["storage"] = redact_url(data["study"]["storage"])
    return data


def run_study(
    config: StudyConfig,
    *,
    storage: str | None = None,
    device: torch.device | None = None,
    workers: int = 1,
    new_study: bool = False,
    trust_checkpoint: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    verbose: bool = False,
) -> optuna.Study:
    """Run (or resume) the study until it holds ``config.study.trials`` completed trials.

    Everything that can be wrong with the input (storage, data, model, checkpoint, budget, a stored
    study of this name with another search space) is checked before the study is created or
    touched, the storage first, before a base model is trained. With ``workers`` > 1 the trials run
    in that many ``autoprune worker`` processes.

    Raises:
        TrialsFailing: the last ``study.max_failures`` trials, or every baseline, failed.
    """
    from autoprune.workers import GuardedObjective, StopRequest, failing, spawn_workers, work, worker_name

    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    storage = storage or storage_url(config)
    device = device or resolve_device(config.study.device)
    opened = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    name = config.study.name
    if name in optuna.get_all_study_names(storage=opened):
        info = optuna.load_study(study_name=name, storage=opened).user_attrs.get(STUDY_ATTR)
        differ = search_space_differences(_stored_config(info), config.to_dict()) if info else []
        if differ and not new_study:
            raise ConfigError(
                f"study {name!r} in {redact_url(storage)} exists with another search space "
                f"(differs in {', '.join(differ)}); use its settings, another study.name, or --new-study"
            )
        if differ:
            name = _free_name(opened, name)
            log.info("study %r differs in %s: creating study %r", config.study.name, ", ".join(differ), name)
            config = dataclasses.replace(config, study=dataclasses.replace(config.study, name=name))
    prepared = prepare(config, device, trust_checkpoint=trust_checkpoint)
    check_budget_reachable(prepared)
    study = open_study(config, opened)
    info = study.user_attrs.get(STUDY_ATTR)
    if info is None:
        study_id = uuid.uuid4().hex[:12]
        info = prepared.study_info(artifacts_dir(storage, name, config.study.runs_dir) / study_id)
        info["study_id"] = study_id
        info["config"] = _public_config(config)
        study.set_user_attr(STUDY_ATTR, info)
        for ratio in config.study.baselines:
            study.enqueue_trial(
                prepared.evaluator.space.baseline_params(ratio), user_attrs={"baseline": ratio}, skip_if_exists=True
            )
    elif info["config"]["study"] != _public_config(config)["study"]:
        # trial count, timeout, sampler...: this run's, for the workers that join later
        info["config"] = {**info["config"], "study": _public_config(config)["study"]}
        study.set_user_attr(STUDY_ATTR, info)
    completed = len(finished(study))
    remaining = config.study.trials - completed
    if remaining <= 0:
        log.info("study %r already holds %d completed trials", name, completed)
        return study
    log.info("study %r: running %d trial(s) in %s with %d worker(s)", name, remaining, redact_url(storage), workers)
    start = time.perf_counter()
    if workers > 1:
        # the base model is cached and the study holds its settings: the workers only read them
        code = spawn_workers(
            storage,
            name,
            workers,
            device,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            trust_checkpoint=trust_checkpoint,
            verbose=verbose,
        )
        if code == 130 or code < 0:
            raise KeyboardInterrupt
        study = optuna.load_study(study_name=name, storage=opened)
        why = failing(study.get_trials(deepcopy=False), config.study.max_failures)
        if why:
            raise TrialsFailing(f"study {name!r} stopped: {why}")
        if code != 0:
            raise AutopruneError(f"a worker of study {name!r} exited with status {code}; see its output above")
    else:
        evaluator = prepared.evaluator
        keeper = WeightKeeper(study_artifacts(study, storage), evaluator.base, evaluator.example_input)
        with StopRequest() as stop:
            work(
                study,
                GuardedObjective(evaluator, config.study.trials, worker_name(), keeper),
                target=config.study.trials,
                max_failures=config.study.max_failures,
                timeout=config.study.timeout or None,
                callbacks=[keeper],
                stop=stop,
            )
    log.info("study %r: %d completed trials, %.1fs this run", name, len(finished(study)), time.perf_counter() - start)
    return study


def study_info(study: optuna.Study) -> dict[str, Any]:
    """The settings and base-model figures a study was created with."""
    info = study.user_attrs.get(STUDY_ATTR)
    if info is None:
        raise AutopruneError(f"study {study.study_name!r} was not made by autoprune (no {STUDY_ATTR!r} attribute)")
    return dict(info)


def load_stored_study(storage: str, name: str) -> optuna.Study:
    """Open an existing study, never creating one; a missing one names the studies that exist."""
    opened = make_storage(storage, heartbeat_interval=None, create=False)
    try:
        return optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(storage=opened)
        raise AutopruneError(
            f"study {name!r} not found in {redact_url(storage)}; it holds: {', '.join(names) or 'no studies'}"
        ) from None


def study_artifacts(study: optuna.Study, storage: str | None = None) -> Path:
    """The folder holding a study's front weights: the one recorded at creation, else the one derived
    from the storage; either way keyed by the study's ID, so two stores holding studies of one name
    never share a folder (studies made before IDs were recorded use the folder of their name)."""
    info = study_info(study)
    recorded = info.get("artifacts")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    runs_dir = info["config"]["study"].get("runs_dir", "runs")
    if storage is None:
        storage = info["config"]["study"].get("storage") or f"sqlite:///{Path(runs_dir) / study.study_name}.db"
    folder = artifacts_dir(storage, study.study_name, runs_dir)
    return folder / info["study_id"] if "study_id" in info else folder


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
    """The non-dominated completed trials (Optuna's ``best_trials``), by trial number."""
    numbers = set(front_numbers(study))
    return [t for t in study.get_trials(deepcopy=False) if t.number in numbers]


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
    attrs = trials[0].user_attrs
    return rebuild(model, torch.zeros(shape["example_input"]), attrs["kept"], attrs.get("removed"))


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
    "check_budget_reachable",
    "front",
    "front_numbers",
    "front_rows",
    "load_stored_study",
    "may_join_front",
    "open_study",
    "prepare",
    "rebuild_trial",
    "resolve_device",
    "run_study",
    "search_space_differences",
    "storage_url",
    "stored_weights",
    "study_artifacts",
    "study_info",
    "weight_path",
]
