"""torchvision's classification models, built untrained for the data's shape."""

from __future__ import annotations

from typing import Any

from torch import nn

from autoprune.errors import ConfigError

PREFIX = "torchvision:"

# Families torch-pruning 1.6.1 cannot prune, by name prefix, with the reason (docs/models-and-data.md).
UNPRUNABLE = {
    "shufflenet_v2_": (
        "its channel shuffle reshapes (N, C, H, W) to (N, 2, C/2, H, W); torch-pruning cannot map channels "
        "split over two dimensions (ZeroDivisionError while tracing)"
    ),
    "swin_": (
        "tracing its shifted-window attention did not finish in 10 minutes (shape inference hits its recursion limit); "
        "timm's Swin prunes: timm:swin_tiny_patch4_window7_224"
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


class FusedAttention(nn.Module):
    """The ``nn.MultiheadAttention`` of a torchvision ViT encoder block as a fused ``qkv`` linear layer
    and an output projection: the same computation and weights, in the layout whose heads surgery
    can remove whole (torch-pruning prunes an ``nn.MultiheadAttention`` by its width only).

    It takes torchvision's ``(query, key, value, need_weights=False)`` call (self-attention: ``query``
    is read) and returns ``(output, None)``; a torchvision checkpoint's ``in_proj_*`` and
    ``out_proj.*`` keys load into it.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        import torch

        super().__init__()
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.dropout = mha.dropout
        width = mha.embed_dim
        self.qkv = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
        self.proj = nn.Linear(width, width, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            self.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.proj.bias.copy_(mha.out_proj.bias)
        self.register_load_state_dict_pre_hook(_torchvision_keys)

    def forward(self, query: Any, key: Any = None, value: Any = None, need_weights: bool = False) -> tuple[Any, None]:
        b, n, _ = query.shape
        q, k, v = self.qkv(query).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.dropout if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1)), None


_RENAMED = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias", "out_proj.weight": "proj.weight"}


def _torchvision_keys(module: nn.Module, state: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Rename a torchvision ``nn.MultiheadAttention``'s keys to :class:`FusedAttention`'s, in place."""
    for old, new in {**_RENAMED, "out_proj.bias": "proj.bias"}.items():
        if prefix + old in state:
            state[prefix + new] = state.pop(prefix + old)


def fuse_vit_attention(model: nn.Module) -> None:
    """Replace the ``nn.MultiheadAttention`` of every torchvision ViT encoder block by a :class:`FusedAttention`."""
    from torchvision.models.vision_transformer import EncoderBlock

    for block in model.modules():
        if isinstance(block, EncoderBlock) and isinstance(block.self_attention, nn.MultiheadAttention):
            block.self_attention = FusedAttention(block.self_attention)


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
    image size, and ViT's attention is fused (:class:`FusedAttention`); GoogLeNet and Inception-v3
    are built without their auxiliary heads. A model that cannot take ``image_size`` ×
    ``image_size`` input, or that torch-pruning cannot prune (:data:`UNPRUNABLE`), fails here with
    a ConfigError.
    """
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
    if name.startswith("vit_"):
        fuse_vit_attention(model)
    return checked_runs(model, f"{PREFIX}{name}", in_channels, image_size)


def checked_runs(model: nn.Module, label: str, in_channels: int, image_size: int) -> nn.Module:
    """``model`` (in training mode) once it has run on a ``1 × in_channels × image_size × image_size``
    zero tensor; a ConfigError naming ``label`` and ``data.image_size`` where it does not."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{label} does not run on {in_channels}×{image_size}×{image_size} input ({message}); "
            "set data.image_size to a size it accepts (docs/models-and-data.md lists the smallest per model)"
        ) from None
    return model.train()
