"""The language-model benchmark end to end on a tiny corpus: uniform pruning, the one-shot allocation
and the two searches on a Llama trained from scratch (the ``tiny_lm`` fixture)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from test_allocation import synthetic

import autoprune
from autoprune.bench import lm_allocation
from autoprune.models import build_model
from autoprune.models._hf import build_hf
from autoprune.trial.allocation import Allocator
from autoprune.trial.cost import CostModel
from autoprune.trial.surgery import TracedModel

pytest.importorskip("transformers")


def test_train_then_allocate(tmp_path: Path, tiny_lm: tuple[Path, str]) -> None:
    model, pattern = tiny_lm
    text = [pattern]
    common = ["--block", "32", "--threads", "1"]
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    assert "Perplexity: validation" in (model / "training.md").read_text(encoding="utf-8")

    out = tmp_path / "report.md"
    args = ["--model", f"hf:{model}", "--text", *text, "--seeds", "0", "--levels", "50", "--recovery", "0", "2"]
    # 10 TPE trials on 4 blocks measure 40 blocks: one generation of the evolution (8 screens and 2 measures)
    small = ["--search-trials", "10", "--search-share", "at-most", "--calibration", "4", "--batch", "2"]
    lm_allocation.main([*args, *small, *common, "--out", str(out), "--export", str(tmp_path / "picks")])
    rows = list(csv.DictReader(out.with_suffix(".csv").open(encoding="utf-8")))
    assert [(r["method"], r["recovery_steps"]) for r in rows] == [
        (m, s) for m in ("uniform", "one-shot", "search", "switch") for s in ("0", "2")
    ]
    # at or under the level, each method: a 28 k-parameter model's steps are coarse
    assert all(0.45 <= float(r["params_share"]) <= 0.5 for r in rows)
    unrecovered = {r["method"]: r for r in rows if r["recovery_steps"] == "0"}
    # both searches start from the one-shot allocation and keep the lowest calibration KL
    for searched in ("search", "switch"):
        assert float(unrecovered[searched]["calibration_kl"]) <= float(unrecovered["one-shot"]["calibration_kl"])
    assert "| 50 % | 0 | one-shot |" in out.read_text(encoding="utf-8")
    # each method's pick, exported after its recovery, reloads as a transformers model with its widths
    picked = autoprune.load(tmp_path / "picks" / "search-50")
    assert type(picked).__name__ == "LlamaForCausalLM"
    share = sum(p.numel() for p in picked.parameters()) / sum(p.numel() for p in build_hf(f"hf:{model}").parameters())
    assert f"{share:.4f}" == [r for r in rows if r["method"] == "search"][-1]["params_share"]
    assert {p.name for p in (tmp_path / "picks").iterdir()} == {"uniform-50", "one-shot-50", "search-50", "switch-50"}


def test_the_evolution_moves_capacity_where_the_fitness_wants_it_at_the_same_cost() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_small", num_classes=10, in_channels=1, image_size=28).eval()
    cost = CostModel.fit(TracedModel(model, torch.randn(1, 1, 28, 28)))
    allocator = Allocator(synthetic(cost.base, dict.fromkeys(cost.groups, 1.0)), cost, figure="params")
    weights = dict(zip(cost.groups, np.random.default_rng(0).uniform(0.0, 2.0, len(cost.groups)), strict=True))

    def fitness(kept: dict[str, int]) -> float:  # the loss of each group's channels, weighed unequally
        return sum(float(w) * (1 - kept[g] / cost.base[g]) for g, w in weights.items())

    def share(kept: dict[str, int]) -> float:
        return float(allocator.fraction(np.array([kept[g] for g in allocator.groups], dtype=float)))

    target = allocator.target_at_most(0.25, (0.0, 1.0))
    one_shot = allocator.solve(target, 1.0, {})
    kept, value = lm_allocation.evolve(allocator, target, fitness, fitness, generations=30, seed=0, ceiling=0.25)
    assert value == fitness(kept) < 0.9 * fitness(one_shot)
    assert share(kept) <= 0.25 and share(kept) >= 0.9 * share(one_shot)  # capacity moved, not given up
    assert lm_allocation.evolve(allocator, target, fitness, fitness, generations=30, seed=0, ceiling=0.25) == (
        kept,
        value,
    )
