"""The final-headroom benchmark: candidates at one target, their cheap scores, their final fine-tunes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import DIGITS, tiny_overrides

from autoprune.bench import final_headroom
from autoprune.bench.final_headroom import SCORES, kl_to_base, main
from autoprune.data import Split


def test_kl_to_base_is_zero_for_the_same_model_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3)
    split = Split(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    assert kl_to_base(base, base, split, 4) == pytest.approx(0.0, abs=1e-7)
    other = torch.nn.Linear(4, 3)
    with torch.no_grad():
        p = torch.log_softmax(base(split.x), 1)
        q = torch.log_softmax(other(split.x), 1)
        expected = float((p.exp() * (p - q)).sum(1).mean())  # KL(base ‖ other), by its definition
    assert kl_to_base(other, base, split, 4) == pytest.approx(expected, rel=1e-5)


def test_every_candidate_is_scored_and_fine_tuned_and_a_rerun_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "final-headroom-12.5"
    sets = [
        *tiny_overrides(tmp_path / "runs"),
        "space.granularity='allocation'",
        "sensitivity.ratios=[0.3, 0.6]",
        "sensitivity.samples=100",
        "data.batch_size=256",  # a few steps per epoch: each final fine-tune is short
    ]
    argv = [str(DIGITS), "--level", "30", "--perturbed", "1", "--random", "1", "--epochs", "1", "2"]
    argv += ["--long-epochs", "3", "--long-top", "1", "--seeds", "2", "--calibration", "64", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    with Path(f"{out}.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = ["uniform", "one-shot", "perturbed-0", "random-0"]
    scored = {(r["candidate"], r["what"]) for r in rows if r["epochs"] == "0"}
    assert scored == {(n, s) for n in names for s in SCORES}
    shares = {float(r["macs_share"]) for r in rows if r["what"] == "acc"}
    assert max(shares) <= 0.30 * 1.02 and min(shares) >= 0.30 * 0.9  # every candidate at the one target
    finals = sorted((r["candidate"], int(r["epochs"]), int(r["seed"])) for r in rows if r["what"] == "final")
    expected = [(n, e, 0) for n in names for e in (1, 2)]
    expected += [(n, e, 1) for n in names[:2] for e in (1, 2)]  # uniform and one-shot on a second seed
    best_other = max(
        names[2:],
        key=lambda n: next(
            float(r["value"]) for r in rows if (r["candidate"], r["what"], r["epochs"]) == (n, "final", "2")
        ),
    )
    expected += [(n, 3, 0) for n in [*names[:2], best_other]]  # the long fine-tune: the top one besides them
    assert finals == sorted(expected)
    assert all(0.0 < float(r["test"]) <= 1.0 for r in rows if r["what"] == "final")
    text = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "| fine-tune | one-shot − uniform |" in text
    assert "| kl_bn |" in text and "(n 4)" in text and "Command: `python -m autoprune.bench.final_headroom" in text

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun reads the rows already there")

    monkeypatch.setattr(final_headroom.Bench, "scores", no_run)
    monkeypatch.setattr(final_headroom.Bench, "final", no_run)
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
