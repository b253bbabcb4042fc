"""A language study's results (:mod:`autoprune.search.language`): its report (the front with test
perplexity and latency per token, every trial, the chart), the pick within a budget, and the export
of a trial, each on a replay of the trials it reads."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune._code import code
from autoprune._logging import get_logger
from autoprune._progress import progress_bar
from autoprune.budget import Budget, Choice, NothingFits, format_figure, nothing_fits_message
from autoprune.config import OBJECTIVES, StudyConfig
from autoprune.errors import ConfigError
from autoprune.results.export import ONNX, Logits, export_decoder
from autoprune.search.language import (
    LANGUAGE_FIGURES,
    RECORD,
    LanguageStudy,
    front,
    prepare_language,
    replay,
    stored_config,
)
from autoprune.search.opening import budget_of
from autoprune.trial.language import perplexity, spaced
from autoprune.trial.latency import Timing, measure_latency, time_onnx

log = get_logger(__name__)


_PREFERRED = {"accuracy": None, "smallest": "params", "fastest": "macs"}
"""What each ``--prefer`` favours in a language study: its quality objective (lowest perplexity or
KL), the fewest parameters, the fewest MACs per token."""


def quality(config: StudyConfig) -> str:
    """The study's quality objective: ``perplexity`` or ``kl``."""
    return next(o for o in config.study.objectives if o in ("perplexity", "kl"))


def pick_language(study: optuna.Study, budget: Budget, prefer: str = "accuracy") -> Choice:
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
    return Choice(int(best["trial"]), dict(best), reason, [int(r["trial"]) for r in ranked])


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        done = [t.number for t in front(study)]
        raise ConfigError(f"study {study.study_name!r} has no completed trial {number}; its front: {done}")
    return trial


def token_latency(prepared: LanguageStudy, model: Any) -> Timing:
    """``model``'s latency as ``trial.latency_runtime`` runs it (ONNX Runtime: the exported program),
    on the CPU (the model is moved there), over ``trial.latency_batch_size`` blocks of ``data.block``
    tokens (a pass over a prompt; no key/value cache): divide by :func:`latency_tokens` for a figure per
    token."""
    settings = prepared.config.trial
    tokens = prepared.text.val[: settings.latency_batch_size].cpu()
    return measure_latency(Logits(model.cpu()).eval(), tokens, settings)


def latency_tokens(config: StudyConfig) -> int:
    """Tokens of one pass that :func:`token_latency` times."""
    return config.trial.latency_batch_size * config.data.block


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
    latency per token, :func:`token_latency`), ``trials.csv`` (every completed trial, and each failed
    one with its ``fail_reason``) and ``front.png`` (validation perplexity against parameters)."""
    made_by = code()  # before the report's own files change the checkout it names
    config = stored_config(study)
    base = study.user_attrs[RECORD]["base"]
    members = front(study)
    on_front = {t.number for t in members}
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [_row(t, base, on_front) for t in done]
    failed = [
        {"trial": t.number, "fail_reason": t.user_attrs.get("fail_reason", "")}
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.FAIL
    ]
    out.mkdir(parents=True, exist_ok=True)
    trials_path = out / "trials.csv"
    with trials_path.open("w", newline="", encoding="utf-8") as handle:
        fields = list(dict.fromkeys(k for row in rows + failed for k in row))
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(sorted(rows + failed, key=lambda row: int(row["trial"])))
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
    lines = _summary(study, config, base, rows, measured, command, made_by)
    summary.write_text("\n".join(lines) + "\n", "utf-8")
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


def _failures(study: optuna.Study) -> list[str]:
    """Lines naming the failed trials and why, and how many proposals repeated a measured model."""
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    repeats = sum("repeat_of" in t.user_attrs for t in trials)
    lines = []
    if failed:
        reasons = Counter(str(t.user_attrs.get("fail_reason") or "no reason recorded") for t in failed)
        lines.append(
            f"{len(failed)} trial(s) failed ({', '.join(str(t.number) for t in failed)}): "
            + "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common())
            + "."
        )
    if repeats:
        lines.append(f"{repeats} proposal(s) repeated a measured model's widths and were not measured again.")
    return lines


def _summary(
    study: optuna.Study,
    config: StudyConfig,
    base: dict[str, float],
    rows: list[dict[str, Any]],
    measured: Measured,
    command: str,
    made_by: str,
) -> list[str]:
    language = config.language
    blocks = study.user_attrs[RECORD].get("blocks", {})  # what the text held, up to the settings' counts
    budget = budget_of(config)
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
        f"Study made by {study.user_attrs[RECORD]['code']}; report by {made_by}.",
        "",
        f"Model `{config.model.name}`: {int(base['params']):,} parameters, {int(base['macs']):,} MACs per token, "
        f"validation perplexity {base['perplexity']:.3f}"
        + (f", test perplexity {measured.base_test:.3f}" if measured.base_test is not None else "")
        + ".",
        f"{len(rows)} completed trials; objectives: "
        + ", ".join(f"{o} ({OBJECTIVES[o]})" for o in config.study.objectives)
        + f"; each trial cut to its widths, then {language.recovery_steps} recovery steps; perplexity on "
        f"{blocks.get('validation', language.eval_blocks or 'all')} validation blocks of {config.data.block} "
        f"tokens, KL on {blocks.get('calibration', language.calibration_blocks)} calibration blocks.",
        *([f"Budget: {budget.resolve(base).describe_all()}; the front holds the trials within it."] if budget else []),
        *_failures(study),
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
    "LanguageExport",
    "LanguageReport",
    "Measured",
    "export_language_trial",
    "latency_tokens",
    "pick_language",
    "quality",
    "token_latency",
    "write_language_report",
]
