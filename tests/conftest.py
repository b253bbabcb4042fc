"""Shared test helpers: tiny, fast settings for the embedded digits study."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "studies" / "digits.toml"


def tiny_overrides(runs_dir: Path) -> list[str]:
    """``--set`` overrides that keep a digits study to a few seconds on the CPU."""
    return [
        f"study.runs_dir='{runs_dir.as_posix()}'",
        "train.epochs=3",
        "space.finetune_steps_min=2",
        "space.finetune_steps_max=6",
        "space.calibration_batches=1",
    ]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"
