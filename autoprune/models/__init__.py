"""Models, built by name for the data's shape.

A name is one of:

- a built-in model registered in :data:`MODELS` (``resnet20``, ``fmnist_cnn``, ...);
- ``torchvision:NAME``: any classification model of ``torchvision.models``, untrained;
- ``module:function`` or ``path/to/file.py:function``: the user's own builder. This imports and
  runs the user's code. The function gets ``num_classes``, ``in_channels`` and ``image_size`` as
  keyword arguments, those of them it accepts, and must return an ``nn.Module``.

A built-in builder takes the data's shape, keyword-only, and returns a fresh, untrained ``nn.Module``::

    @MODELS.register("my_net")
    def my_net(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...
"""

from __future__ import annotations

import fnmatch
from typing import Protocol

from torch import nn

from autoprune.errors import ConfigError
from autoprune.models._cifar import CifarResNet, FashionCNN, MobileNetSmall, VggBN
from autoprune.models._digits import DigitsBranchNet, DigitsResNet
from autoprune.models._hf import PREFIX as HF_PREFIX
from autoprune.models._hf import build_hf
from autoprune.models._timm import PREFIX as TIMM_PREFIX
from autoprune.models._timm import build_timm, timm_names
from autoprune.models._torchvision import PREFIX as TORCHVISION_PREFIX
from autoprune.models._torchvision import build_torchvision, check_prunable, torchvision_names, unprunable_reason
from autoprune.models._user import call_with_accepted, is_user_spec, load_callable
from autoprune.models._vit import SmallViT
from autoprune.registry import Registry


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")


@MODELS.register("digits_resnet")
def digits_resnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A small residual CNN with BatchNorm for 8×8 digits (works for any small image)."""
    del image_size  # global pooling makes the net size-agnostic
    return DigitsResNet(num_classes=num_classes, in_channels=in_channels)


@MODELS.register("digits_branchnet")
def digits_branchnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A small CNN whose two branches are concatenated and added to a projection (Inception-ResNet
    style): one group's channels span both branches."""
    del image_size  # global pooling makes the net size-agnostic
    return DigitsBranchNet(num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet20")
def resnet20(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016; 0.27 M parameters), 1×1-conv shortcuts where the shape changes."""
    del image_size  # global pooling makes the net size-agnostic
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet32")
def resnet32(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-32 (0.46 M parameters)."""
    del image_size
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet56")
def resnet56(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-56 (0.85 M parameters), the pruning literature's usual CIFAR-10 benchmark."""
    del image_size
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("vgg_bn")
def vgg_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """VGG-11 with BatchNorm for small images (9.2 M parameters), hidden fc 512."""
    return VggBN(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@MODELS.register("mobilenet_small")
def mobilenet_small(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A MobileNetV2-style net for 28×28 to 32×32 images (inverted residual blocks, depthwise 3×3
    convolutions, expansion 6; 0.21 M parameters, 9.2 M MACs at 28×28 grey), whose layers differ
    widely in cost."""
    del image_size  # global pooling makes the net size-agnostic
    return MobileNetSmall(num_classes=num_classes, in_channels=in_channels)


@MODELS.register("fmnist_cnn")
def fmnist_cnn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A small CNN for Fashion-MNIST (28×28 grey; 0.47 M parameters): 4 conv-BN layers, fc 128."""
    return FashionCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@MODELS.register("vit_small")
def vit_small(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A small ViT for 28×28 images (7×7 patches: 16 tokens and a class token; 4 blocks of 6 heads,
    width 96, MLP 192; 0.31 M parameters, 5.1 M MACs at 28×28 grey): heads, MLP width and the
    embedding width prune."""
    return SmallViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch=_patch(image_size))


def _patch(image_size: int) -> int:
    """The ViT's patch size: 7 for 28×28 (4×4 patches), else 4 for sizes it divides, else the size itself."""
    return next((p for p in (7, 4) if image_size % p == 0), image_size)


def model_catalogue(pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, one-line description) of the models a study file can name: the built-ins, and
    torchvision's when ``pattern`` (a shell-style glob) is given and matches them; without a
    pattern, one line stands for all of torchvision's and one for the user's own builders."""
    rows = [(name, MODELS.describe(name)) for name in MODELS.matching(pattern or "*")]
    if pattern is None:
        count = len(torchvision_names())
        rows.append(
            (
                f"{TORCHVISION_PREFIX}NAME",
                f"any of torchvision's {count} classification models, untrained "
                f"(autoprune models '{TORCHVISION_PREFIX}*' lists them)",
            )
        )
        rows.append(
            (
                f"{TIMM_PREFIX}NAME",
                f"any of timm's models, untrained (the timm extra; autoprune models '{TIMM_PREFIX}*vit*' lists them)",
            )
        )
        rows.append(("module:function", "your own builder: a function of num_classes, in_channels, image_size"))
        return rows
    for name in torchvision_names():
        full = f"{TORCHVISION_PREFIX}{name}"
        if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(name, pattern):
            reason = unprunable_reason(name)
            rows.append((full, f"cannot be pruned: {reason}" if reason else "torchvision's model, untrained"))
    if pattern.startswith(TIMM_PREFIX):
        rows += [
            (f"{TIMM_PREFIX}{name}", "timm's model, untrained") for name in timm_names(pattern[len(TIMM_PREFIX) :])
        ]
    return rows


def check_model_name(name: str) -> None:
    """Raise a ConfigError unless ``name`` can name a model (user code is not imported here)."""
    if name.startswith(HF_PREFIX):
        return  # the folder is read when the study starts
    if name.startswith(TIMM_PREFIX):
        if name[len(TIMM_PREFIX) :] not in timm_names():
            raise ConfigError(f"unknown model {name!r}; `autoprune models '{TIMM_PREFIX}*'` lists timm's models")
    elif name.startswith(TORCHVISION_PREFIX):
        known = torchvision_names()
        if name[len(TORCHVISION_PREFIX) :] not in known:
            raise ConfigError(f"unknown model {name!r}; torchvision models: {', '.join(known)}")
        check_prunable(name[len(TORCHVISION_PREFIX) :])
    elif not is_user_spec(name):
        MODELS.get(name)


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build the named model (built-in, ``torchvision:NAME`` or ``module:function``) for data of the given shape."""
    if name.startswith(HF_PREFIX):
        raise ConfigError(f"{name} is a language model: autoprune.models.build_hf builds it (docs/language-models.md)")
    if name.startswith(TIMM_PREFIX):
        return build_timm(
            name[len(TIMM_PREFIX) :], num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
    if name.startswith(TORCHVISION_PREFIX):
        return build_torchvision(
            name[len(TORCHVISION_PREFIX) :], num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
    if is_user_spec(name):
        builder = load_callable(name, "model")
        model = call_with_accepted(builder, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    try:
        builder = MODELS.get(name)
    except ConfigError:
        raise ConfigError(
            f"unknown model {name!r}; known: {', '.join(MODELS.names())}, torchvision:NAME "
            "(any of torchvision.models.list_models()), module:function or path/to/file.py:function"
        ) from None
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


__all__ = [
    "HF_PREFIX",
    "MODELS",
    "TIMM_PREFIX",
    "TORCHVISION_PREFIX",
    "CifarResNet",
    "DigitsBranchNet",
    "DigitsResNet",
    "FashionCNN",
    "SmallViT",
    "VggBN",
    "build_hf",
    "build_model",
    "check_model_name",
    "model_catalogue",
    "torchvision_names",
]
