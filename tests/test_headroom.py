"""The headroom benchmark: uniform ratios, random allocations and the sensitivity allocation fine-tuned
within one MACs band."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import DIGITS, tiny_overrides

from autoprune.bench.headroom import Headroom, main
from autoprune.config import load_config
from autoprune.search.opening import resolve_device
from autoprune.search.prepare import prepare


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs folder for the module, so the digits base model is trained once."""
    return tmp_path_factory.mktemp("headroom") / "runs"


def test_allocations_are_bisected_into_the_band(shared_runs: Path) -> None:
    config = load_config(DIGITS, tiny_overrides(shared_runs))
    prepared = prepare(config, resolve_device("cpu"))
    groups = [g.name for g in prepared.groups]
    headroom = Headroom(prepared.evaluator, groups, level=30.0)
    offsets = {g: (0.5 if i % 2 else -0.5) for i, g in enumerate(groups)}
    ratio = headroom.targeted(offsets)
    assert ratio is not None
    policy = headroom.policy(ratio, offsets, seed=0)
    assert len(set(policy.ratios.values())) > 1  # the offsets spread the ratios around the target
    share = headroom.macs_share(policy)
    assert 0.225 < share <= 0.30
    run = headroom.run("allocation 0", policy)
    assert run.macs_pct == pytest.approx(100 * share)  # the fine-tuned model has the MACs the bisection measured
    assert 0.0 <= run.val <= 1.0 and 0.0 <= run.test <= 1.0


def test_report_compares_the_best_uniform_ratio_with_the_best_allocation(shared_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "headroom.md"
    sets = [a for o in tiny_overrides(shared_runs) for a in ("--set", o)]
    args = [str(DIGITS), "--level", "30", "--samples", "3", "--seeds", "2", "--top", "1", *sets, "--out", str(out)]
    assert main(args) == 0
    text = out.read_text(encoding="utf-8")
    assert "| uniform, best ratio on validation (uniform 0." in text
    assert "| random allocation, best on validation (allocation " in text
    sensitivity = re.search(r"\| sensitivity allocation \(sensitivity\) \| (\d+\.\d) \|", text)
    assert sensitivity is not None and 22.5 < float(sensitivity.group(1)) <= 30.0  # in the band
    uniform = _test_mean(text, r"uniform, best ratio on validation \(uniform 0\.\d+\)")
    rows = {"random allocation": r"random allocation, best on validation \(allocation \d+\)"}
    rows["sensitivity allocation"] = r"sensitivity allocation \(sensitivity\)"
    for label, row in rows.items():
        gain = re.search(
            rf"Headroom \({label} − uniform, test, picked on validation\): \*\*([+-]\d+\.\d\d) points", text
        )
        assert gain is not None  # the headline is the difference of the two rows' test means
        assert float(gain.group(1)) == pytest.approx(_test_mean(text, row) - uniform, abs=0.011)


def _test_mean(report: str, row: str) -> float:
    """The test mean of the table row labelled ``row`` (a pattern)."""
    found = re.search(rf"^\| {row} \| [^|]+ \| [^|]+ \| (\d+\.\d\d) ± \d+\.\d\d \|$", report, re.MULTILINE)
    assert found is not None, row
    return float(found.group(1))
