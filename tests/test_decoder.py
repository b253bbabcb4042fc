"""Surgery on Hugging Face decoders: tiny Llama (one key/value head per query head) and Qwen2
(grouped-query attention, tied embeddings), built from config-only ``hf:`` folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from autoprune.errors import AutopruneError, ConfigError
from autoprune.models import build_model
from autoprune.models._hf import build_hf
from autoprune.results.export import export_decoder
from autoprune.trial import decoder, language
from autoprune.trial.allocation import LANDING, Allocator

transformers = pytest.importorskip("transformers")

VOCAB = 96


def _folder(tmp_path: Path, kind: str) -> Path:
    """A config-only checkpoint folder: a 3-layer Llama with 4 heads, or a Qwen2 with 8 query heads
    over 2 key/value heads and tied embeddings."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=4)
    else:
        config = transformers.Qwen2Config(
            **common, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True
        )
    folder = tmp_path / kind
    config.save_pretrained(folder)
    return folder


def _base(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_hf(f"hf:{folder}")


# half the heads and MLP width in layers 0 and 2, a quarter in layer 1, a quarter of the hidden size
RATIOS = {
    "model.layers.0.self_attn": 0.5,
    "model.layers.1.self_attn": 0.25,
    "model.layers.2.self_attn": 0.5,
    "model.layers.0.mlp": 0.5,
    "model.layers.1.mlp": 0.25,
    "model.layers.2.mlp": 0.5,
    decoder.HIDDEN: 0.25,
}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_prune_run_rebuild_reload(tmp_path: Path, kind: str) -> None:
    folder = _folder(tmp_path, kind)
    model = _base(folder)
    tokens = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    before = decoder.widths(model)
    keep = decoder.choose(model, decoder.kept_units(model, RATIOS), decoder.magnitude_scores(model))
    decoder.cut(model, keep)
    after = decoder.widths(model)

    assert after.hidden == 48
    assert after.intermediate == (48, 72, 48)
    if kind == "llama":
        assert after.heads == after.kv_heads == (2, 3, 2)
    else:  # every key/value head kept, each with the same number of its query heads
        assert before.heads == (8, 8, 8) and after.kv_heads == (2, 2, 2)
        assert after.heads == (4, 6, 4)
        for heads in (keep[f"model.layers.{i}.self_attn"] for i in range(3)):
            per_kv = [sum(1 for h in heads if h // 4 == k) for k in range(2)]
            assert per_kv[0] == per_kv[1] == len(heads) // 2
        assert model.lm_head.weight is model.model.embed_tokens.weight
    for layer, heads, kv in zip(model.model.layers, after.heads, after.kv_heads, strict=True):
        assert layer.self_attn.num_key_value_groups == heads // kv
        assert layer.self_attn.k_proj.out_features == kv * layer.self_attn.head_dim

    logits = model(tokens).logits
    assert logits.shape == (2, 10, VOCAB) and torch.isfinite(logits).all()

    # rebuilt from the stored record (a JSON round trip) on a fresh base: the same model
    rebuilt = decoder.cut(_base(folder), json.loads(json.dumps(keep)))
    torch.testing.assert_close(rebuilt(tokens).logits, logits, rtol=0, atol=0)

    decoder.save_pruned(model, tmp_path / "export")
    reloaded = decoder.load_pruned(tmp_path / "export")
    assert decoder.widths(reloaded) == after
    torch.testing.assert_close(reloaded(tokens).logits, logits, rtol=0, atol=0)
    if kind == "qwen2":
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert saved[decoder.WIDTHS]["heads"] == list(after.heads)
    assert saved["hidden_size"] == 48


def test_uniform_widths_reload_with_transformers_alone(tmp_path: Path) -> None:
    """A model whose layers all kept the same widths fits a plain configuration: ``from_pretrained`` loads it."""
    model = _base(_folder(tmp_path, "qwen2"))
    ratios = {g.name: 0.5 for g in decoder.decoder_groups(model)}
    decoder.cut(model, decoder.choose(model, decoder.kept_units(model, ratios), decoder.magnitude_scores(model)))
    decoder.save_pruned(model, tmp_path / "export")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tokens = torch.arange(12).reshape(1, 12)
    torch.testing.assert_close(plain(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_kept_units_round_grouped_heads_to_key_value_heads(tmp_path: Path) -> None:
    model = _base(_folder(tmp_path, "qwen2"))
    kept = decoder.kept_units(model, {"model.layers.0.self_attn": 0.3, "model.layers.1.self_attn": 0.99}, multiple=8)
    assert kept["model.layers.0.self_attn"] == 4  # int(8 * 0.7) = 5, down to a multiple of 2 key/value heads
    assert kept["model.layers.1.self_attn"] == 2  # at least one query head per key/value head
    assert kept["model.layers.0.mlp"] == 96
    with pytest.raises(AutopruneError, match="does not have"):
        decoder.kept_units(model, {"model.layers.9.mlp": 0.5})


def test_magnitude_keeps_the_strongest_units(tmp_path: Path) -> None:
    model = _base(_folder(tmp_path, "llama"))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[[5, 70]] *= 100
        model.model.layers[0].self_attn.o_proj.weight[:, 16:32] *= 100  # head 1 (head_dim 16)
    kept = {"model.layers.0.mlp": 2, "model.layers.0.self_attn": 1}
    keep = decoder.choose(model, kept, decoder.magnitude_scores(model))
    assert keep["model.layers.0.mlp"] == [5, 70]
    assert keep["model.layers.0.self_attn"] == [1]


def test_not_a_decoder_is_told(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="not a decoder laid out as Llama"):
        decoder.widths(torch.nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="no config.json"):
        build_hf(f"hf:{tmp_path}")


def test_cost_model_counts_parameters_and_linear_macs_exactly(tmp_path: Path) -> None:
    model = _base(_folder(tmp_path, "qwen2"))
    cost = decoder.decoder_cost(model)
    assert cost.exact
    assert cost.heads == dict.fromkeys([f"model.layers.{i}.self_attn" for i in range(3)], 4)  # heads in pairs
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        pruned = copy.deepcopy(model)
        ratios = {g.name: float(torch.rand(1, generator=generator)) * 0.8 for g in decoder.decoder_groups(pruned)}
        kept = decoder.kept_units(pruned, ratios)
        decoder.cut(pruned, decoder.choose(pruned, kept, decoder.magnitude_scores(pruned)))
        linear = sum(m.in_features * m.out_features for m in pruned.modules() if isinstance(m, torch.nn.Linear))
        macs, params = cost.predict(kept)
        assert params == pytest.approx(sum(p.numel() for p in pruned.parameters()), abs=1e-6)
        assert macs == pytest.approx(linear, abs=1e-6)


def test_activation_scores_are_activation_times_outgoing_weights(tmp_path: Path) -> None:
    model = _base(_folder(tmp_path, "llama"))
    tokens = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[7] *= 50  # channel 7's activation, not its outgoing weights
    seen: list[torch.Tensor] = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    scores = language.activation_scores(model, tokens, batch_size=2)
    hook.remove()
    inputs = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])
    expected = inputs.pow(2).mean(dim=0).sqrt() * model.model.layers[1].mlp.down_proj.weight.norm(dim=0)
    torch.testing.assert_close(scores["model.layers.1.mlp"], expected.detach(), rtol=1e-4, atol=1e-6)
    assert int(scores["model.layers.1.mlp"].argmax()) == 7
    assert scores["model.layers.0.self_attn"].shape == (4,) and scores[decoder.HIDDEN].shape == (64,)


def test_sensitivity_and_allocation_on_a_decoder(tmp_path: Path) -> None:
    """The vision path's allocator, on a decoder's sensitivity and cost model: each target lands,
    grouped heads stay whole multiples of the key/value heads, and the cut model has the figure."""
    model = _base(_folder(tmp_path, "qwen2"))
    tokens = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(3))
    scores = language.activation_scores(model, tokens)
    sensitivity = language.analyse_decoder(model, tokens, scores, scorer="activation", ratios=(0.5,))
    assert len(sensitivity.points) == len(decoder.decoder_groups(model))
    assert all(p.params < sensitivity.base_params for p in sensitivity.points)
    cost = decoder.decoder_cost(model)
    allocator = Allocator(sensitivity, cost, figure="params", ratio_max=0.75)
    base_params = sum(p.numel() for p in model.parameters())
    for target in (0.5, 0.7):
        for mix in (0.0, 1.0):
            kept = allocator.solve(target, mix, {})
            assert all(kept[f"model.layers.{i}.self_attn"] % 2 == 0 for i in range(3))
            pruned = copy.deepcopy(model)
            decoder.cut(pruned, decoder.choose(pruned, kept, scores))
            share = sum(p.numel() for p in pruned.parameters()) / base_params
            assert share == pytest.approx(target, rel=LANDING)
            assert torch.isfinite(pruned(tokens).logits).all()


def test_the_image_classifiers_builder_names_where_a_language_model_is_built(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "llama")
    with pytest.raises(ConfigError, match="is a language model: autoprune.models.build_hf"):
        build_model(f"hf:{folder}", num_classes=10, in_channels=1, image_size=8)


def test_export_reloads_and_its_programs_give_the_same_logits(tmp_path: Path) -> None:
    import autoprune

    model = _base(_folder(tmp_path, "qwen2"))
    decoder.cut(model, decoder.choose(model, decoder.kept_units(model, RATIOS), decoder.magnitude_scores(model)))
    result = export_decoder(model, tmp_path / "export")
    assert result.program_diff <= 1e-4 and result.onnx_diff is not None and result.onnx_diff <= 1e-4
    tokens = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(tokens).logits
        torch.testing.assert_close(autoprune.load(tmp_path / "export")(tokens).logits, expected, rtol=0, atol=0)
        program = torch.export.load(tmp_path / "export" / "model.pt2").module()
        torch.testing.assert_close(program(tokens), expected, rtol=1e-5, atol=1e-5)
