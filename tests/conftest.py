"""Shared test helpers: tiny, fast settings for the embedded digits study."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune.config import StudyConfig, apply_overrides, config_from_dict

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


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny tensors: threads only add overhead (and spin on a busy machine). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
