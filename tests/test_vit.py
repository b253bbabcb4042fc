"""Vision transformers: whole attention heads and MLP width prune as groups, the pruned model runs,
rebuilds from its record, exports and loads."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config

import autoprune
from autoprune.cli import main
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.search.run import run_study
from autoprune.search.study import study_info
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import Surgery, TracedModel, attention_modules, rebuild

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vit_small", num_classes=10, in_channels=1, image_size=28).eval(), torch.randn(2, 1, 28, 28)


def _heads(model: torch.nn.Module) -> list[int]:
    return [m.num_heads for m in attention_modules(model).values()]


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


def test_a_vit_study_keeps_exports_and_loads_its_pruned_models(tmp_path: Path) -> None:
    """On the digits (8×8: 4×4 patches), a search over heads, MLP and embedding width; its front's
    smallest model exports to TorchScript and ONNX (checked against PyTorch) and loads back."""
    config = tiny_config(
        tmp_path / "runs", "tiny-vit", "model.name='vit_small'", "study.trials=6", "space.prune_steps_max=1"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(config)
    storage = f"sqlite:///{tmp_path / 'runs' / 'tiny-vit'}.db"
    pruned = [t for t in study.best_trials if t.user_attrs["macs"] < study_info(study)["base"]["macs"]]
    number = min(pruned, key=lambda t: t.user_attrs["macs"]).number
    out = tmp_path / "export"
    assert main(["export", "--storage", storage, "--study", "tiny-vit", "--trial", str(number), "--out", str(out)]) == 0
    model = autoprune.load(out)
    assert count_macs_params(model, torch.zeros(1, 1, 8, 8))[0] == study.trials[number].user_attrs["macs"]
    assert (out / "model.onnx").is_file() and (out / "model.torchscript.pt").is_file()
