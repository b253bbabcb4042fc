"""Built-in models, built by registered name.

A builder takes the data's shape, keyword-only, and returns a fresh, untrained ``nn.Module``::

    @MODELS.register("my_net")
    def my_net(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from autoprune.models._digits import DigitsResNet
from autoprune.registry import Registry


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")


@MODELS.register("digits_resnet")
def digits_resnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A small residual CNN with BatchNorm for 8×8 digits (works for any small image)."""
    del image_size  # global pooling makes the net size-agnostic
    return DigitsResNet(num_classes=num_classes, in_channels=in_channels)


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build a registered model for data of the given shape."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


__all__ = ["MODELS", "DigitsResNet", "build_model"]
