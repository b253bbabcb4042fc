"""The language-model benchmark end to end on a tiny corpus: uniform pruning, the one-shot allocation
and the search on a Llama trained from scratch (the ``tiny_lm`` fixture)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import autoprune
from autoprune.bench import lm_allocation
from autoprune.models._hf import build_hf

pytest.importorskip("transformers")


def test_train_then_allocate(tmp_path: Path, tiny_lm: tuple[Path, str]) -> None:
    model, pattern = tiny_lm
    text = [pattern]
    common = ["--block", "32", "--threads", "1"]
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    assert "Perplexity: validation" in (model / "training.md").read_text(encoding="utf-8")

    out = tmp_path / "report.md"
    args = ["--model", f"hf:{model}", "--text", *text, "--seeds", "0", "--levels", "50", "--recovery", "0", "2"]
    small = ["--search-trials", "4", "--search-share", "at-most", "--calibration", "4", "--batch", "2"]
    lm_allocation.main([*args, *small, *common, "--out", str(out), "--export", str(tmp_path / "picks")])
    rows = list(csv.DictReader(out.with_suffix(".csv").open(encoding="utf-8")))
    assert [(r["method"], r["recovery_steps"]) for r in rows] == [
        (m, s) for m in ("uniform", "one-shot", "search") for s in ("0", "2")
    ]
    # at or under the level, each method: a 28 k-parameter model's steps are coarse
    assert all(0.45 <= float(r["params_share"]) <= 0.5 for r in rows)
    unrecovered = {r["method"]: r for r in rows if r["recovery_steps"] == "0"}
    # the search starts from the one-shot allocation and keeps the lowest calibration KL
    assert float(unrecovered["search"]["calibration_kl"]) <= float(unrecovered["one-shot"]["calibration_kl"])
    assert "| 50 % | 0 | one-shot |" in out.read_text(encoding="utf-8")
    # each method's pick, exported after its recovery, reloads as a transformers model with its widths
    picked = autoprune.load(tmp_path / "picks" / "search-50")
    assert type(picked).__name__ == "LlamaForCausalLM"
    share = sum(p.numel() for p in picked.parameters()) / sum(p.numel() for p in build_hf(f"hf:{model}").parameters())
    assert f"{share:.4f}" == rows[-1]["params_share"]
    assert {p.name for p in (tmp_path / "picks").iterdir()} == {"uniform-50", "one-shot-50", "search-50"}
