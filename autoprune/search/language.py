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

A trial keeps no weights: the report and the export replay it from the base model (the cut is
decided by the scores, the recovery by the trial's seed), so a study of a 1 B-parameter model does
not store a copy of it per trial.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune._logging import get_logger
from autoprune._progress import TRIAL_LINES, progress_bar
from autoprune.bench import commit
from autoprune.budget import Budget, Choice, NothingFits, ResolvedBudget, format_figure, nothing_fits_message
from autoprune.config import OBJECTIVES, StudyConfig, baseline_share, config_from_dict
from autoprune.errors import ConfigError
from autoprune.models._hf import build_hf, load_tokenizer
from autoprune.search.opening import budget_of, open_study
from autoprune.search.paths import storage_url
from autoprune.search.record import public_settings, settings_differences
from autoprune.search.storage import make_storage
from autoprune.text import TextSplits, load_text
from autoprune.trial import decoder
from autoprune.trial.allocation import Allocator
from autoprune.trial.language import (
    activation_scores,
    analyse_decoder,
    kl_to_log_probs,
    log_probs,
    loss_and_accuracy,
    perplexity,
    recover,
    spaced,
)
from autoprune.trial.latency import Timing, measure_latency, time_onnx
from autoprune.trial.sensitivity import Sensitivity

log = get_logger(__name__)
trial_log = get_logger(TRIAL_LINES)

LANGUAGE_FIGURES = ("perplexity", "params", "macs")
"""A language trial's figures a budget or a pick reads."""
RECORD = "language"
"""The study user attribute that holds a language study's settings and base figures."""
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
        reference: The base model's next-token log-probabilities on the calibration blocks.
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
    reference: torch.Tensor
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
            "kl": kl_to_log_probs(self.reference, model, self.calibration, batch),
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
        reference=log_probs(base, calibration, batch),
        base_figures={},
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


def _code() -> str:
    """This code, as a study and its report name it: autoprune's version and its commit (``unknown``
    outside a git checkout)."""
    return f"autoprune {version('autoprune')} at commit {commit()}"


def is_language_study(study: optuna.Study) -> bool:
    """Whether a stored study is a language study."""
    return RECORD in study.user_attrs


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
        seed = config.study.seed + trial.number
        model = prepared.pruned(kept, seed)
        figures = prepared.measure(model)
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
            taken = set(optuna.get_all_study_names(storage=opened))
            name = next(f"{name}-{i}" for i in range(2, 10_000) if f"{name}-{i}" not in taken)
            config = dataclasses.replace(config, study=dataclasses.replace(config.study, name=name))
            log.info("creating study %r", name)
        elif _completed(existing) >= config.study.trials:  # before the minutes a large model's preparation takes
            log.info("study %r already holds %d completed trials", name, _completed(existing))
            return existing
    prepared = prepare_language(config, device)
    assert prepared.allocator is not None
    study = open_study(config, opened)
    if not is_language_study(study):
        made = {"config": public_settings(config).to_dict(), "base": prepared.base_figures, "code": _code()}
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
    with progress_bar(config.study.trials, desc=f"study {name}", unit="trial", initial=done) as bar:
        study.optimize(
            _objective(prepared, bar),
            n_trials=remaining,
            timeout=config.study.timeout or None,
            gc_after_trial=True,
        )
    return study


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto front of its objectives, by increasing parameters."""
    return sorted(study.best_trials, key=lambda t: (float(t.user_attrs["params"]), t.number))


_PREFERRED = {"accuracy": None, "smallest": "params", "fastest": "macs"}
"""What each ``--prefer`` favours in a language study: its quality objective (lowest perplexity or
KL), the fewest parameters, the fewest MACs per token."""


def quality(config: StudyConfig) -> str:
    """The study's quality objective: ``perplexity`` or ``kl``."""
    return next(o for o in config.study.objectives if o in ("perplexity", "kl"))


def pick_language(study: optuna.Study, budget: Budget, prefer: str = "accuracy") -> tuple[Choice, ResolvedBudget]:
    """The front member within ``budget`` (``max_params``, ``max_macs``; relative to the base model)
    that ``prefer`` favours (:data:`_PREFERRED`), ties broken by the quality objective, then parameters.

    Raises:
        NothingFits: no front member meets every limit.
        ConfigError: the budget names a figure a language study does not measure.
    """
    config = stored_config(study)
    resolved = budget.resolve(study.user_attrs[RECORD]["base"])
    unknown = [k for k in resolved.limits if k not in ("max_params", "max_macs")]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: a language study's budget limits max_params and max_macs")
    rows = [{"trial": t.number, **{k: float(t.user_attrs[k]) for k in (*LANGUAGE_FIGURES, "kl")}} for t in front(study)]
    if not rows:
        raise NothingFits("the study has no completed trial on its front to pick from")
    fitting = [r for r in rows if resolved.fits(r)]
    if not fitting:
        raise NothingFits(nothing_fits_message(rows, resolved))
    best_figure = quality(config)
    figure = _PREFERRED[prefer] or best_figure
    ranked = sorted(fitting, key=lambda r: (r[figure], r[best_figure], r["params"], r["trial"]))
    best = ranked[0]
    words = {"perplexity": "lowest validation perplexity", "kl": "lowest KL to the base model"}.get(
        figure, f"fewest {'parameters' if figure == 'params' else 'MACs per token'}"
    )
    shown = f"{best[figure]:.4g}" if figure in ("perplexity", "kl") else format_figure(figure, best[figure])
    reason = (
        f"trial {best['trial']}: {words} ({shown}) among the {len(fitting)} of {len(rows)} front trials "
        f"within budget ({resolved.describe_all()})"
    )
    return Choice(int(best["trial"]), dict(best), reason, [int(r["trial"]) for r in ranked]), resolved


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        done = [t.number for t in front(study)]
        raise ConfigError(f"study {study.study_name!r} has no completed trial {number}; its front: {done}")
    return trial


def token_latency(prepared: LanguageStudy, model: Any) -> Timing:
    """``model``'s latency as ``trial.latency_runtime`` runs it (ONNX Runtime: the exported program),
    on the CPU, over ``trial.latency_batch_size`` blocks of ``data.block`` tokens (a pass over a prompt;
    no key/value cache): divide by :func:`latency_tokens` for a figure per token."""
    from autoprune.results.export import Logits

    settings = prepared.config.trial
    tokens = prepared.text.val[: settings.latency_batch_size].cpu()
    return measure_latency(Logits(copy.deepcopy(model).cpu()).eval(), tokens, settings)


def latency_tokens(config: StudyConfig) -> int:
    """Tokens of one pass that :func:`token_latency` times."""
    return config.trial.latency_batch_size * config.data.block


def replay(prepared: LanguageStudy, trial: optuna.trial.FrozenTrial) -> Any:
    """A trial's model again, from the base model: its cut and its recovery."""
    kept = {g: int(k) for g, k in trial.user_attrs["kept"].items()}
    return prepared.pruned(kept, int(trial.user_attrs["seed"]))


def _row(trial: optuna.trial.FrozenTrial, base: dict[str, float], on_front: set[int]) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "front": trial.number in on_front,
        "baseline": attrs.get("baseline", ""),
        "params": int(attrs["params"]),
        "params_pct": round(100 * attrs["params"] / base["params"], 2),
        "macs_pct": round(100 * attrs["macs"] / base["macs"], 2),
        "perplexity": round(attrs["perplexity"], 4),
        "kl": round(attrs["kl"], 5),
        "accuracy": round(attrs["accuracy"], 5),
        "hidden": attrs["widths"]["hidden"],
        "heads": " ".join(str(h) for h in attrs["widths"]["heads"]),
        "mlp": " ".join(str(m) for m in attrs["widths"]["intermediate"]),
        "seconds": attrs.get("seconds", ""),
        **{f"param.{k}": round(v, 4) for k, v in trial.params.items()},
    }


@dataclass(frozen=True)
class LanguageReport:
    """Where :func:`write_language_report` wrote: the summary (Markdown), every trial (CSV), the chart."""

    summary: Path
    trials: Path
    chart: Path
    front: list[int]


def write_language_report(
    study: optuna.Study,
    out: Path,
    *,
    command: str = "",
    test: bool = True,
    speed: bool = True,
    device: torch.device | None = None,
) -> LanguageReport:
    """A language study's report in ``out``: ``summary.md`` (the base model, the front with each
    member's widths and, with ``test``, its test perplexity measured on a replay; with ``speed``, its
    latency per token, :func:`token_latency`), ``trials.csv`` (every completed trial) and ``front.png``
    (validation perplexity against parameters)."""
    config = stored_config(study)
    base = study.user_attrs[RECORD]["base"]
    members = front(study)
    on_front = {t.number for t in members}
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [_row(t, base, on_front) for t in done]
    out.mkdir(parents=True, exist_ok=True)
    trials_path = out / "trials.csv"
    with trials_path.open("w", newline="", encoding="utf-8") as handle:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    measured = Measured()
    if (test or speed) and members:
        prepared = prepare_language(config, device or torch.device("cpu"), analyse=False)
        blocks = spaced(prepared.text.test, config.language.eval_blocks)
        batch = config.data.batch_size
        what = " and ".join(w for w, on in (("test perplexity", test), ("latency", speed)) if on)
        if test:
            measured.base_test = perplexity(prepared.base, blocks, batch)
        if speed:
            measured.base_latency = token_latency(prepared, prepared.base)
        with progress_bar(len(members), desc=f"{what} of the front", unit="trial") as bar:
            for t in members:
                model = replay(prepared, t)
                if test:
                    measured.test[t.number] = perplexity(model, blocks, batch)
                if speed:
                    measured.latency[t.number] = token_latency(prepared, model)
                if bar is not None:
                    bar.update(1)
    chart = out / "front.png"
    _chart(rows, chart, study.study_name)
    summary = out / "summary.md"
    summary.write_text("\n".join(_summary(study, config, base, rows, measured, command)) + "\n", "utf-8")
    return LanguageReport(summary, trials_path, chart, [t.number for t in members])


@dataclass
class Measured:
    """What a report measures of the front on replays: test perplexity and latency, and the base model's."""

    test: dict[int, float] = dataclasses.field(default_factory=dict)
    latency: dict[int, Timing] = dataclasses.field(default_factory=dict)
    base_test: float | None = None
    base_latency: Timing | None = None


def _per_token(timing: Timing | None, tokens: int) -> str:
    return f"{1000 * timing.ms / tokens:.1f}" if timing is not None else "-"


def _summary(
    study: optuna.Study,
    config: StudyConfig,
    base: dict[str, float],
    rows: list[dict[str, Any]],
    measured: Measured,
    command: str,
) -> list[str]:
    language = config.language
    tokens = latency_tokens(config)
    speed = (
        [
            f"Latency: one pass over {config.trial.latency_batch_size} × {config.data.block} tokens (no key/value "
            f"cache), median of {config.trial.latency_repeats} on {measured.base_latency.runtime} "
            f"({measured.base_latency.where}), divided by the {tokens} tokens: µs per token; the base model "
            f"{_per_token(measured.base_latency, tokens)} µs ({measured.base_latency.describe()} per pass). Each "
            "model is timed alone, one after another: run nothing else beside the report.",
        ]
        if measured.base_latency is not None
        else []
    )
    lines = [
        f"# Language study {study.study_name}",
        "",
        *([f"Command: `{command}`"] if command else []),
        f"Study made by {study.user_attrs[RECORD]['code']}; report by {_code()}.",
        "",
        f"Model `{config.model.name}`: {int(base['params']):,} parameters, {int(base['macs']):,} MACs per token, "
        f"validation perplexity {base['perplexity']:.3f}"
        + (f", test perplexity {measured.base_test:.3f}" if measured.base_test is not None else "")
        + ".",
        f"{len(rows)} completed trials; objectives: "
        + ", ".join(f"{o} ({OBJECTIVES[o]})" for o in config.study.objectives)
        + f"; each trial cut to its widths, then {language.recovery_steps} recovery steps; perplexity on "
        f"{language.eval_blocks or 'all'} validation blocks of {config.data.block} tokens, KL on "
        f"{language.calibration_blocks} calibration blocks.",
        *speed,
        "",
        "## Front",
        "",
        "| trial | baseline | parameters | MACs/token | validation perplexity | test perplexity | KL | "
        "next-token accuracy | µs per token | hidden | heads per layer | MLP per layer |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in sorted((r for r in rows if r["front"]), key=lambda r: (r["params"], r["trial"])):
        number = row["trial"]
        test = f"{measured.test[number]:.3f}" if number in measured.test else "-"
        lines.append(
            f"| {number} | {row['baseline'] or '-'} | {row['params_pct']:.1f} % | {row['macs_pct']:.1f} % | "
            f"{row['perplexity']:.3f} | {test} | {row['kl']:.4f} | {row['accuracy']:.4f} | "
            f"{_per_token(measured.latency.get(number), tokens)} | {row['hidden']} | {row['heads']} | {row['mlp']} |"
        )
    baselines = [r for r in rows if r["baseline"]]
    if baselines:
        lines += [
            "",
            "## Baselines",
            "",
            "| trial | baseline | parameters | validation perplexity | KL |",
            "| ---: | --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['trial']} | {r['baseline']} | {r['params_pct']:.1f} % | {r['perplexity']:.3f} | {r['kl']:.4f} |"
            for r in sorted(baselines, key=lambda r: r["trial"])
        ]
    lines += ["", "Export a trial: `autoprune export STUDY.toml --trial N` (a checkpoint, model.pt2, model.onnx)."]
    return lines


def _chart(rows: list[dict[str, Any]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    others = [r for r in rows if not r["front"]]
    members = sorted((r for r in rows if r["front"]), key=lambda r: r["params_pct"])
    axes.scatter([r["params_pct"] for r in others], [r["perplexity"] for r in others], s=12, c="#bbbbbb", label="trial")
    axes.plot([r["params_pct"] for r in members], [r["perplexity"] for r in members], "o-", c="#1f77b4", label="front")
    for label, marker, color in (("uniform", "s", "#d62728"), ("allocation", "^", "#ff7f0e")):
        chosen = [r for r in rows if str(r["baseline"]).startswith(label)]
        axes.scatter(
            [r["params_pct"] for r in chosen],
            [r["perplexity"] for r in chosen],
            marker=marker,
            s=50,
            c=color,
            edgecolors="black",
            zorder=3,
            label=f"{label} (baseline)",
        )
    axes.set_yscale("log")
    axes.set_xlabel("parameters kept (% of the base model)")
    axes.set_ylabel("validation perplexity (log scale)")
    axes.set_title(f"{name}: validation perplexity against parameters")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass(frozen=True)
class LanguageExport:
    """What :func:`export_language_trial` wrote and measured."""

    path: Path
    perplexity: float
    """Validation perplexity of the replayed model (the trial's stored one, when the replay is exact)."""
    stored: float
    test_perplexity: float
    params: int
    program_diff: float
    onnx_check: str
    latency: Timing
    """``model.onnx`` on ONNX Runtime (the CPU), over ``tokens`` tokens (:func:`token_latency`'s pass)."""
    tokens: int


def export_language_trial(
    study: optuna.Study, number: int, out: Path, *, device: torch.device | None = None
) -> LanguageExport:
    """Replay trial ``number`` and export it (:func:`~autoprune.results.export.export_decoder`): a checkpoint
    ``autoprune.load`` reloads with its per-layer widths, ``model.pt2`` and ``model.onnx``."""
    from autoprune.results.export import ONNX, export_decoder

    trial = _trial(study, number)
    config = stored_config(study)
    if any(v > 0 for v in trial.user_attrs.get("constraints", [])):
        limits = budget_of(config).resolve(study.user_attrs[RECORD]["base"]).describe_all()
        log.warning("trial %d is beyond the study's budget (%s)", number, limits)
    prepared = prepare_language(config, device or torch.device("cpu"), analyse=False)
    model = replay(prepared, trial)
    ppl = prepared.measure(model)["perplexity"]
    test = perplexity(model, spaced(prepared.text.test, config.language.eval_blocks), config.data.batch_size)
    exported = export_decoder(model.cpu(), out, prepared.tokenizer)
    settings = config.trial
    tokens = prepared.text.val[: settings.latency_batch_size].cpu()
    latency = time_onnx(
        (exported.folder / ONNX).read_bytes(),
        tokens,
        repeats=settings.latency_repeats,
        threads=settings.latency_threads,
    )
    return LanguageExport(
        path=exported.folder,
        perplexity=ppl,
        stored=float(trial.user_attrs["perplexity"]),
        test_perplexity=test,
        params=sum(p.numel() for p in model.parameters()),
        program_diff=exported.program_diff,
        onnx_check=exported.onnx_check,
        latency=latency,
        tokens=latency_tokens(config),
    )


__all__ = [
    "RECORD",
    "LanguageExport",
    "LanguageReport",
    "LanguageStudy",
    "Measured",
    "export_language_trial",
    "front",
    "is_language_study",
    "pick_language",
    "quality",
    "latency_tokens",
    "prepare_language",
    "replay",
    "run_language_study",
    "stored_config",
    "token_latency",
    "write_language_report",
]
