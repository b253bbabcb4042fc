"""Vision transformers: whole attention heads and MLP width prune as groups, the pruned model runs,
rebuilds from its record, exports and loads."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

import autoprune
from autoprune.bench.timm_sweep import PRUNES, prune_one
from autoprune.cli import main
from autoprune.models import build_model
from autoprune.models._torchvision import (
    FusedAttention,
    WindowAttention,
    WindowAttentionV2,
    adapt_first_conv,
    adapt_swin,
)
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import Surgery, TracedModel, attention_modules, rebuild


def _vit() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vit_small", num_classes=10, in_channels=1, image_size=28).eval(), torch.randn(2, 1, 28, 28)


def _heads(model: torch.nn.Module) -> list[int]:
    return [m.num_heads for m in attention_modules(model).values()]


def _heads_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(attention_modules(model).values())


def test_the_vit_has_a_head_group_and_an_mlp_group_per_block_and_the_embedding_width() -> None:
    model, x = _vit()
    groups = {g.name: g for g in TracedModel(model, x[:1]).groups}
    for block in range(4):
        assert groups[f"blocks.{block}.attn.qkv"].channels == 3 * 96
        assert groups[f"blocks.{block}.attn.qkv"].layers == (f"blocks.{block}.attn.qkv", f"blocks.{block}.attn.proj")
        assert groups[f"blocks.{block}.fc1"].channels == 192
    embedding = [g for g in groups.values() if "patch_embed" in g.layers]
    assert len(groups) == 9 and len(embedding) == 1 and embedding[0].channels == 96


@pytest.mark.parametrize(("ratio", "steps"), [(0.5, 1), (0.8, 1), (0.95, 1), (0.5, 2)])
def test_head_ratio_removes_whole_heads_and_never_the_last(ratio: float, steps: int) -> None:
    model, x = _vit()
    traced = TracedModel(model, x[:1])
    heads = {n: ratio for n in traced.names if n.endswith("attn.qkv")}
    mlp = {n: 0.5 for n in traced.names if n.endswith("fc1")}
    copied, graph = traced.copy()
    policy = Policy(heads | mlp, "l1", 1, 0.01, prune_steps=steps)
    surgery = Surgery(copied, x[:1], policy, make_scorer("l1"), traced.names, graph)
    for _ in range(steps):
        surgery.step()
    expected = 6 - min(math.ceil(ratio * 6), 5)  # ceil(ratio * 6) of the 6 heads removed, one always kept
    assert _heads(copied) == [expected] * 4
    kept = surgery.kept()
    assert all(kept[n] == 3 * 16 * expected for n in heads) and all(kept[n] == 96 for n in mlp)
    assert copied(x).shape == (2, 10)
    macs, params = count_macs_params(copied, x[:1])
    assert (macs, params) < count_macs_params(model, x[:1])
    skeleton, skeleton_graph = traced.copy()
    rebuild(skeleton, x[:1], kept, surgery.removed(), graph=skeleton_graph)
    skeleton.load_state_dict(copied.state_dict())
    assert _heads(skeleton) == _heads(copied)
    with torch.no_grad():
        assert torch.equal(skeleton(x), copied(x))


def _study_export_load(tmp_path: Path, model: str, *extra: str) -> torch.nn.Module:
    """A 6-trial digits study of ``model``; its front's smallest pruned model exported (TorchScript
    and ONNX, each checked against PyTorch by the export) and loaded back; returns the loaded model."""
    config = tiny_config(tmp_path / "runs", "vit", f"model.name='{model}'", "study.trials=6", *extra)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(config)
    storage = f"sqlite:///{tmp_path / 'runs' / 'vit'}.db"
    pruned = [t for t in study.best_trials if t.user_attrs["macs"] < StudyRecord.from_study(study).base.macs]
    number = min(pruned, key=lambda t: t.user_attrs["macs"]).number
    out = tmp_path / "export"
    assert main(["export", "--storage", storage, "--study", "vit", "--trial", str(number), "--out", str(out)]) == 0
    assert (out / "model.onnx").is_file() and (out / "model.pt2").is_file()
    loaded = autoprune.load(out)
    size = config.data.image_size or 8
    assert count_macs_params(loaded, torch.zeros(1, 1, size, size))[0] == study.trials[number].user_attrs["macs"]
    return loaded


def test_a_vit_study_keeps_exports_and_loads_its_pruned_models(tmp_path: Path) -> None:
    """On the digits (8×8: 4×4 patches), a search over heads, MLP and embedding width."""
    _study_export_load(tmp_path, "vit_small")


def _halved(name: str, groups: tuple[str, str]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Model ``name`` (12 blocks) at 32×32 grey, and a copy with half the heads and MLP width of each
    block (the groups whose names end in ``groups``) removed; the copy still runs."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    traced = TracedModel(model, x[:1])
    ratios = {n: 0.5 for n in traced.names if n.endswith(groups)}
    assert len(ratios) == 24
    copied, graph = traced.copy()
    Surgery(copied, x[:1], Policy(ratios, "l1", 1, 0.01), make_scorer("l1"), traced.names, graph).step()
    assert copied(x).shape == (2, 10)
    return model, copied


def test_a_timm_deit_prunes_whole_heads() -> None:
    """timm's DeiT-tiny (3 heads of 64, MLP 768, 12 blocks) at 32×32 (4 patches of 16): its attention
    loses whole heads, its MLPs hidden units."""
    pytest.importorskip("timm")
    model, copied = _halved("timm:deit_tiny_patch16_224", ("attn.qkv", "mlp.fc1"))
    assert _heads(model) == [3] * 12 and _heads(copied) == [1] * 12  # ceil(0.5 * 3) heads removed
    assert all(m.attn_dim == 64 for m in attention_modules(copied).values())


@pytest.mark.slow
def test_a_searched_timm_deit_exports_and_loads(tmp_path: Path) -> None:
    """A study of DeiT-tiny (5.5 M parameters): its front's smallest model exports and loads, heads and all
    (the built-in ViT's study above runs the same path in the default run, on a model 20 times smaller)."""
    pytest.importorskip("timm")
    loaded = _study_export_load(tmp_path, "timm:deit_tiny_patch16_224", "data.image_size=32", "train.epochs=1")
    assert len(attention_modules(loaded)) == 12


def _small_swin(library: str) -> torch.nn.Module:
    """A small Swin (4 stages of widths 24 to 192, window 4) for 32×32 grey images, from timm or
    from torchvision (adapted as ``torchvision:swin_*`` is)."""
    torch.manual_seed(0)
    if library == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            num_classes=10,
            in_chans=1,
            img_size=32,
            embed_dim=24,
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 4),
            window_size=4,
        ).eval()
    model = SwinTransformer([4, 4], 24, [1, 1, 2, 1], [1, 2, 2, 4], [4, 4], num_classes=10)
    adapt_first_conv(model, 1)
    adapt_swin(model)
    return model.eval()


def _halved_in_two_steps(model: torch.nn.Module, x: torch.Tensor) -> tuple[TracedModel, torch.nn.Module]:
    """``model`` (a small Swin, stage widths 24 to 192) traced, and a copy with every group at 0.5 in
    two prune steps: every group but the heads halves, MACs fall below half, the copy runs and
    rebuilds from its record with identical outputs."""
    traced = TracedModel(model, x[:1])
    copied, graph = traced.copy()
    policy = Policy(dict.fromkeys(traced.names, 0.5), "l1", 1, 0.01, prune_steps=2)
    surgery = Surgery(copied, x[:1], policy, make_scorer("l1"), traced.names, graph)
    for _ in range(2):
        surgery.step()
    widths = {n: (model.get_submodule(n).out_features, copied.get_submodule(n).out_features) for n in traced.names}
    assert sorted(v for n, v in widths.items() if n not in traced.heads) == [
        (w, w // 2) for w in (24, 48, 96, 96, 192, 192, 384, 384, 768)
    ]
    assert copied(x).shape == (2, 10)
    assert count_macs_params(copied, x[:1])[0] < count_macs_params(model, x[:1])[0] / 2
    skeleton, skeleton_graph = traced.copy()
    rebuild(skeleton, x[:1], surgery.kept(), surgery.removed(), graph=skeleton_graph)
    skeleton.load_state_dict(copied.state_dict())
    with torch.no_grad():
        assert torch.equal(skeleton(x), copied(x))
    return traced, copied


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_swin_prunes_heads_and_stage_widths_through_patch_merging(library: str) -> None:
    """Every group at 0.5 in two steps halves each stage's width and each MLP; patch merging loses
    the same channels from each of the four tokens it joins; window attention loses whole heads, and
    its position bias table the columns of those heads; the model rebuilds from its record."""
    model = _small_swin(library)
    with torch.no_grad():  # head h's query biases and position-bias column read h, to follow the heads
        for m in _heads_of(model):
            head_dim = m.qkv.out_features // (3 * m.num_heads)
            m.qkv.bias[: m.num_heads * head_dim] = torch.arange(m.num_heads).repeat_interleave(head_dim)
            m.relative_position_bias_table[:] = torch.arange(m.num_heads).float()
    x = torch.randn(2, 1, 32, 32)
    traced, copied = _halved_in_two_steps(model, x)
    assert traced.heads == {n: h for n, h in zip(sorted(traced.heads), [1, 2, 2, 2, 4], strict=True)}
    assert len(traced.names) == 9 + 5
    mergings = [
        (m, whole) for m, whole in zip(copied.modules(), model.modules(), strict=True) if hasattr(m, "reduction")
    ]
    assert len(mergings) == 3
    for merging, whole in mergings:
        assert merging.dim * 2 == whole.dim and merging.norm.normalized_shape == (4 * merging.dim,)
        assert merging.reduction.in_features == 4 * merging.dim
        assert merging.reduction.out_features * 2 == whole.reduction.out_features
    attention = [
        (m, whole) for m, whole in zip(copied.modules(), model.modules(), strict=True) if m in _heads_of(copied)
    ]
    assert [(whole.num_heads, m.num_heads) for m, whole in attention] == [(1, 1), (2, 1), (2, 1), (2, 1), (4, 2)]
    for m, whole in attention:
        head_dim = whole.qkv.out_features // (3 * whole.num_heads)
        assert m.qkv.out_features == 3 * m.num_heads * head_dim
        heads_left = m.qkv.bias[: m.num_heads * head_dim : head_dim].tolist()
        assert m.relative_position_bias_table[0].tolist() == heads_left  # the columns of the heads kept


def _swin_v2() -> SwinTransformer:
    """A small torchvision Swin V2 (4 stages of widths 24 to 192, window 4) for 32×32 RGB images."""
    return SwinTransformer(
        [4, 4],
        24,
        [1, 1, 2, 1],
        [1, 2, 2, 4],
        [4, 4],
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
        num_classes=10,
    )


def test_a_torchvision_swin_v2_prunes_its_widths_keeps_its_heads_and_computes_what_torchvision_does() -> None:
    """Swin V2, adapted: torchvision's outputs (keys' bias ignored as torchvision ignores it), the
    same keys; every group at 0.5 in two steps halves each stage's width (patch merging normalises
    the reduction's output) and each MLP, and the attention keeps its heads: its per-head scale and
    its position-bias MLP's last layer keep a row per head."""
    torch.manual_seed(0)
    model = _swin_v2().eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "logit_scale"):
                m.qkv.bias.normal_()
    adapted = _swin_v2()
    adapt_swin(adapted)
    adapted.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(adapted.eval()(x), model(x), atol=1e-5)
    traced, copied = _halved_in_two_steps(adapted, x)
    assert len(traced.names) == 9 and not traced.heads
    for m, whole in zip(copied.modules(), adapted.modules(), strict=True):
        if isinstance(m, WindowAttentionV2):
            assert m.logit_scale.shape == (whole.num_heads, 1, 1) and m.cpb_mlp[-1].out_features == whole.num_heads
            assert m.qkv.out_features == whole.qkv.out_features
        if hasattr(m, "reduction"):
            assert m.norm.normalized_shape == (m.reduction.out_features,) == (whole.reduction.out_features // 2,)


@pytest.mark.parametrize("size", [32, 40])
def test_torchvision_swin_adapted_computes_what_torchvision_does_with_its_keys(size: int) -> None:
    """The adapted attention and patch merging give torchvision's outputs bit for bit, with shifted
    windows (32: 8×8 tokens in windows of 4) and with padding (40: 10×10 tokens, merged to 5×5, then
    padded); a torchvision checkpoint loads into the adapted model."""
    torch.manual_seed(0)
    model = SwinTransformer([4, 4], 24, [1, 2, 2, 1], [1, 2, 2, 4], [4, 4], num_classes=10).eval()
    adapted = SwinTransformer([4, 4], 24, [1, 2, 2, 1], [1, 2, 2, 4], [4, 4], num_classes=10)
    adapt_swin(adapted)
    adapted.load_state_dict(model.state_dict())
    assert any(isinstance(m, WindowAttention) for m in adapted.modules())
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(x), model(x))


@pytest.mark.slow
def test_timm_swin_t_studies_exports_and_loads(tmp_path: Path) -> None:
    """timm's Swin-T at 32×32: a study of it on the digits exports (TorchScript and ONNX) and loads."""
    pytest.importorskip("timm")
    _study_export_load(
        tmp_path, "timm:swin_tiny_patch4_window7_224", "data.image_size=32", "train.epochs=1", "study.trials=3"
    )


def test_fused_attention_computes_what_torchvision_multihead_attention_does() -> None:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(48, 4, batch_first=True).eval()
    fused = FusedAttention(mha).eval()
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        expected, _ = mha(x, x, x, need_weights=False)
        got, weights = fused(x, x, x, need_weights=False)
    assert weights is None and torch.allclose(got, expected, atol=1e-6)
    again = FusedAttention(torch.nn.MultiheadAttention(48, 4, batch_first=True))
    again.load_state_dict(mha.state_dict())  # torchvision's keys: in_proj_*, out_proj.*
    with torch.no_grad():
        assert torch.equal(again(x)[0], got)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_t_studies_exports_and_loads(tmp_path: Path, name: str) -> None:
    """torchvision's Swin-T (V1 and V2) at 32×32: a study of it on the digits exports (TorchScript
    and ONNX) and loads."""
    _study_export_load(tmp_path, f"torchvision:{name}", "data.image_size=32", "train.epochs=1", "study.trials=3")


@pytest.mark.slow
def test_torchvision_vit_b_16_prunes_whole_heads_exports_and_loads(tmp_path: Path) -> None:
    """torchvision's ViT-B/16 at 32×32 (4 patches): head ratio 0.5 and MLP ratio 0.5 halve its 12
    heads and its MLPs; then a study of it on the digits exports and loads."""
    model, copied = _halved("torchvision:vit_b_16", ("self_attention.qkv", "mlp.0"))
    assert _heads(model) == [12] * 12 and _heads(copied) == [6] * 12
    _study_export_load(tmp_path, "torchvision:vit_b_16", "data.image_size=32", "train.epochs=1", "study.trials=3")


@pytest.mark.slow
@pytest.mark.parametrize("name", PRUNES)
def test_every_timm_model_the_docs_name_prunes(name: str) -> None:
    pytest.importorskip("timm")
    outcome = prune_one(name, 64)
    assert outcome["pruned_macs"] < outcome["macs"]  # type: ignore[operator]


def test_global_ranking_removes_heads_across_blocks_at_its_share_and_leaves_one_in_each() -> None:
    model, x = _vit()
    traced = TracedModel(model, x[:1])
    # of 24 heads, 24 - int(24 * (1 - share)) go, at most 24 - 4; progressive steps remove as many as one
    for ratio, removed, steps in ((0.5, 12, 1), (0.95, 20, 1), (0.03, 1, 1), (0.5, 12, 2), (0.05, 2, 3)):
        copied, graph = traced.copy()
        policy = Policy(dict.fromkeys(traced.names, ratio), "l1", 1, 0.01, global_ranking=True, prune_steps=steps)
        surgery = Surgery(copied, x[:1], policy, make_scorer("l1"), traced.names, graph)
        for _ in range(steps):
            surgery.step()
        heads = _heads(copied)
        assert sum(heads) == 24 - removed and min(heads) >= 1, heads
        assert copied(x).shape == (2, 10)
