"""Datasets from disk and from user code; splits, normalization, and the two batching paths."""

from __future__ import annotations

import itertools
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.config import DataSection, load_config
from autoprune.data import DataSplits, Split, crop_flip, load_data, loader_batches
from autoprune.errors import ConfigError
from autoprune.models import build_model

REPO = Path(__file__).parents[1]
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def test_fashion_mnist_loads_a_subset_from_the_shared_folder() -> None:
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST is not at {SHARED_DATA}/FashionMNIST/raw (the project's shared data folder)")
    data = load_data(DataSection(name="fashion_mnist", root=str(SHARED_DATA), subset=1000, val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (800, 200, 10_000)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
    assert not data.train.augment
    # stratified: every class is in the validation split in the training share
    counts = torch.bincount(data.val.y, minlength=10)
    assert counts.min() >= 15 and counts.max() <= 25


def test_fashion_mnist_study_file_loads_its_data() -> None:
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST is not at {SHARED_DATA}/FashionMNIST/raw (the project's shared data folder)")
    config = load_config(REPO / "studies" / "fashion_mnist.toml", [f"data.root={SHARED_DATA}", "data.subset=500"])
    data = load_data(config.data)
    model = build_model(
        config.model.name, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    assert model(data.val.x[:4]).shape == (4, 10)


def test_missing_dataset_names_the_path_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_data(DataSection(name="fashion_mnist", root=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "dataset-fashion-mnist" in message and "download=True" in message
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py/data_batch_1.*cifar-10-python.tar.gz"):
        load_data(DataSection(name="cifar10", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.root is empty"):
        load_data(DataSection(name="mnist"))


def write_cifar10(root: Path, per_batch: int = 10, test: int = 20) -> None:
    """A few random images in CIFAR-10's python pickle layout."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(n)],
            "batch_label": name,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_reads_the_pickle_files_and_augments_by_default(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load_data(DataSection(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    assert data.train.augment and not data.val.augment
    assert torch.bincount(data.val.y, minlength=10).tolist() == [1] * 10  # stratified
    off = load_data(DataSection(name="cifar10", root=str(tmp_path), augment="none", subset=30))
    assert not off.train.augment and len(off.train) + len(off.val) == 30
    # per-channel statistics of the train split, or the given ones
    assert torch.allclose(data.train.x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    given = load_data(DataSection(name="cifar10", root=str(tmp_path), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert given.train.x.min() >= -2.0 and given.train.x.max() <= 2.0


def test_cifar10_study_file_runs_on_the_few_image_set(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    config = load_config(REPO / "studies" / "cifar10_resnet56.toml", [f"data.root={tmp_path}"])
    data = load_data(config.data)
    model = build_model(config.model.name, num_classes=10, in_channels=3, image_size=data.image_size)
    x, y = next(data.train.shuffled_batches(4, torch.Generator().manual_seed(0)))
    assert data.train.augment and model(x).shape == (4, 10)


def test_validation_split_is_seeded_and_comes_from_training_data() -> None:
    a = load_data(DataSection(split_seed=1))
    b = load_data(DataSection(split_seed=1))
    c = load_data(DataSection(split_seed=2))
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x) is False  # digits has no test set: it is carved out too
    total = len(a.train) + len(a.val) + len(a.test)
    assert total == 1797


def test_crop_flip_is_exact() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3) + 1
    centre = torch.tensor([[1, 1], [1, 1]])
    assert torch.equal(crop_flip(x, centre, torch.tensor([False, False]), 1), x)
    assert torch.equal(crop_flip(x, centre, torch.tensor([False, True]), 1)[1], x[1].flip(-1))
    shifted = crop_flip(x, torch.tensor([[0, 0], [2, 2]]), torch.tensor([False, False]), 1)
    assert shifted[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    assert shifted[1, 0].tolist() == [[14, 15, 0], [17, 18, 0], [0, 0, 0]]


@pytest.mark.parametrize("augment", [False, True])
def test_device_path_and_dataloader_path_give_the_same_batches(augment: bool) -> None:
    torch.manual_seed(0)
    split = Split(torch.randn(50, 3, 8, 8), torch.randint(0, 5, (50,)), padding=2)
    dataset = torch.utils.data.TensorDataset(split.x, split.y)
    tensor_path = split.shuffled_batches(16, torch.Generator().manual_seed(3), augment=augment)
    loader_path = loader_batches(dataset, 16, torch.Generator().manual_seed(3), augment=augment, padding=2)
    for (xa, ya), (xb, yb) in itertools.islice(zip(tensor_path, loader_path, strict=False), 10):  # over three epochs
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (16, 3, 8, 8)


def test_shuffled_batches_keeps_its_old_signature_and_default() -> None:
    split = Split(torch.randn(10, 1, 4, 4), torch.arange(10), augment=True)
    x, y = next(split.shuffled_batches(4, torch.Generator().manual_seed(0), augment=False))
    assert torch.equal(x, split.x[y])
    x, y = next(split.shuffled_batches(4, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, split.x[y])  # the split's own augment setting applies


def test_imagefolder_resizes(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / part / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / part / label / f"{i}.png")
    data = load_data(DataSection(name="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 4)
    assert (data.num_classes, data.in_channels, data.image_size) == (2, 3, 16)
    with pytest.raises(ConfigError, match="imagefolder needs an image size"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path)))


USER_DATA = textwrap.dedent(
    """
    import torch
    from torch.utils.data import TensorDataset

    def tiny(root):
        g = torch.Generator().manual_seed(0)
        train = TensorDataset(torch.rand(40, 1, 10, 10, generator=g), torch.arange(40) % 4)
        test = TensorDataset(torch.rand(8, 1, 10, 10, generator=g), torch.arange(8) % 4)
        return train, test
    """
)


def test_user_data_from_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data(DataSection(name="my_data:tiny", image_size=12))
    assert isinstance(data, DataSplits)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 8)
    assert (data.num_classes, data.in_channels, data.image_size) == (4, 1, 12)


def test_data_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known: .*fashion_mnist"):
        DataSection(name="imagenet")
    with pytest.raises(ConfigError, match="data.augment = 'flip'"):
        DataSection(augment="flip")
    with pytest.raises(ConfigError, match="data.subset = -1"):
        DataSection(subset=-1)
    with pytest.raises(ConfigError, match="data.mean"):
        DataSection(mean=(0.5,), std=())
    with pytest.raises(ConfigError, match="one value per channel"):
        load_data(DataSection(mean=(0.5, 0.5), std=(1.0, 1.0)))


def test_head_takes_the_first_samples_and_zero_means_all() -> None:
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    assert split.head(3).y.tolist() == [0, 1, 2]
    assert split.head(0) is split
    assert split.head(50) is split
