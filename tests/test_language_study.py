"""A language study end to end through the command line: `autoprune search` on a Llama trained from
scratch (the ``tiny_lm`` fixture), its report, and the export of a trial that reloads and scores as the
search measured it."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import autoprune
from autoprune.cli import EXIT_USAGE, main
from autoprune.config import config_from_dict
from autoprune.errors import ConfigError
from autoprune.models._hf import load_tokenizer
from autoprune.search.language import RECORD, LanguageStudy, stored_config
from autoprune.search.opening import load_stored_study
from autoprune.text import load_text
from autoprune.trial.language import spaced

pytest.importorskip("transformers")


def _study_file(
    tmp_path: Path,
    model: Path,
    pattern: str,
    trials: int = 6,
    objectives: str = '["perplexity", "params"]',
    more: str = "",
) -> Path:
    path = tmp_path / "lm.toml"
    path.write_text(
        f"""
[study]
name = "lm"
trials = {trials}
objectives = {objectives}
baselines = ["50%"]
runs_dir = {json.dumps(str(tmp_path / "runs"))}

[model]
name = {json.dumps(f"hf:{model}")}

[data]
name = "text"
files = [{json.dumps(pattern)}]
block = 32
val_fraction = 0.05
test_fraction = 0.05
batch_size = 4

[space]
target = "params"

[sensitivity]
ratios = [0.25, 0.5, 0.75]

[trial]
latency_runtime = "onnxruntime"
latency_repeats = 3

[language]
calibration_blocks = 4
eval_blocks = 16
recovery_steps = 2
{more}""",
        encoding="utf-8",
    )
    return path


def test_search_report_export(tmp_path: Path, tiny_lm: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    model, pattern = tiny_lm
    study_file = _study_file(tmp_path, model, pattern)
    assert main(["search", str(study_file)]) == 0
    assert "Pareto front of language study 'lm'" in capsys.readouterr().out
    study = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6
    base = study.user_attrs[RECORD]["base"]
    # the baselines come first: uniform pruning and the one-shot allocation, both at or under half the parameters
    baselines = {t.user_attrs["baseline"]: t for t in done if "baseline" in t.user_attrs}
    assert set(baselines) == {"uniform 50%", "allocation 50%"}
    assert all(t.user_attrs["params"] <= 0.5 * base["params"] for t in baselines.values())
    assert baselines["uniform 50%"].params["mix"] == 0.0 and baselines["allocation 50%"].params["mix"] == 1.0
    assert baselines["uniform 50%"].user_attrs["kept"] != baselines["allocation 50%"].user_attrs["kept"]
    for t in done:  # each key/value head keeps as many query heads as the other: a multiple of 2
        assert all(h % 2 == 0 for h in t.user_attrs["widths"]["heads"])

    assert main(["report", str(study_file), "--out", str(tmp_path / "report")]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "trials.csv").open(encoding="utf-8")))
    assert sorted(int(r["trial"]) for r in rows) == [t.number for t in done]
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    blocks = study.user_attrs[RECORD]["blocks"]  # what the corpus holds, up to the settings' 16 and 4
    assert 0 < blocks["validation"] <= 16 and blocks["calibration"] == 4
    assert f"perplexity on {blocks['validation']} validation blocks of 32 tokens, KL on 4 calibration" in summary
    members = [r for r in rows if r["front"] == "True"]
    assert members and all(f"| {r['trial']} |" in summary for r in members)
    # each front member timed on ONNX Runtime, its figure per token a number in its row
    assert "median of 3 on onnxruntime (CPU" in summary
    front_rows = [line.split(" | ") for line in summary.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(front_rows) >= len(members) and all(float(cells[8]) > 0 for cells in front_rows[: len(members)])
    assert (tmp_path / "report" / "front.png").stat().st_size > 0

    number = int(min(members, key=lambda r: float(r["perplexity"]))["trial"])
    trial = next(t for t in done if t.number == number)
    out = tmp_path / "export"
    assert main(["export", str(study_file), "--trial", str(number), "--out", str(out)]) == 0
    assert "µs per token" in capsys.readouterr().out
    reloaded = autoprune.load(out).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == trial.user_attrs["params"]
    # the trial's perplexity is exp of the mean next-token cross-entropy of the model it describes, here
    # computed from the reloaded export on the validation blocks the study measured
    text = load_text([pattern], load_tokenizer(f"hf:{model}"), block=32, val_fraction=0.05, test_fraction=0.05)
    blocks = spaced(text.val, 16)
    with torch.no_grad():
        logits = reloaded(input_ids=blocks).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    assert math.exp(float(loss)) == pytest.approx(trial.user_attrs["perplexity"], rel=1e-4)
    # pick: the lowest perplexity on the front within the limits, then fewest parameters
    capsys.readouterr()
    assert main(["pick", str(study_file), "--max-params", "50%", "--json"]) == 0
    picked = json.loads(capsys.readouterr().out)
    within = [t for t in study.best_trials if t.user_attrs["params"] <= 0.5 * base["params"]]
    best = min(within, key=lambda t: t.user_attrs["perplexity"])
    assert picked["trial"] == best.number and picked["widths"] == best.user_attrs["widths"]
    assert main(["pick", str(study_file), "--prefer", "smallest"]) == 0
    smallest = min(study.best_trials, key=lambda t: t.user_attrs["params"])
    out = capsys.readouterr().out
    assert out.startswith(f"trial {smallest.number}: hidden")
    assert f"export it with: autoprune export {study_file} --trial {smallest.number}" in out
    assert main(["pick", str(study_file), "--max-params", "1%"]) == EXIT_USAGE
    assert "no front trial met max_params <= " in capsys.readouterr().err
    # an image classifier's commands say where a language study goes
    assert main(["finetune", str(study_file), "--trial", str(number)]) == EXIT_USAGE
    assert "is a language study: `autoprune report`" in capsys.readouterr().err


def test_a_rerun_adds_only_the_missing_trials(
    tmp_path: Path, tiny_lm: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model, pattern = tiny_lm
    kl_macs = '["kl", "macs"]'  # EvoPress's score against the cost per token
    assert main(["search", str(_study_file(tmp_path, model, pattern, trials=3, objectives=kl_macs))]) == 0
    assert main(["search", str(_study_file(tmp_path, model, pattern, trials=4, objectives=kl_macs))]) == 0
    study = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(t.values == [t.user_attrs["kl"], t.user_attrs["macs"]] for t in study.trials)
    changed = _study_file(tmp_path, model, pattern, trials=4, objectives=kl_macs)
    changed.write_text(changed.read_text(encoding="utf-8").replace("recovery_steps = 2", "recovery_steps = 3"))
    assert main(["search", str(changed)]) == EXIT_USAGE
    assert "differs in language.recovery_steps" in capsys.readouterr().err
    assert main(["search", str(changed), "--new-study", "--trials", "2"]) == 0  # beside it, under a free name
    again = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm-2")
    assert stored_config(again).language.recovery_steps == 3 and len(again.trials) == 2


@pytest.mark.parametrize("quality", ["perplexity", "kl"])
def test_the_switch_sampler_moves_capacity_around_the_best_at_the_level(
    tmp_path: Path, tiny_lm: tuple[Path, str], quality: str
) -> None:
    model, pattern = tiny_lm
    path = _study_file(tmp_path, model, pattern, trials=5, objectives=f'["{quality}", "params"]')
    text = path.read_text(encoding="utf-8").replace("recovery_steps = 2", "recovery_steps = 0")
    path.write_text(text.replace('baselines = ["50%"]', 'baselines = [0.5]\nsampler = "switch"'))  # a ratio r: 1 - r
    assert main(["search", str(path)]) == 0
    study = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm")
    trials = study.trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 5 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    # a switch that lands on a measured model's widths is not measured again: every completed model differs
    assert len({json.dumps(t.user_attrs["kept"], sort_keys=True) for t in done}) == 5
    assert any(t.state.name == "PRUNED" for t in trials)  # whole heads are coarse: some switches change nothing
    for t in trials:
        if t.state.name == "PRUNED":
            assert trials[t.user_attrs["repeat_of"]].state.name == "COMPLETE"
    base_params = study.user_attrs[RECORD]["base"]["params"]
    for t in trials[2:]:  # after uniform and the one-shot at 50 %: switches of the best before it
        pick = min(
            (p for p in done if p.number < t.number and p.user_attrs["params"] <= 0.5 * base_params),
            key=lambda p: (p.user_attrs[quality], p.number),
        )
        moved = {k: t.params[k] - pick.params[k] for k in pick.params if t.params[k] != pick.params[k]}
        assert len(moved) == 2 and sum(moved.values()) == pytest.approx(0.0, abs=1e-12), moved
        assert all(k.startswith("offset.") for k in moved)
        assert t.params["target"] == pick.params["target"] and t.params["mix"] == pick.params["mix"]


def test_a_trial_cuda_has_no_memory_for_fails_and_the_study_goes_on_until_failures_repeat(
    tmp_path: Path, tiny_lm: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, pattern = tiny_lm
    real, calls = LanguageStudy.pruned, []

    def third_out_of_memory(self: LanguageStudy, kept: dict[str, int], seed: int) -> object:
        calls.append(seed)
        if len(calls) == 3:  # the first trial after the two baselines
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, kept, seed)

    monkeypatch.setattr(LanguageStudy, "pruned", third_out_of_memory)
    assert main(["search", str(_study_file(tmp_path, model, pattern, trials=3))]) == 0
    study = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].user_attrs["fail_reason"].startswith("CUDA out of memory at batch size 4 (a smaller")
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                str(_study_file(tmp_path, model, pattern, trials=3)),
                "--no-speed",
                "--no-test",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "3 completed trials" in summary and "1 trial(s) failed (2): CUDA out of memory at batch size 4" in summary
    rows = list(csv.DictReader((out / "trials.csv").open(encoding="utf-8")))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"] and rows[2]["fail_reason"].startswith("CUDA out of")

    def out_of_memory(self: LanguageStudy, kept: dict[str, int], seed: int) -> object:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(LanguageStudy, "pruned", out_of_memory)
    capsys.readouterr()
    assert main(["search", str(_study_file(tmp_path, model, pattern, trials=9)), "--set", "study.max_failures=2"]) != 0
    assert "study 'lm' stopped: its last 2 trials failed; most common reason (2 of 2): CUDA out of memory" in (
        capsys.readouterr().err
    )
    assert [t.state.name for t in load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm").trials][4:] == [
        "FAIL",
        "FAIL",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": {"name": "hf:folder"}}, "is pruned on text"),
        ({"data": {"name": "text", "files": ["*.txt"]}}, "text data prunes a language model only"),
        ({"model": {"name": "hf:folder"}, "data": {"name": "text", "files": ["*.txt"]}}, "minimizes perplexity or kl"),
        ({"data": {"name": "text"}}, "reads these files"),
        ({"study": {"objectives": ["perplexity", "macs"]}}, "perplexity and kl are a language model's"),
        (
            {
                "model": {"name": "hf:folder"},
                "data": {"name": "text", "files": ["*.txt"]},
                "study": {"objectives": ["perplexity", "params"]},
                "budget": {"max_size": "1MB"},
            },
            "takes max_params and max_macs limits only",
        ),
    ],
)
def test_language_settings_are_checked(settings: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(settings)


def test_a_budget_leaves_the_front_to_trials_within_it_and_export_picks_from_them(
    tmp_path: Path, tiny_lm: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model, pattern = tiny_lm
    study_file = _study_file(tmp_path, model, pattern, trials=8, more='\n[budget]\nmax_macs = "60%"\n')
    assert main(["search", str(study_file)]) == 0
    study = load_stored_study(f"sqlite:///{tmp_path / 'runs' / 'lm.db'}", "lm")
    base = study.user_attrs[RECORD]["base"]
    over = [t for t in study.trials if t.user_attrs["macs"] > 0.6 * base["macs"]]
    for t in study.trials:  # each trial's constraint: how far over the limit, relative to it
        assert t.user_attrs["constraints"] == [pytest.approx(t.user_attrs["macs"] / (0.6 * base["macs"]) - 1)]
    assert study.best_trials and all(t.user_attrs["macs"] <= 0.6 * base["macs"] for t in study.best_trials)
    assert over and not {t.number for t in over} & {t.number for t in study.best_trials}
    capsys.readouterr()
    assert main(["export", str(study_file), "--out", str(tmp_path / "export")]) == 0
    out = capsys.readouterr().out
    best = min(study.best_trials, key=lambda t: t.user_attrs["perplexity"])
    assert out.startswith(f"picked trial {best.number}: lowest validation perplexity")
    assert f"trial {best.number} exported to" in out
    assert main(["export", str(study_file), "--trial", str(over[0].number), "--out", str(tmp_path / "over")]) == 0
    assert f"trial {over[0].number} is beyond the study's budget (max_macs <= " in capsys.readouterr().err
    assert main(["report", str(study_file), "--no-test", "--no-speed", "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "Budget: max_macs <= " in summary and "(60% of base); the front holds the trials within it." in summary


def test_a_study_says_what_its_settings_leave_out(
    tmp_path: Path, tiny_lm: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model, pattern = tiny_lm
    study_file = _study_file(tmp_path, model, pattern, trials=1)
    assert main(["search", str(study_file), "--set", "data.block=64"]) == 0
    err = capsys.readouterr().err
    assert "study.trials = 1 runs only the first 1 of the 2 baselines" in err
    assert "data.block = 64 tokens is longer than the 32 positions" in err
