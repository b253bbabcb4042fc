"""Running a study: ``run_study`` prepares it (storage, base model, checks, baselines) and runs its
trials in this process or in ``autoprune worker`` processes; ``run_worker`` is one such worker."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from autoprune._logging import get_logger, prefix_logs, redact_url
from autoprune.config import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, StudyConfig
from autoprune.errors import AutopruneError, ConfigError, TrialsFailing
from autoprune.search.artifacts import BASE_KEY, Artifacts
from autoprune.search.front import finished
from autoprune.search.keeper import WeightKeeper
from autoprune.search.loop import GuardedObjective, StopRequest, failing, spawn_workers, work, worker_name
from autoprune.search.opening import (
    free_name,
    load_stored_study,
    make_sampler,
    open_study,
    resolve_device,
    sampler_seed,
    worker_number,
)
from autoprune.search.paths import lock_folder, storage_url, study_artifacts, study_url
from autoprune.search.prepare import prepare
from autoprune.search.progress import LABELS, study_progress
from autoprune.search.promotion import Promotion
from autoprune.search.rebuild import base_file
from autoprune.search.record import StudyRecord, public_settings, settings_differences
from autoprune.search.storage import make_storage
from autoprune.trial.evaluate import TrialEvaluator

log = get_logger(__name__)


REFRESHED = ("study", "fidelity")
"""Sections a resumed study takes from this run's settings (the others must match the stored ones)."""


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
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> optuna.Study:
    """Run (or resume) the study until it holds ``config.study.trials`` completed trials.

    Everything that can be wrong with the input (storage, data, model, checkpoint, budget, a stored
    study of this name with another search space) is checked before the study is created or
    touched, the storage first, before a base model is trained. With ``workers`` > 1 the trials run
    in that many ``autoprune worker`` processes; with 0 the study is made ready (base model, record,
    baselines) and its trials are left to workers started elsewhere. ``callbacks`` are called after each trial, as
    Optuna's ``optimize`` calls them, in this process: with one worker only.

    Raises:
        TrialsFailing: the last ``study.max_failures`` trials, or every baseline, failed.
    """
    if workers < 0:
        raise ConfigError(f"--workers {workers}: a count of 0 or more")
    if callbacks and workers > 1:
        raise ConfigError("run_study: callbacks run in this process, so they need workers=1")
    storage = storage or storage_url(config)
    device = device or resolve_device(config.study.device)
    opened = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    name = config.study.name
    if config.study.artifacts:
        Artifacts(config.study.artifacts).check_writable()
    stored: StudyRecord | None = None
    base: Path | None = None
    if name in optuna.get_all_study_names(storage=opened):
        existing = optuna.load_study(study_name=name, storage=opened)
        found = StudyRecord.find(existing)
        differ = settings_differences(found.config, config) if found is not None else []
        if differ and not new_study:
            raise ConfigError(
                f"study {name!r} in {redact_url(storage)} exists with another search space "
                f"(differs in {', '.join(differ)}); use its settings, another study.name, or --new-study"
            )
        if differ:
            name = free_name(opened, name)
            log.info("study %r differs in %s: creating study %r", config.study.name, ", ".join(differ), name)
            config = dataclasses.replace(config, study=dataclasses.replace(config.study, name=name))
        elif found is not None:
            stored = found
            if config.study.artifacts and found.artifacts != study_url(config, storage, found.study_id or ""):
                log.warning(
                    "study %r keeps its artifacts where it was made to (%s): study.artifacts %s is not used",
                    name,
                    found.artifacts,
                    config.study.artifacts,
                )
            base = base_file(found, study_artifacts(existing, storage))
    prepared = prepare(
        config,
        device,
        base_checkpoint=base,
        trust_checkpoint=trust_checkpoint,
        sensitivity=stored.sensitivity if stored is not None else None,
        latency_model=stored.latency_model if stored is not None else None,
        check_budget=True,
    )
    study = open_study(config, opened)
    record = StudyRecord.find(study)
    if record is None:
        study_id = uuid.uuid4().hex[:12]
        url = study_url(config, storage, study_id)
        if config.study.artifacts:
            Artifacts(url).put(BASE_KEY, prepared.base_path.read_bytes())
        record = prepared.record(config, artifacts=url, study_id=study_id, base_in_store=bool(config.study.artifacts))
        record.save(study)
        for ratio in config.study.baselines:
            for params in prepared.evaluator.space.baselines(ratio):
                study.enqueue_trial(params, user_attrs={"baseline": ratio}, skip_if_exists=True)
    else:
        # trial count, timeout, sampler, promotion...: this run's, for the workers that join later
        refreshed = dataclasses.replace(record.config, **{k: getattr(public_settings(config), k) for k in REFRESHED})
        if refreshed != record.config:
            dataclasses.replace(record, config=refreshed).save(study)
    completed = len(finished(study))
    remaining = config.study.trials - completed
    if remaining <= 0 and config.fidelity.rungs == 1:
        log.info("study %r already holds %d completed trials", name, completed)
        return study
    if workers == 0:
        log.info(
            "study %r is ready in %s: start `autoprune worker --storage URL --study %s` on each machine",
            name,
            redact_url(storage),
            name,
        )
        return study
    log.info(
        "study %r: running %s in %s with %d worker(s)",
        name,
        f"{remaining} trial(s)" if remaining > 0 else "what is left of its promotions",
        redact_url(storage),
        workers,
    )
    start = time.perf_counter()
    if workers > 1:
        # the base model is cached and the study holds its settings: the workers only read them
        with study_progress(study, config.study.trials, *_progress_figures(prepared.evaluator)) as progress:
            code = spawn_workers(
                storage,
                name,
                workers,
                device,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                trust_checkpoint=trust_checkpoint,
                verbose=verbose,
                quiet=progress.bar is not None,
                on_poll=progress.refresh,
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
        _run_trials(
            study, storage, config, prepared.evaluator, worker_name(), study_artifacts(study, storage), callbacks
        )
    log.info("study %r: %d completed trials, %.1fs this run", name, len(finished(study)), time.perf_counter() - start)
    return study


def run_worker(
    storage: str,
    study_name: str,
    *,
    device: str | None = None,
    threads: int = 0,
    index: int | None = None,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    trust_checkpoint: bool = False,
    artifacts: str = "",
) -> optuna.Study:
    """Join the stored study ``study_name`` and run its trials until it holds its trial count.

    Args:
        storage: The study's storage URL.
        study_name: The study's name in it.
        device: Where this worker's trials run (default: the study's ``study.device``).
        threads: Torch CPU threads (0: torch's choice).
        index: The worker's index among those ``search --workers`` started (its logs carry it and
            its sampler's seed differs from its siblings'); ``None`` for a worker started by hand.
        artifacts: This machine's address of the store the study was made with (a shared mount at
            another path); empty: the recorded one.

    Raises:
        TrialsFailing: the study's trials keep failing (``study.max_failures``).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if index is not None:
        prefix_logs(f"[worker {index}] ")
    study = load_stored_study(storage, study_name, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    record = StudyRecord.from_study(study)
    config = record.config
    store = study_artifacts(study, storage, url=artifacts)
    store.check_writable()
    prepared = prepare(
        config,
        resolve_device(device or config.study.device),
        base_checkpoint=base_file(record, store),
        expected_base=record.base,
        trust_checkpoint=trust_checkpoint,
        sensitivity=record.sensitivity,
        latency_model=record.latency_model,
    )
    study.sampler = make_sampler(config, sampler_seed(config, len(study.trials), worker_number(index)))
    name = worker_name(index)
    log.info(
        "worker %s joined study %r in %s (%d of %d trials completed)",
        name,
        study_name,
        redact_url(storage),
        len(finished(study)),
        config.study.trials,
    )
    _run_trials(study, storage, config, prepared.evaluator, name, store, progress=index is None)
    return study


def _progress_figures(evaluator: TrialEvaluator) -> tuple[float, bool, str]:
    """What :func:`study_progress` needs of the study: the base model's figure, whether it has a budget,
    and which figure it follows: the first of the objectives' MACs or parameters, MACs if none (those
    of non-zero weights when trials zero weights)."""
    config = evaluator.config
    figure = next((o for o in config.study.objectives if o in LABELS), "macs")
    if figure == "macs" and config.space.kind != "channels":
        figure = "nonzero_macs"
    return float(getattr(evaluator.base_measurement, figure)), evaluator.budget is not None, figure


def _run_trials(
    study: optuna.Study,
    storage: str,
    config: StudyConfig,
    evaluator: TrialEvaluator,
    name: str,
    artifacts: Artifacts,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    *,
    progress: bool = True,
) -> None:
    """This process's share of the study's trials, until the study holds its trial count, its
    timeout passes or a signal asks it to stop; the weight keeper saves what may join the front.
    With ``progress`` (not for a worker that ``search --workers`` started: the search shows it) the
    study's progress is shown (:func:`study_progress`)."""
    promotion = (
        Promotion(
            config.fidelity,
            config.study.objectives,
            evaluator.base_measurement.to_dict(),
            artifacts,
            lock_folder(study, artifacts, storage),
            config.study.trials,
            config.levels,
        )
        if config.fidelity.rungs > 1
        else None
    )
    keeper = WeightKeeper(artifacts, evaluator.traced, promotion)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(StopRequest())
        shown = []
        if progress:
            shown.append(
                stack.enter_context(study_progress(study, config.study.trials, *_progress_figures(evaluator))).callback
            )
        work(
            study,
            GuardedObjective(evaluator, config.study.trials, name, keeper, promotion),
            target=config.study.trials,
            max_failures=config.study.max_failures,
            timeout=config.study.timeout or None,
            callbacks=[keeper, *callbacks, *shown],
            stop=stop,
        )


__all__ = ["run_study", "run_worker"]
