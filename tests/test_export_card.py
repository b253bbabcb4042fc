"""The model card tells the truth: which test split, the subset, the ratio each group lost, the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.results.export import ExportResult, model_card
from autoprune.trial.metrics import Measurement

FIGURES = {"accuracy": 0.9, "macs": 500, "params": 50, "size": 400}


def meta(data: dict[str, Any], own_test_set: bool) -> dict[str, Any]:
    """policy.json of an export: a global policy at target 0.5 that left its two groups unequal."""
    ratios = {"a": 0.5, "b": 0.5}
    return {
        "study": "s",
        "trial": 3,
        "model": {"name": "fmnist_cnn", "num_classes": 10, "in_channels": 1, "image_size": 28},
        "policy": {
            "ratios": ratios,
            "group_bias": dict.fromkeys(ratios, 0.0),
            "scorer": "l1",
            "finetune_steps": 10,
            "lr": 0.01,
            "prune_steps": 1,
            "global_ranking": True,
        },
        "groups": {"a": 16, "b": 32},
        "kept": {"a": 4, "b": 24},
        "example_input": [1, 1, 28, 28],
        "preprocessing": {
            "mean": [0.286],
            "std": [0.353],
            "input": "float32 NCHW, pixel values scaled to [0, 1]",
            "built_into": ["model.pt2", "model.onnx"],
        },
        "data": {"val_fraction": 0.2, "test_fraction": 0.2, "subset": 0, **data},
        "splits": {"train": 48000, "val": 12000, "test": 10000, "own_test_set": own_test_set},
        "figures": {**FIGURES, "test_accuracy": 0.88},
        "base": {"accuracy": 0.92, "macs": 1000, "params": 100, "size": 800},
        "final_finetune": None,
        "budget": {},
    }


RESULT = ExportResult(Path("out"), 3, Measurement(**FIGURES), 0.88, 0.0, 1e-7, "onnx.checker passed")


def test_card_names_the_datasets_own_test_set() -> None:
    card = model_card(meta({"name": "fashion_mnist"}, own_test_set=True), RESULT)
    assert "- test split: the dataset's own test set, 10,000 images (only for this card" in card
    assert "test split 20%" not in card and "20% of the data" not in card
    assert "- validation split: 20% of the training data, 12,000 images (scored the search)" in card
    assert "data.subset" not in card


def test_card_names_the_held_out_fraction_and_the_subset() -> None:
    card = model_card(meta({"name": "digits", "subset": 1000, "test_fraction": 0.25}, own_test_set=False), RESULT)
    assert "- test split: 25% of the data, 10,000 images, held out before the validation split" in card
    assert "Dataset `digits`, its first 1,000 training images only (`data.subset`)." in card


def test_card_shows_the_ratio_each_group_lost() -> None:
    card = model_card(meta({"name": "fashion_mnist"}, own_test_set=True), RESULT)
    assert "| `a` | 4 / 16 | 0.750 |" in card
    assert "| `b` | 24 / 32 | 0.250 |" in card
    assert "target 0.500 of all prunable channels removed" in card


def test_card_states_the_input() -> None:
    card = model_card(meta({"name": "fashion_mnist"}, own_test_set=True), RESULT)
    assert (
        "`model.pt2` and `model.onnx` take float32 NCHW, pixel values scaled to [0, 1] (1×28×28 per "
        "image) and normalize it first, per channel: `(x - mean) / std` with mean [0.286] and std [0.353]."
    ) in card
    assert "autoprune.load('.', preprocessing=True)" in card


def test_card_tells_the_final_finetune_and_the_base_test_accuracy() -> None:
    finetuned = meta({"name": "fashion_mnist"}, own_test_set=True)
    finetuned["base"]["test_accuracy"] = 0.91
    recipe = {
        "steps": 750,
        "steps_per_epoch": 375,
        "lr": 0.01,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "seed": 0,
        "distill_weight": 0.5,
        "distill_temperature": 4.0,
    }
    history = [
        {"epoch": 1, "step": 375, "loss": 0.5, "val_accuracy": 0.87, "seconds": 30.0},
        {"epoch": 2, "step": 750, "loss": 0.4, "val_accuracy": 0.89, "seconds": 61.0},
    ]
    finetuned["final_finetune"] = {"recipe": recipe, "history": history, "seconds": 61.0}
    card = model_card(finetuned, RESULT)
    assert "Test accuracy of the pruned model: **0.8800**, of the base model 0.9100 (test split" in card
    assert (
        "`autoprune finetune` trained the pruned model further: 750 steps (2 epochs) of batch 128 at lr 0.01, "
        "cosine, distilled from the base model (α 0.5, T 4), in 1m 01s."
    ) in card
    assert "| 2 | 750 | 0.4000 | 0.8900 |" in card
    assert "accuracy re-measured after the final fine-tune" in card
    assert "## Final fine-tune" not in model_card(meta({"name": "fashion_mnist"}, own_test_set=True), RESULT)
