"""torchvision's classification models, built untrained for the data's shape."""

from __future__ import annotations

from torch import nn

from autoprune.errors import ConfigError

PREFIX = "torchvision:"

# Families torch-pruning 1.6.1 cannot prune, by name prefix, with the reason (docs/models-and-data.md).
UNPRUNABLE = {
    "shufflenet_v2_": (
        "its channel shuffle reshapes (N, C, H, W) to (N, 2, C/2, H, W); torch-pruning cannot map channels "
        "split over two dimensions (ZeroDivisionError while tracing)"
    ),
    "vit_": (
        "torch-pruning shrinks the patch embedding's channels, but VisionTransformer keeps reshaping to its "
        "fixed hidden_dim, so the pruned model no longer runs"
    ),
    "swin_": (
        "tracing its shifted-window attention did not finish in 10 minutes (shape inference hits its recursion "
        "limit), and the dependency graph is traced for every trial"
    ),
    "maxvit_": "tracing its window and grid attention did not finish in 10 minutes (at 224×224, its smallest input)",
}

# Models whose constructor needs the input size.
_SIZE_KWARG = {"vit_": "image_size", "maxvit_": "input_size"}


def torchvision_names() -> list[str]:
    """Every classification model torchvision lists (detection, segmentation and video excluded)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def unprunable_reason(name: str) -> str | None:
    """Why torch-pruning cannot prune torchvision model ``name``, or None where it can."""
    return next((reason for prefix, reason in UNPRUNABLE.items() if name.startswith(prefix)), None)


def check_prunable(name: str) -> None:
    """Raise a ConfigError for a torchvision model autoprune cannot prune."""
    reason = unprunable_reason(name)
    if reason is not None:
        raise ConfigError(f"{PREFIX}{name} cannot be pruned by torch-pruning: {reason}")


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel ``Conv2d`` by a fresh one reading ``in_channels`` channels (same shape otherwise)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            replacement = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, replacement)
            return
    raise ConfigError(f"{type(model).__name__} has no 3-channel input convolution to adapt to {in_channels} channel(s)")


def build_torchvision(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=...)``, adapted to the data.

    The first convolution is replaced when ``in_channels`` is not 3; ViT and MaxViT are told the
    image size; GoogLeNet and Inception-v3 are built without their auxiliary heads. A model that
    cannot take ``image_size`` × ``image_size`` input, or that torch-pruning cannot prune
    (:data:`UNPRUNABLE`), fails here with a ConfigError.
    """
    import torch
    import torchvision

    known = torchvision_names()
    if name not in known:
        raise ConfigError(f"unknown torchvision model {name!r}; known: {', '.join(PREFIX + n for n in known)}")
    check_prunable(name)
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    for prefix, key in _SIZE_KWARG.items():
        if name.startswith(prefix):
            kwargs[key] = image_size if key == "image_size" else (image_size, image_size)
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except Exception as exc:
        raise ConfigError(f"{PREFIX}{name} cannot be built for {image_size}×{image_size} input: {exc}") from None
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{PREFIX}{name} does not run on {in_channels}×{image_size}×{image_size} input ({message}); "
            "set data.image_size to a size it accepts (docs/models-and-data.md lists the smallest per model)"
        ) from None
    return model.train()
