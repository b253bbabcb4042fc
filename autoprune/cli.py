"""The ``autoprune`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune._logging import configure_cli_logging, get_logger, install_log_redaction, redact_text
from autoprune.config import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, STORAGE_ENV
from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    import optuna

    from autoprune.budget import Budget, ResolvedBudget
    from autoprune.config import StudyConfig
    from autoprune.results.rows import TrialRow

log = get_logger(__name__)

EXIT_USAGE = 2
INT8_HELP = (
    "also write model.int8.onnx (ONNX Runtime's static quantization, calibrated on training images) and measure "
    "its test accuracy and latency against the FP32 program's"
)
ARTIFACTS_HELP = (
    "where the study keeps its front's weights, base model and final fine-tunes: a folder, s3://bucket/prefix "
    "or gs://bucket/prefix "
    "(study.artifacts; credentials from the environment; default: the local runs folder)"
)
_BUDGET_OPTIONS = (
    ("max_macs", "most MACs: a count (1.5M) or %% of the base model (50%%)"),
    ("max_nonzero_macs", "most MACs of non-zero weights (weight-level sparsity): a count or %% of base"),
    ("max_params", "most parameters: a count (60k) or %% of base"),
    ("max_size", "most bytes of the weights file: 2MB, 500kB, 1.5MiB or %% of base"),
    ("max_latency_ms", "most milliseconds per forward pass on the study's device, or %% of base"),
    ("min_accuracy", "least validation accuracy: in [0, 1], or %% of the base model's (99%%)"),
)


def format_front(rows: Sequence[TrialRow]) -> str:
    """Front rows as a fixed-width text table."""
    from autoprune.budget import format_figure
    from autoprune.results.rows import trial_note

    sparse = any(r.nonzero_macs != r.macs for r in rows)
    latency = any(r.latency_ms is not None for r in rows)
    header = [
        "trial",
        "val acc",
        "MACs",
        "MACs %",
        *(["nz MACs %"] if sparse else []),
        "size",
        "size %",
        "params %",
        *(["latency ms"] if latency else []),
        "ft steps",
        "prune steps",
        "scorer",
        "note",
    ]
    lines = [
        [
            str(r.trial),
            format_figure("accuracy", r.accuracy or 0.0),
            format_figure("macs", r.macs or 0),
            f"{r.macs_pct:.1f}",
            *([f"{r.nonzero_macs_pct:.1f}"] if sparse else []),
            format_figure("size", r.size or 0),
            f"{r.size_pct:.1f}",
            f"{r.params_pct:.1f}",
            *([f"{r.latency_ms:.3g}" if r.latency_ms is not None else "-"] if latency else []),
            str(r.finetune_steps),
            str(r.prune_steps),
            str(r.scorer),
            trial_note(r.baseline, r.rung, r.parent),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i < len(header) - 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([render(header), render(["-" * w for w in widths]), *(render(line) for line in lines)])


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_file", metavar="STUDY.toml", help="study file (see studies/digits.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one study-file key, typed like the key (repeatable), e.g. --set space.ratio_max=0.6",
    )


def _study_config(args: argparse.Namespace, study_keys: Sequence[str], more: Sequence[str] = ()) -> StudyConfig:
    """The study file with its ``--set`` overrides, then the command's ``study.*`` options that were
    given (``--trials`` → ``study.trials``), then ``more`` overrides; quiets Optuna's logs."""
    import optuna

    from autoprune.config import load_config

    overrides = list(args.overrides)
    for key in study_keys:
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"study.{key}={value!r}" if isinstance(value, str) else f"study.{key}={value}")
    config = load_config(args.study_file, [*overrides, *more])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return config


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.results.rows import front_rows, pick_floor
    from autoprune.search.loop import auto_workers
    from autoprune.search.opening import resolve_device
    from autoprune.search.record import StudyRecord
    from autoprune.search.run import run_study

    given = [(key, getattr(args, key)) for key, _help in _BUDGET_OPTIONS]
    budget = [f"budget.{key}={json.dumps(value)}" for key, value in given if value is not None]
    config = _study_config(args, ("trials", "timeout", "seed", "device", "artifacts"), budget)
    device = resolve_device(config.study.device)
    if config.is_language:
        return _language_search(args, config, device)
    workers = auto_workers(device) if args.workers == "auto" else args.workers
    if args.workers == "auto":
        log.info("--workers auto: %d worker(s) on %s", workers, device)
    study = run_study(
        config,
        storage=args.storage,
        device=device,
        workers=workers,
        new_study=args.new_study,
        trust_checkpoint=args.trust_checkpoint,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        verbose=args.verbose,
    )
    if workers == 0:
        return 0
    rows = front_rows(study)
    floor = pick_floor(StudyRecord.from_study(study))
    print(
        f"\nPareto front of study {study.study_name!r} ({len(rows)} of {len(study.trials)} trials; "
        f"objectives: {', '.join(config.study.objectives)}; pick floor: val acc {floor:.4f}):"
    )
    print(format_front(rows))
    return 0


def _language_search(args: argparse.Namespace, config: StudyConfig, device: Any) -> int:
    from autoprune.errors import ConfigError
    from autoprune.search.language import front, run_language_study

    if args.workers != 1:
        raise ConfigError(f"--workers {args.workers}: a language study runs its trials in one process")
    study = run_language_study(config, storage=args.storage, device=device, new_study=args.new_study)
    base = study.user_attrs["language"]["base"]
    members = front(study)
    print(
        f"\nPareto front of language study {study.study_name!r} ({len(members)} of {len(study.trials)} trials; "
        f"objectives: {', '.join(config.study.objectives)}):"
    )
    print(f"{'trial':>6} {'params':>8} {'MACs':>8} {'perplexity':>11} {'KL':>8}  baseline")
    for t in members:
        a = t.user_attrs
        print(
            f"{t.number:>6} {100 * a['params'] / base['params']:7.1f}% {100 * a['macs'] / base['macs']:7.1f}% "
            f"{a['perplexity']:11.3f} {a['kl']:8.4f}  {a.get('baseline', '')}"
        )
    return 0


def _add_budget_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (overrides the study file's [budget] table)")
    for key, text in _BUDGET_OPTIONS:
        group.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar="LIMIT", help=text)


def _add_stored_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study_file", metavar="STUDY.toml", nargs="?", help="study file; or give --storage and --study instead"
    )
    parser.add_argument("--storage", help="Optuna storage URL (default: the study file's)")
    parser.add_argument("--study", dest="study_name", help="study name in --storage (default: the study file's)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=argparse.SUPPRESS
    )
    _add_budget_options(parser)


def _open_stored(args: argparse.Namespace) -> tuple[optuna.Study, str, StudyConfig | None]:
    """The stored study named by a study file or by --storage/--study, its storage and the file's config."""
    from autoprune.config import load_config
    from autoprune.errors import ConfigError
    from autoprune.search.opening import load_stored_study
    from autoprune.search.paths import default_storage

    config = None
    if args.study_file:
        config = load_config(args.study_file, args.overrides)
        storage = args.storage or config.study.storage or default_storage(config.study.name, config.study.runs_dir)
        name = args.study_name or config.study.name
    elif args.storage and args.study_name:
        storage, name = args.storage, args.study_name
    else:
        raise ConfigError("give a study file (STUDY.toml), or both --storage URL and --study NAME")
    return load_stored_study(storage, name), storage, config


def _budget(args: argparse.Namespace, study: optuna.Study, config: StudyConfig | None) -> Budget:
    """The study file's budget (or, without one, the stored study's) with the command-line limits on top."""
    from autoprune.budget import Budget
    from autoprune.search.language import is_language_study, stored_config
    from autoprune.search.opening import budget_of
    from autoprune.search.record import StudyRecord

    if config is None:
        config = stored_config(study) if is_language_study(study) else StudyRecord.from_study(study).config
    base = budget_of(config)
    given = {key: getattr(args, key) for key, _help in _BUDGET_OPTIONS if getattr(args, key) is not None}
    return base.merged(Budget.from_mapping(given))


def _resolved(budget: Budget, study: optuna.Study) -> ResolvedBudget | None:
    from autoprune.search.record import StudyRecord

    return budget.resolve(StudyRecord.from_study(study).base.to_dict()) if budget else None


def _cmd_report(args: argparse.Namespace) -> int:
    from autoprune.results.language import write_language_report
    from autoprune.results.report import write_report
    from autoprune.search.language import is_language_study

    study, storage, _config = _open_stored(args)
    out = Path(args.out) if args.out else Path("reports") / study.study_name
    if is_language_study(study):
        written = write_language_report(
            study, out, command=args.command_line, test=not args.no_test, speed=not args.no_speed
        )
        print(f"report of language study {study.study_name!r} ({len(written.front)} front trials) written to {out}")
        return 0
    budget = _resolved(_budget(args, study, _config), study)
    report = write_report(
        study,
        out,
        budget=budget,
        storage=storage,
        command=args.command_line,
        test_accuracy=not args.no_test,
        speed=not args.no_speed,
    )
    print(f"report of study {study.study_name!r} ({len(report.front)} front trials) written to {report.index}")
    return 0


def _choose(
    args: argparse.Namespace, study: optuna.Study, config: StudyConfig | None, storage: str | None
) -> tuple[Any, Budget]:
    from autoprune.budget import pick
    from autoprune.results.rows import front_rows
    from autoprune.search.record import StudyRecord

    budget = _budget(args, study, config)
    record = StudyRecord.from_study(study)
    resolved = budget.resolve(record.base.to_dict())
    rows = [row.to_dict() for row in front_rows(study)]
    if (
        "max_latency_ms" in resolved.limits
        and record.latency_model is not None
        and record.config.trial.latency_predicted
    ):
        rows = _timed_rows(study, storage, rows, record.config.trial.latency_runtime)
    return pick(rows, resolved, args.prefer), budget


def _timed_rows(
    study: optuna.Study, storage: str | None, rows: list[dict[str, Any]], runtime: str
) -> list[dict[str, Any]]:
    """``rows`` with each front member's latency timed now on the study's runtime, in place of the latency
    the search predicted for it, so that a latency budget is met on the runtime and not only in the model."""
    from autoprune.results.report import measure_front

    timed = measure_front(study, [int(r["trial"]) for r in rows], storage, test=False).latency
    log.info("pick: %d front members timed on %s for the latency budget", len(timed), runtime)
    return [{**r, "latency_ms": timed[int(r["trial"])].ms} if int(r["trial"]) in timed else r for r in rows]


def _print_pick(
    args: argparse.Namespace,
    study: optuna.Study,
    choice: Any,
    budget: Budget,
    trial: Any,
    figures: dict[str, Any],
    base: dict[str, Any],
    **more: Any,
) -> None:
    """``pick --json``: the choice, why, the budget, the trial's figures and kept units, and ``more``."""
    payload = {
        "study": study.study_name,
        "trial": choice.trial,
        "prefer": args.prefer,
        "reason": choice.reason,
        "budget": budget.to_dict(),
        "kept": trial.user_attrs["kept"],
        "figures": figures,
        "base": base,
        "baseline": trial.user_attrs.get("baseline"),
        "candidates": choice.candidates,
        **more,
    }
    print(json.dumps(payload, indent=2, sort_keys=True))


def _language_pick(args: argparse.Namespace, study: optuna.Study, config: StudyConfig | None) -> int:
    from autoprune.results.language import pick_language

    budget = _budget(args, study, config)
    choice = pick_language(study, budget, args.prefer)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == choice.trial)
    if args.json:
        figures = {k: v for k, v in choice.figures.items() if k != "trial"}
        base = study.user_attrs["language"]["base"]
        _print_pick(args, study, choice, budget, trial, figures, base, widths=trial.user_attrs["widths"])
        return 0
    widths = trial.user_attrs["widths"]
    print(f"trial {choice.trial}: hidden {widths['hidden']}, heads {widths['heads']}, MLP {widths['intermediate']}")
    print(f"why: {choice.reason}")
    named = args.study_file or f"--storage URL --study {study.study_name}"
    print(f"export it with: autoprune export {named} --trial {choice.trial}")
    return 0


def _cmd_pick(args: argparse.Namespace) -> int:
    from autoprune.policy import Policy
    from autoprune.results.rows import TrialRow
    from autoprune.search.artifacts import weights_key
    from autoprune.search.language import is_language_study
    from autoprune.search.paths import study_artifacts
    from autoprune.search.record import StudyRecord

    study, storage, config = _open_stored(args)
    if is_language_study(study):
        return _language_pick(args, study, config)
    choice, budget = _choose(args, study, config, storage)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == choice.trial)
    artifacts = study_artifacts(study, storage)
    weights = artifacts.where(weights_key(choice.trial)) if artifacts.has_weights(choice.trial) else None
    base = StudyRecord.from_study(study).base.to_dict()
    figures = {k: v for k, v in choice.figures.items() if k not in ("trial", "state", "baseline", "test_accuracy")}
    if args.json:
        _print_pick(
            args,
            study,
            choice,
            budget,
            trial,
            figures,
            base,
            policy=trial.user_attrs["policy"],
            seconds=trial.user_attrs.get("seconds", {}),
            weights=weights,
        )
        return 0
    policy = Policy.from_dict(trial.user_attrs["policy"])
    print(f"trial {choice.trial}: {policy.summary()}")
    print(f"why: {choice.reason}")
    print(format_front([TrialRow(**choice.figures)]))
    print(f"weights: {weights or 'not stored'}")
    return 0


def _exported(args: argparse.Namespace, settings: Any, default_out: str) -> tuple[Any, int]:
    """Export --trial N (or the trial `pick` chooses), after a final fine-tune when ``settings`` asks for one."""
    from autoprune.results.export import export_trial
    from autoprune.search.opening import resolve_device
    from autoprune.search.record import StudyRecord

    study, storage, config = _open_stored(args)
    budget = _budget(args, study, config)
    if args.trial is None:
        choice, budget = _choose(args, study, config, storage)
        number = choice.trial
        print(f"picked {choice.reason}")
    else:
        number = args.trial
    out = Path(args.out) if args.out else Path("exports") / default_out.format(study=study.study_name, trial=number)
    device = (
        resolve_device(getattr(args, "device", None) or StudyRecord.from_study(study).config.study.device)
        if settings is not None  # an export alone runs on the CPU, whatever the study's device
        else None
    )
    result = export_trial(
        study,
        number,
        out,
        storage=storage,
        finetune=settings,
        budget=budget,
        command=args.command_line,
        device=device,
        int8=args.int8,
    )
    m = result.measurement
    print(
        f"trial {number} exported to {result.path}: val acc {m.accuracy:.4f}, test acc {result.test_accuracy:.4f} "
        f"(test split), {m.macs:,} MACs, {m.params:,} params; model.pt2 max diff {result.program_diff:.1e}; "
        f"{result.onnx_check}"
    )
    if result.int8 is not None:
        fp32, int8 = result.int8.fp32, result.int8.int8
        print(
            f"INT8 (model.int8.onnx): test acc {int8.test_accuracy:.4f} against {fp32.test_accuracy:.4f}, "
            f"latency {int8.latency.describe()} against {fp32.latency.ms:.3g} ms, on ONNX Runtime"
        )
    print(f"load it with: python -c \"import autoprune; print(autoprune.load('{result.path}'))\"")
    return result, number


def _cmd_export(args: argparse.Namespace) -> int:
    from autoprune.results.finetune import FinetuneSettings
    from autoprune.search.language import is_language_study

    study, _storage, config = _open_stored(args)
    if is_language_study(study):
        return _language_export(args, study, config)
    settings = FinetuneSettings(epochs=args.finetune_epochs) if args.finetune_epochs else None
    _exported(args, settings, "{study}-trial-{trial}")
    return 0


def _language_export(args: argparse.Namespace, study: optuna.Study, config: StudyConfig | None) -> int:
    from autoprune.errors import ConfigError
    from autoprune.results.language import export_language_trial, pick_language

    if args.finetune_epochs or args.int8:
        raise ConfigError("--finetune-epochs and --int8 take an image classifier's study, not a language study")
    number = args.trial
    if number is None:
        choice = pick_language(study, _budget(args, study, config), args.prefer)
        number = choice.trial
        print(f"picked {choice.reason}")
    out = Path(args.out) if args.out else Path("exports") / f"{study.study_name}-trial-{number}"
    done = export_language_trial(study, number, out)
    print(
        f"trial {number} exported to {done.path}: {done.params:,} params, validation perplexity "
        f"{done.perplexity:.3f} (the search measured {done.stored:.3f}), test perplexity {done.test_perplexity:.3f}; "
        f"model.pt2 max diff {done.program_diff:.1e}; {done.onnx_check}; model.onnx "
        f"{1000 * done.latency.ms / done.tokens:.3g} µs per token ({done.latency.describe()} per {done.tokens} tokens)"
    )
    print(f"load it with: python -c \"import autoprune; print(autoprune.load('{done.path}'))\"")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from autoprune.results.finetune import FinetuneSettings

    settings = FinetuneSettings(
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        fresh=args.fresh,
    )
    result, number = _exported(args, settings, "{study}-trial-{trial}-finetuned")
    done, base = result.finetuned, result.base_test_accuracy
    print(
        f"final fine-tune of trial {number}: {done.recipe.describe()}, {done.seconds:.0f} s of training; "
        f"test acc {result.test_accuracy:.4f}" + (f" against the base model's {base:.4f}" if base is not None else "")
    )
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoprune.results.sensitivity import sensitivity_table, write_sensitivity
    from autoprune.search.opening import resolve_device
    from autoprune.search.sensitivity import study_sensitivity

    config = _study_config(args, ("device",))
    sensitivity, cache = study_sensitivity(
        config, resolve_device(config.study.device), trust_checkpoint=args.trust_checkpoint
    )
    out = Path(args.out or Path(config.study.runs_dir) / f"{config.study.name}-sensitivity")
    files = write_sensitivity(sensitivity, out, f"Sensitivity of {config.model.name}: study {config.study.name}")
    print(sensitivity_table(sensitivity))
    print(f"\nanalysis cached in {cache}; written to {', '.join(str(p) for p in files.values())}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoprune.errors import ConfigError
    from autoprune.search.opening import resolve_device
    from autoprune.search.starter import starter_config, write_study

    name = args.name or Path(args.out or "study").stem
    out = Path(args.out or f"{name}.toml")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the study file's path, e.g. {out / (name + '.toml')}")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; choose another --out or pass --force")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {args.device}: {exc}") from None
    config = starter_config(
        name=name,
        model=args.model,
        data=args.data,
        root=args.root or "",
        image_size=args.image_size,
        checkpoint=args.checkpoint or "",
        device=args.device,
    )
    path, sizing = write_study(config, device, out)
    print(
        f"wrote {path}: {sizing.trials} trials of {sizing.finetune_steps} fine-tune steps, about "
        f"{sizing.hours:.1f} h on {sizing.device} ({sizing.groups} prunable groups, {sizing.params:,} parameters)"
    )
    if sizing.epochs < config.train.epochs:
        print(
            f"note: base-model training cut to {sizing.epochs} epoch(s) to fit about an hour on this CPU; "
            "give trained weights with --checkpoint, or raise train.epochs in the file"
        )
    print(f"run it:  autoprune search {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    """``models``, ``datasets`` and ``scorers``: each name a study file takes, with one line on it."""
    rows: list[tuple[str, str]]
    if args.command == "models":
        from autoprune.models import model_catalogue

        rows = model_catalogue(args.pattern)
    else:
        from autoprune.data import DATASETS
        from autoprune.scorers import SCORERS

        registry: Any = DATASETS if args.command == "datasets" else SCORERS
        rows = [(name, registry.describe(name)) for name in registry.matching(args.pattern or "*")]
    if not rows:
        print(f"no {args.command} match {args.pattern!r}", file=sys.stderr)
        return EXIT_USAGE
    width = max(len(name) for name, _text in rows)
    for name, text in rows:
        print(f"{name.ljust(width)}  {text}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from autoprune.bench.timing import run_bench, write_report
    from autoprune.search.paths import default_storage

    config = _study_config(args, ("trials", "device"))
    with tempfile.TemporaryDirectory(prefix="autoprune-bench-") as scratch:
        result = run_bench(config, storage=default_storage("bench", scratch))
    out = write_report(result, Path(args.out or f"reports/bench/{config.study.name}.md"), args.command_line)
    print(out.read_text(encoding="utf-8"))
    print(f"written to {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:

    from autoprune.bench.compare import parse_variant, run_compare, write_outputs
    from autoprune.search.opening import resolve_device

    config = _study_config(args, ("device", "artifacts"))
    variants = [parse_variant(spec) for spec in args.variants]
    comparison = run_compare(
        config,
        seeds=args.seeds,
        trials=args.trials,
        runs_dir=Path(args.runs or f"runs/compare-{config.study.name}"),
        device=resolve_device(config.study.device),
        variants=variants,
        fresh=args.fresh,
        only=args.methods or (),
        final_epochs=args.final_epochs,
    )
    files = write_outputs(comparison, Path(args.out or f"reports/bench/compare-{config.study.name}"), args.command_line)
    print(files["results.md"].read_text(encoding="utf-8"))
    print(f"written to {files['results.md'].parent}")
    return 0


def _worker_count(value: str) -> int | str:
    """``--workers``: a count, or ``auto`` (resolved once the study's device is known)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of workers, or 'auto'") from None


def _add_parallel_options(parser: argparse.ArgumentParser, *, search: bool) -> None:
    """Options shared by ``search`` and ``worker``: heartbeat, checkpoint trust; ``--workers`` and
    ``--new-study`` for ``search``."""
    if search:
        parser.add_argument(
            "--workers",
            type=_worker_count,
            default=1,
            metavar="N",
            help="worker processes on this machine (default 1); 'auto': one per CPU core, or on CUDA as many "
            "per GPU as its memory and the CPU cores allow, at most 4; 0: make the study ready (base model, "
            "settings, baselines) and leave its trials to `autoprune worker` processes on other machines",
        )
        parser.add_argument(
            "--new-study",
            action="store_true",
            help="when a study of this name exists with another search space, create NAME-2 (NAME-3, ...)",
        )
    parser.add_argument(
        "--heartbeat-interval",
        type=int,
        default=HEARTBEAT_INTERVAL_S,
        metavar="S",
        help=f"seconds between heartbeats of a running trial (default {HEARTBEAT_INTERVAL_S}; RDB storages)",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=GRACE_PERIOD_S,
        metavar="S",
        help=f"seconds without heartbeat before a trial is failed and retried (default {GRACE_PERIOD_S})",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow model.checkpoint files that need full unpickling (runs code in the file: only your own)",
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    import optuna

    from autoprune.errors import ConfigError, TrialsFailing
    from autoprune.search.loop import EXIT_TRIALS_FAILING, stop_with_parent
    from autoprune.search.run import run_worker

    storage = args.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise ConfigError(f"give --storage URL (or set {STORAGE_ENV}) and --study NAME")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.parent_pid is not None:
        stop_with_parent(args.parent_pid)
    try:
        run_worker(
            storage,
            args.study_name,
            device=args.device,
            threads=args.threads,
            index=args.worker_index,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            trust_checkpoint=args.trust_checkpoint,
            artifacts=args.artifacts or "",
        )
    except TrialsFailing:
        if args.parent_pid is None:
            raise
        log.warning("stopping: the study's trials keep failing")  # the search process says why, once
        return EXIT_TRIALS_FAILING
    return 0


def _add_worker_command(commands: Any) -> None:
    """The ``autoprune worker`` subcommand."""
    worker = commands.add_parser(
        "worker",
        help="join a stored study and run its trials (any machine that reaches the storage)",
        description="Join a study that `autoprune search` created and run trials until it holds its "
        "trial count. Start as many as you like, on as many machines as reach the storage; the base "
        f"model is read from the study's recorded checkpoint. The URL may come from ${STORAGE_ENV}.",
    )
    worker.add_argument("--storage", help=f"Optuna storage URL (default: ${STORAGE_ENV})")
    worker.add_argument("--study", dest="study_name", required=True, help="study name in the storage")
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's)")
    worker.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    worker.add_argument(
        "--artifacts",
        metavar="URL",
        help="this machine's address of the study's artifact store, when it differs from the recorded one "
        "(a shared folder mounted at another path; default: the recorded store)",
    )
    worker.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _add_parallel_options(worker, search=False)
    worker.set_defaults(func=_cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Search structured-pruning policies with Optuna and report the Pareto front "
        "of accuracy against MACs and size.",
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug output (every trial's line too)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser(
        "search",
        help="run or resume a study",
        description="Run a study: each trial prunes a copy of the base model by a sampled policy, "
        "fine-tunes it and measures it on the validation split. Running the same command again "
        "resumes the study up to the requested trial count. Prints the Pareto front at the end.",
    )
    _add_study_options(search)
    search.add_argument("--trials", type=int, help="total completed trials the study should hold (study.trials)")
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (study.timeout)")
    search.add_argument("--storage", help="Optuna storage URL (default: sqlite:///runs/<study name>.db)")
    search.add_argument("--artifacts", metavar="URL", help=ARTIFACTS_HELP)
    search.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    search.add_argument("--seed", type=int, help="seed of the sampler, fine-tuning and random scorer (study.seed)")
    _add_budget_options(search)
    _add_parallel_options(search, search=True)
    search.set_defaults(func=_cmd_search)
    _add_worker_command(commands)

    report = commands.add_parser(
        "report",
        help="write the Pareto report of a stored study",
        description="Write reports/<study>/: index.html (self-contained, opens from disk), front.csv, "
        "trials.csv, summary.md and PNG charts. Reads the stored study only; test accuracy of front "
        "members is measured once on the test split from their kept weights.",
    )
    _add_stored_study_options(report)
    report.add_argument("--out", help="output folder (default: reports/<study name>)")
    report.add_argument("--no-test", action="store_true", help="skip the test-split accuracy of front members")
    report.add_argument(
        "--no-speed",
        action="store_true",
        help="skip timing front members and the base model on the study's runtime (trial.latency_runtime)",
    )
    report.set_defaults(func=_cmd_report)

    from autoprune.budget import PREFERENCES

    pick = commands.add_parser(
        "pick",
        help="choose the front trial that fits a budget",
        description="Choose, out of the stored front, the trial that fits the budget and is preferred: "
        "accuracy (most accurate), smallest (fewest bytes of the weights file) or fastest (fewest MACs). "
        "Exits with status 2, naming the limit no trial met, when nothing fits.",
    )
    _add_stored_study_options(pick)
    pick.add_argument("--prefer", choices=PREFERENCES, default="accuracy", help="what to favour (default: accuracy)")
    pick.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    pick.set_defaults(func=_cmd_pick)

    export = commands.add_parser(
        "export",
        help="rebuild a trial's pruned model and write weights, torch.export and ONNX programs and a model card",
        description="Rebuild the pruned model of --trial N (or of the trial `pick` chooses for the budget) "
        "from its policy and kept fine-tuned weights, check it against the recorded figures and PyTorch's "
        "outputs, and write a directory that autoprune.load() reads.",
    )
    _add_stored_study_options(export)
    export.add_argument("--trial", type=int, help="trial number (default: pick by budget and --prefer)")
    export.add_argument("--prefer", choices=PREFERENCES, default="accuracy", help="as for pick (without --trial)")
    export.add_argument("--out", help="output directory (default: exports/<study>-trial-<N>)")
    export.add_argument(
        "--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune N more epochs before export"
    )
    export.add_argument("--int8", action="store_true", help=INT8_HELP)
    export.set_defaults(func=_cmd_export)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a trial's pruned model to convergence, then export it",
        description="Train the pruned model of --trial N (or of the trial `pick` chooses for the budget) "
        "from its kept weights for --epochs (default 20) or --steps, on one cosine schedule, distilling "
        "from the base model when asked (default: the study's trial.distill_weight). A checkpoint is written "
        "after every epoch: run the same command again after a kill and it continues where it stopped. "
        "Ends with an export, as `autoprune export` writes it, and the test accuracy of model and base.",
    )
    _add_stored_study_options(finetune)
    finetune.add_argument("--trial", type=int, help="trial number (default: pick by budget and --prefer)")
    finetune.add_argument("--prefer", choices=PREFERENCES, default="accuracy", help="as for pick (without --trial)")
    length = finetune.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the train split (default: 20)")
    length.add_argument("--steps", type=int, help="optimizer steps instead of epochs")
    finetune.add_argument("--lr", type=float, help="peak learning rate (default: the trial's)")
    finetune.add_argument(
        "--distill-weight",
        type=float,
        metavar="ALPHA",
        help="α of the distillation loss, 0 to 1 (default: the study's)",
    )
    finetune.add_argument(
        "--distill-temperature", type=float, metavar="T", help="T of the distillation loss (default: the study's)"
    )
    finetune.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N (default: the study's)")
    finetune.add_argument("--out", help="output directory (default: exports/<study>-trial-<N>-finetuned)")
    finetune.add_argument(
        "--fresh", action="store_true", help="discard the checkpoint of an earlier run of this recipe and start again"
    )
    finetune.add_argument("--int8", action="store_true", help=INT8_HELP)
    finetune.set_defaults(func=_cmd_finetune)

    init = commands.add_parser(
        "init",
        help="write a commented study file for your model and data, sized for this machine",
        description="Build the model for the data, time a few fine-tune steps on this machine and write a "
        "commented study file whose trial count and fine-tune length fit an overnight run; print the command "
        "that runs it.",
    )
    init.add_argument(
        "--model", default="digits_resnet", help="model.name: built-in, torchvision:NAME or module:function"
    )
    init.add_argument("--data", default="digits", help="data.name (autoprune datasets lists them)")
    init.add_argument("--root", help="data.root: the folder the data is read from")
    init.add_argument("--image-size", type=int, default=0, help="data.image_size (0: the data's own)")
    init.add_argument("--checkpoint", help="model.checkpoint: your trained weights (a state_dict file)")
    init.add_argument("--name", help="study.name (default: the name of --out, else 'study')")
    init.add_argument("--out", help="the study file to write (default: <name>.toml, so study.toml)")
    init.add_argument("--device", default="auto", help="where to time the steps: auto (default), cpu, cuda")
    init.add_argument("--force", action="store_true", help="overwrite --out")
    init.set_defaults(func=_cmd_init)

    for kind, what in (
        ("models", "model.name"),
        ("datasets", "data.name"),
        ("scorers", "space.scorers and space.default_scorer"),
    ):
        listing = commands.add_parser(
            kind,
            help=f"list the {kind} a study file can name",
            description=f"List the names {what} takes, one line each; PATTERN is a shell-style glob "
            "(quote it: 'resnet*').",
        )
        listing.add_argument("pattern", nargs="?", metavar="PATTERN", help="only the names matching this glob")
        listing.set_defaults(func=_cmd_list)

    sensitivity = commands.add_parser(
        "sensitivity",
        help="measure how much each group, pruned alone, costs the base model",
        description="Prune every group alone at each of sensitivity.ratios with the default scorer, re-estimate "
        "BatchNorm statistics and measure validation loss and accuracy, without fine-tuning. Prints the groups "
        "from least to most sensitive and writes sensitivity.csv, sensitivity.png and sensitivity.html. The "
        "analysis is cached per base model: a rerun, and a study with space.granularity = 'allocation', read it.",
    )
    _add_study_options(sensitivity)
    sensitivity.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    sensitivity.add_argument("--out", help="output folder (default: <runs_dir>/<study name>-sensitivity)")
    sensitivity.add_argument(
        "--trust-checkpoint", action="store_true", help="allow a model.checkpoint that needs full unpickling"
    )
    sensitivity.set_defaults(func=_cmd_sensitivity)

    bench = commands.add_parser(
        "bench",
        help="time a fresh study's trials and write reports/bench/<study>.md",
        description="Run the study from scratch in a scratch storage (the base model cache is reused) and "
        "write where each trial's time goes: per-phase seconds, trials per hour, peak memory, the share "
        "that is not fine-tune or evaluation, and the device. Run the same command on a GPU machine to "
        "compare.",
    )
    _add_study_options(bench)
    bench.add_argument("--trials", type=int, help="trials to run (default: the study file's study.trials)")
    bench.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    bench.add_argument("--out", help="report file (default: reports/bench/<study name>.md)")
    bench.set_defaults(func=_cmd_bench)

    compare = commands.add_parser(
        "compare",
        help="benchmark the search against uniform, global and random pruning",
        description="For one base model and data, run uniform pruning (a ratio grid), global pruning (the same "
        "grid), random search and autoprune's search, with the same trial count and fine-tune bounds, over "
        "several seeds; write reports/bench/compare-<study>/: results.csv, fronts.csv, results.md (hypervolume "
        "and best test accuracy at <= 50/25/12.5% of base MACs, mean +- std, ties) and fronts.png. "
        "A rerun resumes the stored studies made with the same settings and autoprune code (--fresh starts over).",
    )
    _add_study_options(compare)
    compare.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    compare.add_argument("--trials", type=int, help="trials per method and seed (default: the study file's)")
    compare.add_argument("--out", help="output folder (default: reports/bench/compare-<study name>)")
    compare.add_argument("--runs", help="folder of the studies' storage and weights (default: runs/compare-<name>)")
    compare.add_argument("--artifacts", metavar="URL", help=ARTIFACTS_HELP)
    compare.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    compare.add_argument("--fresh", action="store_true", help="delete the stored studies of --runs first")
    compare.add_argument(
        "--final-epochs",
        type=int,
        default=0,
        metavar="E",
        help="also fine-tune every method's pick at each level for E epochs, as autoprune finetune does, the same "
        "recipe for all, and report its test accuracy after that; uniform's and one_shot's picks again, longer "
        "by the samples autoprune's search spent (default: 0, none)",
    )
    compare.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="run only these of uniform, global, one_shot (the one-shot allocation), random, autoprune "
        "(default: all), e.g. autoprune after a change to the search",
    )
    compare.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME:SECTION.KEY=VALUE[;...]",
        help="an extra method: autoprune with these overrides, e.g. 'tpe:study.sampler=\"tpe\"' (repeatable)",
    )
    compare.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    args.command_line = redact_text(shlex.join(["autoprune", *argv]))
    configure_cli_logging(args.verbose, quiet=args.quiet)
    install_log_redaction()
    try:
        return int(args.func(args))
    except AutopruneError as exc:
        print(f"autoprune: error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autoprune models | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a read-only or full folder or database: one line; anything else is a bug
        from autoprune.search.storage import storage_fault

        fault = storage_fault(exc)
        if fault is None:
            raise
        print(f"autoprune: error: {fault}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
