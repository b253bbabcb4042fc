"""The ``autoprune`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from autoprune._logging import configure_cli_logging
from autoprune.errors import AutopruneError

EXIT_USAGE = 2


def _fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def format_front(rows: Sequence[dict[str, Any]]) -> str:
    """The front as a fixed-width text table."""
    header = [
        "trial",
        "val acc",
        "MACs",
        "MACs %",
        "size",
        "size %",
        "params %",
        "ft steps",
        "prune steps",
        "scorer",
        "note",
    ]
    lines = [
        [
            str(r["trial"]),
            f"{r['accuracy']:.4f}",
            _fmt_count(r["macs"]),
            f"{r['macs_pct']:.1f}",
            _fmt_count(r["size"]) + "B",
            f"{r['size_pct']:.1f}",
            f"{r['params_pct']:.1f}",
            str(r["finetune_steps"]),
            str(r["prune_steps"]),
            r["scorer"],
            "" if r["baseline"] is None else f"uniform baseline {r['baseline']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i < 9 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
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


def _cmd_search(args: argparse.Namespace) -> int:
    import optuna

    from autoprune.config import load_config
    from autoprune.study import front_rows, resolve_device, run_study

    overrides = list(args.overrides)
    for key, value in (
        ("trials", args.trials),
        ("timeout", args.timeout),
        ("seed", args.seed),
        ("device", args.device),
    ):
        if value is not None:
            overrides.append(f"study.{key}={value!r}" if isinstance(value, str) else f"study.{key}={value}")
    config = load_config(args.study_file, overrides)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(config, storage=args.storage, device=resolve_device(config.study.device))
    rows = front_rows(study)
    print(
        f"\nPareto front of study {study.study_name!r} ({len(rows)} of {len(study.trials)} trials; "
        f"objectives: {', '.join(config.study.objectives)}):"
    )
    print(format_front(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Search structured-pruning policies with Optuna and report the Pareto front "
        "of accuracy against MACs and size.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug output")
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
    search.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    search.add_argument("--seed", type=int, help="seed of the sampler, fine-tuning and random scorer (study.seed)")
    search.set_defaults(func=_cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli_logging(args.verbose)
    try:
        return int(args.func(args))
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
