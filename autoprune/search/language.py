"""Language studies: a causal language model from a local checkpoint (``model.name = "hf:FOLDER"``),
pruned in width layer by layer on local text (``data.name = "text"``) and judged by perplexity.

Preparing one (:func:`prepare_language`): the text's blocks, split by document; calibration blocks
drawn from the training split with ``study.seed`` (``language.calibration_blocks``); every head and
channel scored on them (``language.scorer``); the sensitivity analysis (each group pruned alone at
``sensitivity.ratios``) and the decoder's exact cost model, from which the allocator of
``space.target`` (parameters or MACs per token) is built, as for an ``allocation`` study of an image
classifier.

A trial samples a ``target`` share of that figure (log-uniform over what the allocator reaches), a
``mix`` between uniform pruning (0) and the one-shot allocation (1) and an ``offset`` per group in
``±space.offset_max``; :meth:`~autoprune.trial.allocation.Allocator.solve` turns them into kept
heads and channels. The base model is cut to them (:func:`~autoprune.trial.decoder.cut`), fine-tuned
for ``language.recovery_steps`` steps and measured: validation perplexity, next-token accuracy, the
KL divergence to the base model's next-token distribution on the calibration blocks (EvoPress's
score), parameters and MACs per token. The study minimizes ``study.objectives`` (``perplexity`` or
``kl``, and ``params`` or ``macs``). Its baselines, enqueued first: uniform pruning and the one-shot
allocation at each ``study.baselines`` share (a ratio ``r`` is the share ``1 - r``).

A trial keeps no weights: the report and the export (:mod:`autoprune.results.language`) replay it
from the base model (:func:`replay`: the cut is decided by the scores, the recovery by the trial's
seed), so a study of a 1 B-parameter model does not store a copy of it per trial.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from autoprune._code import code
from autoprune._logging import get_logger
from autoprune._progress import TRIAL_LINES, progress_bar
from autoprune.config import StudyConfig, baseline_share, config_from_dict
from autoprune.errors import ConfigError, TrialFailed, TrialsFailing
from autoprune.models._hf import build_hf, load_tokenizer
from autoprune.search.loop import failing
from autoprune.search.opening import budget_of, free_name, open_study
from autoprune.search.paths import storage_url
from autoprune.search.record import LANGUAGE_ATTR as RECORD
from autoprune.search.record import is_language_study, public_settings, settings_differences
from autoprune.search.storage import make_storage
from autoprune.text import TextSplits, load_text
from autoprune.trial import decoder
from autoprune.trial.allocation import Allocator
from autoprune.trial.evaluate import free_cuda
from autoprune.trial.language import (
    REFERENCE_BYTES_MAX,
    activation_scores,
    analyse_decoder,
    calibration_kl,
    loss_and_accuracy,
    recover,
    reference_log_probs,
    spaced,
)
from autoprune.trial.sensitivity import Sensitivity

log = get_logger(__name__)
trial_log = get_logger(TRIAL_LINES)

LANGUAGE_FIGURES = ("perplexity", "params", "macs")
"""A language trial's figures a budget or a pick reads."""
BASELINE_MIXES = {"uniform": 0.0, "allocation": 1.0}
"""The baselines' ``mix``: uniform pruning and the one-shot allocation."""


@dataclass
class LanguageStudy:
    """What a language study's trials, its report and its export need, prepared once.

    Attributes:
        config: The study's settings.
        base: The base model, on the study's device.
        tokenizer: The checkpoint's tokenizer.
        text: The text's blocks, split by document.
        val: The validation blocks a trial is measured on (``language.eval_blocks``).
        calibration: The training blocks the scores, the sensitivity analysis and the KL look at.
        scores: Each group's units, scored on the calibration blocks.
        reference: The base model's next-token log-probabilities on the calibration blocks, or ``None``
            where they take too much memory to keep (:func:`~autoprune.trial.language.reference_log_probs`).
        base_figures: The base model's figures, as a trial records its own.
        sensitivity: The sensitivity analysis (``None`` when prepared for a replay only).
        allocator: The allocator of ``space.target`` (with the analysis).
    """

    config: StudyConfig
    base: Any
    tokenizer: Any
    text: TextSplits
    val: torch.Tensor
    calibration: torch.Tensor
    scores: dict[str, torch.Tensor]
    reference: torch.Tensor | None
    base_figures: dict[str, float]
    sensitivity: Sensitivity | None = None
    allocator: Allocator | None = None

    def measure(self, model: Any) -> dict[str, float]:
        """A model's figures: validation perplexity and next-token accuracy, KL to the base model on the
        calibration blocks, parameters, and MACs per token (linear layers)."""
        batch = self.config.data.batch_size
        nll, accuracy = loss_and_accuracy(model, self.val, batch)
        return {
            "perplexity": math.exp(nll),
            "accuracy": accuracy,
            "kl": calibration_kl(
                model, base=self.base, blocks=self.calibration, reference=self.reference, batch_size=batch
            ),
            "params": float(sum(p.numel() for p in model.parameters())),
            "macs": float(decoder.decoder_counts(model)[0]),
        }

    def pruned(self, kept: dict[str, int], seed: int) -> Any:
        """The base model cut to ``kept`` units per group and fine-tuned for ``language.recovery_steps``
        steps with batches drawn by ``seed``: a trial's model, and its replay."""
        model = decoder.cut(copy.deepcopy(self.base), decoder.choose(self.base, kept, self.scores))
        settings = self.config.language
        recover(
            model,
            self.text.train,
            settings.recovery_steps,
            batch=self.config.data.batch_size,
            lr=settings.recovery_lr,
            seed=seed,
        )
        return model


def prepare_language(config: StudyConfig, device: torch.device, *, analyse: bool = True) -> LanguageStudy:
    """Load the base model, its tokenizer and the text, draw the calibration blocks and score every
    unit; with ``analyse``, run the sensitivity analysis and build the allocator (a replay needs neither)."""
    started = time.perf_counter()
    torch.manual_seed(config.study.seed)
    base = build_hf(config.model.name).to(device).eval()
    tokenizer = load_tokenizer(config.model.name)
    data = config.data
    positions = getattr(base.config, "max_position_embeddings", None)
    if positions is not None and data.block > positions:
        log.warning(
            "data.block = %d tokens is longer than the %d positions %s was trained for: perplexity past them "
            "measures extrapolation, not pruning",
            data.block,
            positions,
            config.model.name,
        )
    text = load_text(
        data.files,
        tokenizer,
        block=data.block,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
        exclude=data.exclude,
    )
    settings = config.language
    generator = torch.Generator().manual_seed(config.study.seed)
    calibration = text.train[torch.randperm(len(text.train), generator=generator)[: settings.calibration_blocks]]
    batch = data.batch_size
    if settings.scorer == "activation":
        scores = activation_scores(base, calibration, batch)
    else:
        scores = decoder.magnitude_scores(base)
    study = LanguageStudy(
        config=config,
        base=base,
        tokenizer=tokenizer,
        text=text,
        val=spaced(text.val, settings.eval_blocks),
        calibration=calibration,
        scores=scores,
        reference=reference_log_probs(base, calibration, batch),
        base_figures={},
    )
    if study.reference is None:
        log.info(
            "the base model's log-probabilities on the calibration blocks take over %d MiB: every trial's KL runs "
            "the base model again instead of keeping them",
            REFERENCE_BYTES_MAX >> 20,
        )
    study.base_figures = study.measure(base)
    log.info(
        "base model: %s params, %s MACs per token, validation perplexity %.3f (%d of %d blocks of %d tokens), "
        "%d calibration blocks, device %s",
        f"{int(study.base_figures['params']):,}",
        f"{int(study.base_figures['macs']):,}",
        study.base_figures["perplexity"],
        len(study.val),
        len(text.val),
        data.block,
        len(calibration),
        device,
    )
    if analyse:
        study.sensitivity = analyse_decoder(
            base, calibration, scores, scorer=settings.scorer, ratios=config.sensitivity.ratios, batch_size=batch
        )
        cost = decoder.decoder_cost(base, seed=config.study.seed)
        study.allocator = Allocator(
            study.sensitivity, cost, figure=config.space.target, ratio_max=config.space.ratio_max
        )
        low, high = study.allocator.bounds
        log.info(
            "allocation: targets from %.1f%% to %.1f%% of the base model's %s; least sensitive groups first: %s "
            "(prepared in %.0fs)",
            100 * low,
            100 * high,
            config.space.target,
            ", ".join(g for g, _v in study.sensitivity.ranking()[:3]),
            time.perf_counter() - started,
        )
    return study


def stored_config(study: optuna.Study) -> StudyConfig:
    """A stored language study's settings."""
    return config_from_dict(study.user_attrs[RECORD]["config"])


def _baselines(config: StudyConfig, allocator: Allocator) -> list[tuple[str, dict[str, float]]]:
    """The baseline trials' labels and parameters: uniform pruning and the one-shot allocation at each
    ``study.baselines`` share, at the largest target where both land at or under it."""
    low, high = allocator.bounds
    trials = []
    for baseline in config.study.baselines:
        share = baseline_share(baseline)
        share = share if share is not None else 1.0 - float(baseline)
        if not low <= share < 1.0:
            continue  # the base model itself, or below what the allocator reaches
        target = min(high, max(low, allocator.target_at_most(share, tuple(BASELINE_MIXES.values()))))
        for label, mix in BASELINE_MIXES.items():
            params = {"target": target, "mix": mix, **{f"offset.{g}": 0.0 for g in allocator.groups}}
            trials.append((f"{label} {100 * share:g}%", params))
    return trials


def _measured(prepared: LanguageStudy, kept: dict[str, int], seed: int) -> tuple[Any, dict[str, float]]:
    """A trial's model and its figures.

    Raises:
        TrialFailed: CUDA ran out of memory (the memory is handed back first).
    """
    model = None
    try:
        model = prepared.pruned(kept, seed)
        return model, prepared.measure(model)
    except torch.cuda.OutOfMemoryError:
        pass  # outside the handler, the failed frames are gone and their memory can be freed
    del model
    free_cuda()
    raise TrialFailed(
        f"CUDA out of memory at batch size {prepared.config.data.batch_size} (a smaller data.batch_size needs "
        "--new-study: the batch is a setting of the study)"
    )


REPEATS_MAX = 100
"""Proposals in a row that repeat a measured model after which a study stops short of its trial count:
its sampler has nothing new to propose (a small model's few widths, all measured)."""


def _repeat_of(trial: optuna.Trial, kept: dict[str, int]) -> int | None:
    """An earlier completed trial, not a baseline's twin, that kept the same units: without a recovery
    fine-tune its figures are this trial's (a level switch that lands on its pick's widths, as the
    coarse steps of whole heads often do)."""
    if "baseline" in trial.user_attrs:
        return None
    done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t.number for t in done if t.user_attrs.get("kept") == kept), None)


def _repeats_in_a_row(study: optuna.Study) -> int:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return sum(1 for _ in itertools.takewhile(lambda t: "repeat_of" in t.user_attrs, reversed(trials)))


def _objective(prepared: LanguageStudy, bar: Any) -> Any:
    config = prepared.config
    allocator = prepared.allocator
    assert allocator is not None, "a search needs the allocator"
    bound = config.space.offset_max
    budget = budget_of(config)
    resolved = budget.resolve(prepared.base_figures) if budget else None

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        started = time.perf_counter()
        target = trial.suggest_float("target", *allocator.bounds, log=True)
        mix = trial.suggest_float("mix", 0.0, 1.0)
        offsets = {g: trial.suggest_float(f"offset.{g}", -bound, bound) for g in allocator.groups}
        kept = allocator.solve(target, mix, offsets)
        repeat = _repeat_of(trial, kept) if config.language.recovery_steps == 0 else None
        if repeat is not None:  # the same model measures the same: the sampler proposes again instead
            trial.set_user_attr("repeat_of", repeat)
            trial_log.info("trial %4d  the model of trial %d again: not measured again", trial.number, repeat)
            raise optuna.TrialPruned(f"the model of trial {repeat} again")
        seed = config.study.seed + trial.number
        try:
            model, figures = _measured(prepared, kept, seed)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        trial.set_user_attr("kept", kept)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("widths", dataclasses.asdict(decoder.widths(model)))
        for name, value in figures.items():
            trial.set_user_attr(name, value)
        note = ""
        if resolved is not None:  # Optuna's samplers read the constraints; its front keeps feasible trials only
            violations = resolved.violations(figures)
            trial.set_user_attr("constraints", list(violations.values()))
            for key, value in violations.items():
                trial.set_constraint(key, value)
            broken = [k for k, v in violations.items() if v > 0]
            note = f"  infeasible ({', '.join(broken)})" if broken else ""
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", round(seconds, 3))
        base = prepared.base_figures
        line = (
            f"trial {trial.number:>4}  mix {mix:.2f}  params {100 * figures['params'] / base['params']:5.1f}%  "
            f"MACs {100 * figures['macs'] / base['macs']:5.1f}%  perplexity {figures['perplexity']:.3f}  "
            f"KL {figures['kl']:.4f}  {seconds:.1f}s{note}"
        )
        trial_log.info("%s", line)
        if bar is not None:
            bar.set_postfix_str(f"last: perplexity {figures['perplexity']:.3f}", refresh=False)
            bar.update(1)
        return tuple(figures[o] for o in config.study.objectives)

    return objective


def _completed(study: optuna.Study) -> int:
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def run_language_study(
    config: StudyConfig, *, storage: str | None = None, device: torch.device, new_study: bool = False
) -> optuna.Study:
    """Run (or resume) a language study until it holds ``study.trials`` completed trials."""
    storage = storage or storage_url(config)
    opened = make_storage(storage)
    name = config.study.name
    if name in optuna.get_all_study_names(storage=opened):
        existing = optuna.load_study(study_name=name, storage=opened)
        differ = settings_differences(stored_config(existing), config) if is_language_study(existing) else ["model"]
        if differ and not new_study:
            raise ConfigError(
                f"study {name!r} exists with other settings (differs in {', '.join(differ)}); use its settings, "
                "another study.name, or --new-study"
            )
        if differ:
            name = free_name(opened, name)
            config = dataclasses.replace(config, study=dataclasses.replace(config.study, name=name))
            log.info("creating study %r", name)
        elif _completed(existing) >= config.study.trials:  # before the minutes a large model's preparation takes
            log.info("study %r already holds %d completed trials", name, _completed(existing))
            return existing
    prepared = prepare_language(config, device)
    assert prepared.allocator is not None
    study = open_study(config, opened)
    if not is_language_study(study):
        made = {
            "config": public_settings(config).to_dict(),
            "base": prepared.base_figures,
            "code": code(),
            "blocks": {"validation": len(prepared.val), "calibration": len(prepared.calibration)},
        }
        study.set_user_attr(RECORD, made)
        baselines = _baselines(config, prepared.allocator)
        if len(baselines) > config.study.trials:
            log.warning(
                "study.trials = %d runs only the first %d of the %d baselines (uniform pruning and the allocation at "
                "each study.baselines share): raise study.trials, or name fewer baselines",
                config.study.trials,
                config.study.trials,
                len(baselines),
            )
        for label, params in baselines:
            study.enqueue_trial(params, user_attrs={"baseline": label}, skip_if_exists=True)
    done = _completed(study)
    remaining = config.study.trials - done
    log.info("study %r: running %d trial(s) on %s", name, remaining, device)
    deadline = time.monotonic() + config.study.timeout if config.study.timeout else math.inf
    with progress_bar(config.study.trials, desc=f"study {name}", unit="trial", initial=done) as bar:
        objective = _objective(prepared, bar)
        while _completed(study) < config.study.trials and time.monotonic() < deadline:
            why = failing(study.get_trials(deepcopy=False), config.study.max_failures)
            if why:
                raise TrialsFailing(f"study {name!r} stopped: {why}")
            if _repeats_in_a_row(study) >= REPEATS_MAX:
                log.warning(
                    "study %r: stopping at %d completed trials: the last %d proposals repeated measured models",
                    name,
                    _completed(study),
                    REPEATS_MAX,
                )
                break
            left = deadline - time.monotonic()
            study.optimize(
                objective,
                n_trials=1,
                timeout=None if math.isinf(left) else left,
                catch=(TrialFailed,),
                gc_after_trial=True,
            )
    return study


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto front of its objectives, by increasing parameters."""
    return sorted(study.best_trials, key=lambda t: (float(t.user_attrs["params"]), t.number))


def replay(prepared: LanguageStudy, trial: optuna.trial.FrozenTrial) -> Any:
    """A trial's model again, from the base model: its cut and its recovery."""
    kept = {g: int(k) for g, k in trial.user_attrs["kept"].items()}
    return prepared.pruned(kept, int(trial.user_attrs["seed"]))


__all__ = [
    "BASELINE_MIXES",
    "LANGUAGE_FIGURES",
    "RECORD",
    "LanguageStudy",
    "front",
    "is_language_study",
    "prepare_language",
    "replay",
    "run_language_study",
    "stored_config",
]
