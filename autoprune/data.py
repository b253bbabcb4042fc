"""Datasets, split into train / validation / test, held as tensors.

The validation split is always carved out of the training data (stratified, seeded): the search
scores trials on it. The test split is the dataset's own test set where it has one (otherwise it
too is carved out of the data); it is only for the final report of chosen models.

Every dataset is loaded once into float32 tensors (N, C, H, W), normalized per channel, and moved
to the study's device as a whole: batching and augmentation then run on that device, with no
DataLoader workers and no per-batch host-to-device copies. :func:`loader_batches` is the fallback
for data that does not fit: it yields the same batches from a ``torch.utils.data.Dataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from autoprune.errors import ConfigError
from autoprune.models._user import call_with_accepted, is_user_spec, load_callable
from autoprune.registry import Registry

if TYPE_CHECKING:
    from autoprune.config import DataSection

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip of a batch, on ``x``'s device.

    Each image is zero-padded by ``padding`` pixels on every side (zero is the mean colour: the
    images are normalized already), cut back to its size at ``offsets[i] = (top, left)`` (each in
    ``[0, 2 * padding]``) and mirrored where ``flips[i]``: what torchvision's ``RandomCrop(size,
    padding)`` followed by ``RandomHorizontalFlip()`` does, for the whole batch in one gather.
    """
    b, _c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    steps = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - steps, steps)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class _Epoch:
    """One epoch's random draws: the order, and per position the crop offsets and flips (or None)."""

    order: torch.Tensor
    offsets: torch.Tensor | None
    flips: torch.Tensor | None


def _draw_epoch(n: int, generator: torch.Generator, augment: bool, padding: int) -> _Epoch:
    """Both data paths draw through here, so that the same generator gives the same batches."""
    order = torch.randperm(n, generator=generator)
    if not augment:
        return _Epoch(order, None, None)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return _Epoch(order, offsets, flips)


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64.

    Attributes:
        augment: Whether :meth:`shuffled_batches` augments by default (the train split of CIFAR-like data).
        padding: Padding of the random crop, in pixels.
    """

    x: torch.Tensor
    y: torch.Tensor
    augment: bool = False
    padding: int = 4

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def head(self, count: int) -> Split:
        """The first ``count`` samples (all of them for 0). Splits are carved at random, so this is a
        random subset, the same one every time."""
        return replace(self, x=self.x[:count], y=self.y[:count]) if 0 < count < len(self) else self

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass in order, for evaluation."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def shuffled_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool | None = None
    ) -> Iterator[Batch]:
        """Endless full batches, reshuffled every epoch by ``generator`` (a CPU generator).

        ``augment`` (default: the split's own setting) crops and flips every batch with
        :func:`crop_flip`. Each epoch's draws are made on the CPU and moved to the device once.
        """
        augment = self.augment if augment is None else augment
        n = len(self)
        size = min(batch_size, n)
        device = self.x.device
        while True:
            epoch = _draw_epoch(n, generator, augment, self.padding)
            order = epoch.order.to(device)
            offsets = None if epoch.offsets is None else epoch.offsets.to(device)
            flips = None if epoch.flips is None else epoch.flips.to(device)
            for start in range(0, n - size + 1, size):
                idx = order[start : start + size]
                x = self.x[idx]
                if offsets is not None and flips is not None:
                    x = crop_flip(x, offsets[start : start + size], flips[start : start + size], self.padding)
                yield x, self.y[idx]


def loader_batches(
    dataset: torch.utils.data.Dataset[Any],
    batch_size: int,
    generator: torch.Generator,
    *,
    augment: bool = False,
    padding: int = 4,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Iterator[Batch]:
    """The DataLoader path, for data that does not fit in memory: the batches of :meth:`Split.shuffled_batches`.

    ``dataset`` yields ``(image, label)`` with the image a normalized float tensor (C, H, W). The
    same ``generator`` draws the same order, crops and flips as the tensor path, so both give the
    same batches; the loader reads them with ``num_workers`` processes and the batch is moved to
    ``device`` and augmented there.
    """
    n = len(dataset)  # type: ignore[arg-type]
    size = min(batch_size, n)
    device = torch.device(device)
    while True:
        epoch = _draw_epoch(n, generator, augment, padding)
        starts = range(0, n - size + 1, size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[epoch.order[s : s + size].tolist() for s in starts],
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        for start, (x, y) in zip(starts, loader, strict=True):
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y).long().to(device, non_blocking=True)
            if epoch.offsets is not None and epoch.flips is not None:
                offsets = epoch.offsets[start : start + size].to(device)
                x = crop_flip(x, offsets, epoch.flips[start : start + size].to(device), padding)
            yield x, y


@dataclass(frozen=True)
class DataSplits:
    """The splits and how they were made.

    Attributes:
        mean: Per-channel mean the images (scaled to [0, 1]) were normalized with.
        std: Per-channel standard deviation they were divided by.
        own_test: The test split is the dataset's own test set; else ``data.test_fraction`` of the
            data, held out before the validation split.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    own_test: bool = False

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    def to(self, device: torch.device) -> DataSplits:
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


DatasetBuilder = Callable[["DataSection"], DataSplits]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

# Datasets whose training batches are cropped and flipped when data.augment is "auto".
CIFAR_LIKE = ("cifar10", "cifar100")


def _as_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) images → float32 (N, C, H, W) in [0, 1]."""
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4:
        t = t.permute(0, 3, 1, 2)
    else:
        raise ConfigError(f"images of shape {tuple(t.shape)}: expected (N, H, W) or (N, H, W, C)")
    return t.float().div_(255.0).contiguous()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if size == 0 or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _split_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held-out) indices, stratified by label where every class allows it."""
    indices = np.arange(len(y))
    try:
        keep, held = train_test_split(indices, test_size=fraction, stratify=y, random_state=seed)
    except ValueError:  # a class with one image, or fewer held-out images than classes
        log.warning("%d images are too few for a stratified split: splitting them unstratified", len(y))
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def make_splits(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    num_classes: int,
    cfg: DataSection,
    *,
    cifar_like: bool = False,
) -> DataSplits:
    """Float images in [0, 1] and labels → subset, resized, split, normalized :class:`DataSplits`.

    Without a ``test`` set, ``cfg.test_fraction`` of the data becomes the test split first. The
    validation split (``cfg.val_fraction`` of the training data) is stratified and seeded by
    ``cfg.split_seed``. Normalization uses ``cfg.mean`` / ``cfg.std``, or the train split's own.
    """
    x, y = train
    own_test = test is not None
    if cfg.subset:
        x, y = x[: cfg.subset], y[: cfg.subset]
    x = _resize(x, cfg.image_size)
    if test is None:
        keep, held = _split_indices(y.numpy(), cfg.test_fraction, cfg.split_seed)
        test = (x[held], y[held])
        x, y = x[keep], y[keep]
    x_test, y_test = _resize(test[0], cfg.image_size), test[1]
    keep, held = _split_indices(y.numpy(), cfg.val_fraction, cfg.split_seed)
    x_train, y_train, x_val, y_val = x[keep], y[keep], x[held], y[held]
    channels = x_train.shape[1]
    if cfg.mean:
        if len(cfg.mean) != channels:
            raise ConfigError(f"data.mean = {list(cfg.mean)}: must have one value per channel ({channels})")
        mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    else:
        flat = x_train.double().transpose(0, 1).reshape(channels, -1)
        mean, std = flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
    shape = (1, channels, 1, 1)

    def split(xs: torch.Tensor, ys: torch.Tensor, augment: bool = False) -> Split:
        xs = (xs - mean.view(shape)) / std.view(shape)
        return Split(xs.float().contiguous(), ys.long(), augment=augment, padding=cfg.crop_padding)

    augment = cfg.augment == "crop_flip" or (cfg.augment == "auto" and cifar_like)
    return DataSplits(
        split(x_train, y_train, augment),
        split(x_val, y_val),
        split(x_test, y_test),
        num_classes,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        own_test=own_test,
    )


@DATASETS.register("digits")
def digits(cfg: DataSection) -> DataSplits:
    """scikit-learn's embedded ``load_digits``: 1,797 8×8 grey images, 10 classes, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)[:, None, :, :] / 16.0)
    return make_splits((images, torch.from_numpy(bunch.target).long()), None, 10, cfg)


def _root(cfg: DataSection, what: str) -> Path:
    if not cfg.root:
        raise ConfigError(f"data.root is empty: set it to the folder that holds {what}")
    return Path(cfg.root).expanduser()


def _require_files(root: Path, folder: str, files: Sequence[str], name: str, how: str) -> None:
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"{name} not found: expected {(root / folder / missing[0]).resolve()}"
            + (f" (and {len(missing) - 1} more file(s) there: {', '.join(missing[1:])})" if len(missing) > 1 else "")
            + f"; {how}"
        )


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TV_DOWNLOAD = "or run torchvision.datasets.{cls}(root, download=True) on a machine with internet and copy the folder"


def _mnist_like(cfg: DataSection, cls_name: str, how: str) -> DataSplits:
    import torchvision

    root = _root(cfg, f"{cls_name}/raw/")
    _require_files(root, f"{cls_name}/raw", _MNIST_FILES, cls_name, how)
    cls = getattr(torchvision.datasets, cls_name)
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)
    n = cfg.subset or len(train.targets)  # convert only what is used
    return make_splits(
        (_as_images(train.data[:n]), train.targets[:n].long()),
        (_as_images(test.data), test.targets.long()),
        len(train.classes),
        cfg,
    )


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataSection) -> DataSplits:
    """Fashion-MNIST (Zalando; 60,000 + 10,000 28×28 grey images, 10 classes) from ``<root>/FashionMNIST/raw/``."""
    how = (
        "install the Debian package dataset-fashion-mnist and gunzip /usr/share/datasets/fashion-mnist/*.gz "
        "into that folder, " + _TV_DOWNLOAD.format(cls="FashionMNIST")
    )
    return _mnist_like(cfg, "FashionMNIST", how)


@DATASETS.register("mnist")
def mnist(cfg: DataSection) -> DataSplits:
    """MNIST (60,000 + 10,000 28×28 grey digits, 10 classes) from ``<root>/MNIST/raw/``."""
    how = "gunzip the four files from https://yann.lecun.com/exdb/mnist/ there, " + _TV_DOWNLOAD.format(cls="MNIST")
    return _mnist_like(cfg, "MNIST", how)


def _cifar(cfg: DataSection, cls_name: str) -> DataSplits:
    import torchvision

    base: Any = getattr(torchvision.datasets, cls_name)

    # torchvision's own reader, with existence checks instead of whole-file md5 sums (which would
    # reject hand-made test sets and hash 170 MB on every start).
    class Unchecked(base):
        train_list = [[f, None] for f, _md5 in base.train_list]
        test_list = [[f, None] for f, _md5 in base.test_list]
        meta = {**base.meta, "md5": None}

    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    how = f"download {base.url} and unpack it in {cfg.root or 'data.root'}, " + _TV_DOWNLOAD.format(cls=cls_name)
    root = _root(cfg, base.base_folder)
    _require_files(root, base.base_folder, files, cls_name, how)
    train = Unchecked(str(root), train=True, download=False)
    test = Unchecked(str(root), train=False, download=False)
    n = cfg.subset or len(train.targets)  # convert only what is used
    return make_splits(
        (_as_images(train.data[:n]), torch.tensor(train.targets[:n]).long()),
        (_as_images(test.data), torch.tensor(test.targets).long()),
        len(train.classes),
        cfg,
        cifar_like=True,
    )


@DATASETS.register("cifar10")
def cifar10(cfg: DataSection) -> DataSplits:
    """CIFAR-10 (50,000 + 10,000 32×32 colour images, 10 classes) from ``<root>/cifar-10-batches-py/``."""
    return _cifar(cfg, "CIFAR10")


@DATASETS.register("cifar100")
def cifar100(cfg: DataSection) -> DataSplits:
    """CIFAR-100 (50,000 + 10,000 32×32 colour images, 100 classes) from ``<root>/cifar-100-python/``."""
    return _cifar(cfg, "CIFAR100")


def _image_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        t = image if image.is_floating_point() else image.float() / 255.0
        return t[None] if t.ndim == 2 else t
    if isinstance(image, np.ndarray):
        return _as_images(image[None])[0] if image.dtype == np.uint8 else torch.from_numpy(image).float()
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image).float() / 255.0


def dataset_tensors(
    dataset: torch.utils.data.Dataset[Any], image_size: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a whole ``(image, label)`` dataset into float images in [0, 1] (resized) and int64 labels.

    Images may be PIL images, uint8 or float tensors (C, H, W) or (H, W), or uint8 arrays (H, W, C).
    """
    images, labels = [], []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        image, label = dataset[i]
        t = _image_tensor(image)
        images.append(_resize(t[None], image_size)[0] if image_size else t)
        labels.append(int(label))
    if not images:
        raise ConfigError(f"{what} is empty")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ConfigError(f"{what} has images of different shapes {sorted(shapes)[:3]}: set data.image_size")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _class_count(*datasets: Any, labels: torch.Tensor) -> int:
    for ds in datasets:
        classes = getattr(ds, "classes", None)
        if classes is not None:
            return len(classes)
    return int(labels.max()) + 1


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataSection) -> DataSplits:
    """``<root>/train/<class>/*.jpg`` and ``<root>/val/`` (or ``test/``), resized to data.image_size, as RGB."""
    import torchvision
    from torchvision.transforms import Resize

    root = _root(cfg, "train/ and val/ (or test/) folders of class subfolders")
    if cfg.image_size == 0:
        raise ConfigError("data.image_size = 0: imagefolder needs an image size to resize the images to")
    held_out = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or held_out is None:
        raise ConfigError(
            f"imagefolder: expected {(root / 'train').resolve()} and {(root / 'val').resolve()} (or test)"
        )
    size = cfg.image_size
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=Resize((size, size)))
    test = torchvision.datasets.ImageFolder(str(held_out), transform=Resize((size, size)))
    if train.classes != test.classes:
        raise ConfigError(f"imagefolder: {held_out} has classes {test.classes}, train/ has {train.classes}")
    train_xy = dataset_tensors(train, size, str(root / "train"))
    return make_splits(train_xy, dataset_tensors(test, size, str(held_out)), len(train.classes), cfg)


def _user_data(cfg: DataSection) -> DataSplits:
    function = load_callable(cfg.name, "dataset")
    result = call_with_accepted(function, root=cfg.root, image_size=cfg.image_size)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ConfigError(f"dataset {cfg.name!r} returned {type(result).__name__}: expected (train, test) datasets")
    train, test = result
    train_xy = dataset_tensors(train, cfg.image_size, f"dataset {cfg.name!r} (train)")
    test_xy = None if test is None else dataset_tensors(test, cfg.image_size, f"dataset {cfg.name!r} (test)")
    labels = train_xy[1] if test_xy is None else torch.cat([train_xy[1], test_xy[1]])
    return make_splits(train_xy, test_xy, _class_count(train, labels=labels), cfg)


TEXT = "text"
"""``data.name`` of a language study: local text files (``data.files``), read by :func:`autoprune.text.load_text`."""


def check_dataset_name(name: str) -> None:
    """Raise a ConfigError unless ``name`` can name a dataset (user code is not imported here)."""
    if not is_user_spec(name) and name not in DATASETS and name != TEXT:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}, {TEXT} (a language model's), "
            "or module:function"
        )


def load_data(cfg: DataSection) -> DataSplits:
    """Build the named dataset's splits (on the CPU)."""
    if cfg.name == TEXT:
        raise ConfigError(f"data.name = {TEXT!r} is a language model's text: autoprune.text.load_text reads it")
    if is_user_spec(cfg.name):
        return _user_data(cfg)
    return DATASETS.get(cfg.name)(cfg)


__all__ = [
    "DATASETS",
    "TEXT",
    "DataSplits",
    "Split",
    "check_dataset_name",
    "crop_flip",
    "dataset_tensors",
    "load_data",
    "loader_batches",
    "make_splits",
]
