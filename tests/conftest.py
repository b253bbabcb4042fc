"""Shared test helpers: tiny, fast settings for the embedded digits study."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: tiny tensors, and pytest-xdist runs a worker per core

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from autoprune.config import StudyConfig, apply_overrides, config_from_dict  # noqa: E402

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
        "study.pick_floor=0",  # six fine-tune steps leave many trials near chance: offer every front trial
    ]


def tiny_config(runs_dir: Path, name: str, *extra: str) -> StudyConfig:
    """The digits study with :func:`tiny_overrides`, named ``name``, plus ``section.key=value`` overrides."""
    return config_from_dict(apply_overrides({}, [*tiny_overrides(runs_dir), f"study.name='{name}'", *extra]))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


torch.set_num_threads(1)
"""Tiny tensors: threads only add overhead, and spin when pytest-xdist's workers share the cores. The
processes the tests start inherit ``OMP_NUM_THREADS`` = 1."""
