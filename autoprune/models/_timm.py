"""timm's models (``timm:NAME``), built untrained for the data's shape. timm is an optional extra
(``pip install "autoprune[timm]"``), imported only when a study names one of its models."""

from __future__ import annotations

from typing import Any

from torch import nn

from autoprune.errors import ConfigError
from autoprune.models._torchvision import checked_runs

PREFIX = "timm:"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError('timm models need timm: pip install "autoprune[timm]"') from None
    return timm


def timm_names(pattern: str = "") -> list[str]:
    """The models timm can build (``timm.list_models``), optionally those matching a glob."""
    return list(_timm().list_models(pattern or "*"))


def build_timm(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``, told ``img_size``
    where its constructor takes one; never a download (bring weights with ``model.checkpoint``).

    A name timm does not know, or a model that cannot take ``image_size`` × ``image_size`` input,
    fails here with a ConfigError.
    """
    timm = _timm()
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; `autoprune models 'timm:*vit*'` lists them")
    kwargs: dict[str, object] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:
        try:
            model = timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(name, **kwargs)  # a model whose constructor takes no input size
    except Exception as exc:
        raise ConfigError(f"{PREFIX}{name} cannot be built for {image_size}×{image_size} input: {exc}") from None
    return checked_runs(model, f"{PREFIX}{name}", in_channels, image_size)
