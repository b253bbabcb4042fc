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


class WindowAttention(nn.Module):
    """The shifted-window attention of a torchvision Swin (``ShiftedWindowAttention``) calling its
    ``qkv`` and ``proj`` layers as modules: the same computation and weights (and state-dict keys).
    torchvision passes their weights to a function instead, which torch-pruning cannot trace (the
    trace of Swin-T did not end), and splits the heads by the width of the tokens, which surgery
    changes; here a head's width is what ``qkv`` gives.
    """

    def __init__(self, attention: Any) -> None:
        super().__init__()
        self.window_size: list[int] = list(attention.window_size)
        self.shift_size: list[int] = list(attention.shift_size)
        self.num_heads: int = attention.num_heads
        self.attention_dropout: float = attention.attention_dropout
        self.dropout: float = attention.dropout
        self.qkv: nn.Linear = attention.qkv
        self.proj: nn.Linear = attention.proj
        self.register_buffer("relative_position_index", attention.relative_position_index)
        self._adopt(attention)

    def _adopt(self, attention: Any) -> None:
        """Take over the position bias: a table with a column per head."""
        self.relative_position_bias_table = attention.relative_position_bias_table

    def _position_bias(self) -> Any:
        return self._spread(self.relative_position_bias_table)

    def _spread(self, table: Any) -> Any:
        """A per-head bias for every pair of tokens in a window, from ``table``'s row per relative position."""
        from torchvision.models.swin_transformer import _get_relative_position_bias

        return _get_relative_position_bias(table, self.relative_position_index, self.window_size)

    def _logits(self, q: Any, k: Any) -> Any:
        return (q * q.size(-1) ** -0.5).matmul(k.transpose(-2, -1))

    def _shift_mask(self, height: int, width: int, shift: list[int], like: Any) -> Any:
        """torchvision's mask of the shifted windows: -100 between tokens from different regions."""
        wh, ww = self.window_size
        mask = like.new_zeros((height, width))
        count = 0
        for h in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for w in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        mask = mask.view(height // wh, wh, width // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: Any) -> Any:
        import torch
        from torch.nn import functional as F

        b, height, width, _ = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
        _, ph, pw, c = x.shape
        shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (ph // wh) * (pw // ww)
        x = x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, wh * ww, c)
        tokens = x.size(1)
        q, k, v = self._qkv(x).reshape(x.size(0), tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self._logits(q, k) + self._position_bias()
        if sum(shift) > 0:
            attn = attn.view(-1, windows, self.num_heads, tokens, tokens)
            attn = attn + self._shift_mask(ph, pw, shift, x).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), tokens, -1)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        x = x.view(b, ph // wh, pw // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def _qkv(self, x: Any) -> Any:
        return self.qkv(x)


class WindowAttentionV2(WindowAttention):
    """:class:`WindowAttention` for Swin V2 (``ShiftedWindowAttentionV2``): cosine attention scaled
    per head, a position bias from a small MLP (``cpb_mlp``), and no bias on the keys (torchvision
    zeroes their share of the ``qkv`` bias on every call; here it is subtracted from the output).
    Its heads stay whole: ``logit_scale`` and ``cpb_mlp``'s last layer have a row per head."""

    def _adopt(self, attention: Any) -> None:
        self.logit_scale = attention.logit_scale
        self.cpb_mlp = attention.cpb_mlp
        self.register_buffer("relative_coords_table", attention.relative_coords_table)

    def _position_bias(self) -> Any:
        import torch

        return 16 * torch.sigmoid(self._spread(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)))

    def _logits(self, q: Any, k: Any) -> Any:
        import math

        import torch
        from torch.nn import functional as F

        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def _qkv(self, x: Any) -> Any:
        from torch.nn import functional as F

        out = self.qkv(x)
        if self.qkv.bias is None:
            return out
        third = self.qkv.bias.numel() // 3
        return out - F.pad(self.qkv.bias[third : 2 * third], (third, third))


class PatchMerging(nn.Module):
    """The patch merging of a torchvision Swin (``PatchMerging``, V2's ``PatchMergingV2``) joining
    each 2×2 block of tokens by a reshape, as timm's does, instead of four strided slices: the same
    computation, weights and keys. torch-pruning reads a slice of the height as one of the channels
    and maps half the channels through it; surgery removes the channels of the joined tokens itself
    (``trial/surgery.py``). V1 normalises the joined tokens, V2 the reduction's output.
    """

    def __init__(self, merging: Any) -> None:
        super().__init__()
        self.dim: int = merging.dim
        self.reduction: nn.Linear = merging.reduction
        self.norm: nn.LayerNorm = merging.norm
        self.norm_first = tuple(merging.norm.normalized_shape) == (4 * merging.dim,)

    def forward(self, x: Any) -> Any:
        from torch.nn import functional as F

        height, width = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        *lead, h, w, c = x.shape
        # torchvision's order of the four: (0, 0), (1, 0), (0, 1), (1, 1) in (row, column)
        x = x.reshape(*lead, h // 2, 2, w // 2, 2, c).movedim(-4, -2).flatten(-3)
        return self.reduction(self.norm(x)) if self.norm_first else self.norm(self.reduction(x))


def adapt_swin(model: nn.Module) -> None:
    """Replace every torchvision Swin window attention by a :class:`WindowAttention` (V2's by a
    :class:`WindowAttentionV2`) and every patch merging by a :class:`PatchMerging`."""
    from torchvision.models import swin_transformer as tv

    adapters: dict[type, Any] = {
        tv.ShiftedWindowAttention: WindowAttention,
        tv.ShiftedWindowAttentionV2: WindowAttentionV2,
        tv.PatchMerging: PatchMerging,
        tv.PatchMergingV2: PatchMerging,
    }
    for name, module in list(model.named_modules()):
        if type(module) in adapters:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, adapters[type(module)](module))


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
    image size, ViT's attention is fused (:class:`FusedAttention`), Swin's attention calls its
    layers (:class:`WindowAttention`, :class:`WindowAttentionV2`) and its patch merging reshapes
    (:class:`PatchMerging`); GoogLeNet and Inception-v3
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
    if name.startswith("swin_"):
        adapt_swin(model)
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
