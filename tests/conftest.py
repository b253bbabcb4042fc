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


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny Llama (2 layers, hidden 32, 4 heads on 2 key/value heads) and its tokenizer, trained from
    scratch for 20 steps on a generated corpus of Python files: its folder and the corpus's pattern."""
    pytest.importorskip("transformers")
    from autoprune.bench import train_lm

    root = tmp_path_factory.mktemp("tiny-lm")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        body = "\n".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}" for j in range(40))
        (corpus / f"m{i}.py").write_text(body, encoding="utf-8")
    pattern = str(corpus / "*.py")
    shape = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "64"]
    steps = ["--steps", "20", "--vocab", "300", "--batch", "4", "--block", "32", "--threads", "1"]
    train_lm.main(["--text", pattern, "--out", str(root / "llama"), *steps, *shape])
    return root / "llama", pattern
