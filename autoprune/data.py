"""Datasets, split into train / validation / test, held as tensors.

The validation split is always carved out of the training data (stratified, seeded): the search
scores trials on it. The test split is only for the final report of chosen models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from autoprune.config import DataSection
from autoprune.registry import Registry


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in order, for evaluation."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def shuffled_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless full batches, reshuffled every epoch by ``generator`` (a CPU generator)."""
        n = len(self)
        size = min(batch_size, n)
        while True:
            order = torch.randperm(n, generator=generator).to(self.x.device)
            for start in range(0, n - size + 1, size):
                idx = order[start : start + size]
                yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    def to(self, device: torch.device) -> DataSplits:
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


DATASETS: Registry = Registry("dataset")


def _stratified_splits(x: np.ndarray, y: np.ndarray, cfg: DataSection) -> DataSplits:
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.split_seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=cfg.val_fraction, stratify=y_rest, random_state=cfg.split_seed
    )
    mean, std = float(x_train.mean()), float(x_train.std())

    def split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.from_numpy((xs - mean) / std).float(), torch.from_numpy(ys).long())

    return DataSplits(split(x_train, y_train), split(x_val, y_val), split(x_test, y_test), int(y.max()) + 1)


@DATASETS.register("digits")
def digits(cfg: DataSection) -> DataSplits:
    """scikit-learn's embedded ``load_digits``: 1,797 8×8 grey images, 10 classes, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None, :, :] / 16.0
    return _stratified_splits(images, bunch.target.astype(np.int64), cfg)


def load_data(cfg: DataSection) -> DataSplits:
    """Build the named dataset's splits (on the CPU)."""
    return DATASETS.get(cfg.name)(cfg)


__all__ = ["DATASETS", "DataSplits", "Split", "load_data"]
