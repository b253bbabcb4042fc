"""Benchmark: the final fine-tune of the model picked under a budget, with and without distillation,
against the unpruned base model, on the test split.

It exports the trial ``pick`` chooses (most accurate on validation within the budget) as searched,
then runs the final fine-tune of ``autoprune finetune`` on it once per distillation weight, all with
the same length, learning rate and temperature, and writes a table of validation and test
accuracy, MACs and training time to ``<out>/results.md``::

    python -m autoprune.bench.finetune --storage URL --study NAME [--max-macs 25%] [--epochs 10]
        [--distill-weights 0 0.5] [--distill-temperature 4] [--device DEVICE] [--out FOLDER] [--exports FOLDER]

The models go to ``<exports>/as-searched`` and ``<exports>/alpha-<α>``; a rerun
continues from the checkpoints a killed run left, and a finished one does not train again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from autoprune.bench.timing import device_name
from autoprune.budget import Budget, pick
from autoprune.results.export import export_trial
from autoprune.results.finetune import FinetuneSettings
from autoprune.results.rows import front_rows
from autoprune.search.opening import load_stored_study, resolve_device
from autoprune.search.record import StudyRecord

COMMAND = "python -m autoprune.bench.finetune"


def run(args: argparse.Namespace, exports: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The picked trial exported as searched, then fine-tuned and exported once per distillation weight;
    what each export recorded."""
    study = load_stored_study(args.storage, args.study)
    record = StudyRecord.from_study(study)
    budget = Budget.from_mapping({"max_macs": args.max_macs})
    choice = pick([row.to_dict() for row in front_rows(study)], budget.resolve(record.base.to_dict()), "accuracy")
    print(f"picked {choice.reason}")
    device = resolve_device(args.device or record.config.study.device)

    def exported(folder: Path, settings: FinetuneSettings | None) -> dict[str, Any]:
        export_trial(study, choice.trial, folder, storage=args.storage, finetune=settings, budget=budget, device=device)
        meta: dict[str, Any] = json.loads((folder / "policy.json").read_text(encoding="utf-8"))
        return meta

    searched = {
        **exported(exports / "as-searched", None),
        "base_training": record.config.to_dict()["train"],
        "machine": device_name(device),
    }
    rows = []
    for alpha in args.distill_weights:
        settings = FinetuneSettings(
            epochs=args.epochs, distill_weight=alpha, distill_temperature=args.distill_temperature
        )
        rows.append({"alpha": alpha, **exported(exports / f"alpha-{alpha:g}", settings)})
    return searched, rows


def table(searched: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base, fig = searched["base"], searched["figures"]

    def line(model: str, alpha: str, fig: dict[str, Any], seconds: str) -> str:
        return (
            f"| {model} | {alpha} | {fig['accuracy']:.4f} | {fig['test_accuracy']:.4f} "
            f"| {100 * (fig['test_accuracy'] - base['test_accuracy']):+.2f} pt "
            f"| {100 * fig['macs'] / base['macs']:.1f} | {seconds} |"
        )

    return "\n".join(
        [
            "| model | distillation α | val acc | test acc | test acc − base | MACs % of base | training time |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| base (unpruned) | – | {base['accuracy']:.4f} | {base['test_accuracy']:.4f} | – | 100.0 | – |",
            line(f"trial {searched['trial']} as searched", "–", fig, "–"),
            *(
                line(
                    f"trial {row['trial']}, final fine-tune",
                    f"{row['alpha']:g}",
                    row["figures"],
                    f"{row['final_finetune']['seconds']:.0f} s",
                )
                for row in rows
            ),
        ]
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="Optuna storage URL of the stored study")
    parser.add_argument("--study", required=True, help="study name in --storage")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's)")
    parser.add_argument("--max-macs", default="25%", help="budget the model is picked under (default: 25%%)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every final fine-tune (default: 10)")
    parser.add_argument("--distill-weights", type=float, nargs="+", default=[0.0, 0.5], metavar="ALPHA")
    parser.add_argument("--distill-temperature", type=float, default=4.0, metavar="T")
    parser.add_argument("--out", help="folder of results.md (default: reports/bench/finetune-<study>)")
    parser.add_argument("--exports", help="folder of the exported models (default: runs/finetune-<study>)")
    return parser.parse_args(argv)


def bench(argv: list[str]) -> int:
    args = parse(argv)
    out = Path(args.out) if args.out else Path("reports") / "bench" / f"finetune-{args.study}"
    out.mkdir(parents=True, exist_ok=True)
    searched, rows = run(args, Path(args.exports) if args.exports else Path("runs") / f"finetune-{args.study}")
    recipe = rows[0]["final_finetune"]["recipe"]
    text = "\n".join(
        [
            f"# Final fine-tune of the model picked at ≤ {args.max_macs} MACs: study `{searched['study']}`",
            "",
            f"Command: `{COMMAND} {shlex.join(argv)}`",
            "",
            f"Machine: {searched['machine']}, torch {torch.__version__}",
            "",
            f"Recipe of every run: {recipe['steps']} steps ({args.epochs} epochs of {recipe['steps_per_epoch']} "
            f"batches of {recipe['batch_size']}), lr {recipe['lr']:.3g} (the trial's) on one cosine schedule, "
            f"seed {recipe['seed']}, distillation temperature {args.distill_temperature:g}; test accuracy on "
            "the test split, which neither the search nor the fine-tune saw.",
            "",
            f"The base model is the study's: {searched['base_training']['epochs']} epochs at lr "
            f"{searched['base_training']['lr']:g} on the same {searched['splits']['train']:,}-image train split; "
            "the final fine-tunes train the pruned model on that split too.",
            "",
            table(searched, rows),
            "",
        ]
    )
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(bench(sys.argv[1:]))
