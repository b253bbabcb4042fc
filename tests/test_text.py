"""Text data split by document, and a language model's perplexity and KL divergence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.text import Document, blocks, load_text, read_documents, split_documents
from autoprune.trial import language
from autoprune.trial.language import calibration_kl, kl_to_base, mean_nll, perplexity, reference_log_probs


class _Output:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class _TinyLM(nn.Module):
    """Next-token logits from the current token alone, called as a Hugging Face causal LM is."""

    def __init__(self, vocab: int, seed: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> _Output:
        return _Output(self.table(input_ids))


class _Characters:
    """A tokenizer as Hugging Face's are called: one token per character code, ``eos_token_id`` 0."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def __len__(self) -> int:
        return 256


def _corpus(tmp_path: Path, count: int = 20) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        (folder / ("sub" if i % 2 else ".") / f"doc{i:02d}.txt").write_text(f"document {i} " * 10, encoding="utf-8")
    (folder / "skip.md").write_text("left out", encoding="utf-8")
    return folder


def test_splits_hold_whole_documents(tmp_path: Path) -> None:
    folder = _corpus(tmp_path)
    data = load_text([str(folder / "**" / "*.txt")], _Characters(), block=16, val_fraction=0.1, test_fraction=0.1)
    names = data.documents
    assert len(names["val"]) == len(names["test"]) == 2 and len(names["train"]) == 16
    assert not (set(names["train"]) & set(names["val"])) and not (set(names["val"]) & set(names["test"]))
    assert data.train.shape[1] == 16 and data.train.dtype == torch.long
    again = load_text([str(folder / "**" / "*.txt")], _Characters(), block=16, val_fraction=0.1, test_fraction=0.1)
    assert again.documents == names and torch.equal(again.val, data.val)
    other = load_text(
        [str(folder / "**" / "*.txt")], _Characters(), block=16, val_fraction=0.1, test_fraction=0.1, seed=1
    )
    assert other.documents["val"] != names["val"]


def test_blocks_join_documents_with_the_end_token() -> None:
    rows = blocks([Document("a", "ab"), Document("b", "cde")], lambda t: [ord(c) for c in t], 0, 3)
    assert rows.tolist() == [[97, 98, 0], [99, 100, 101]]  # the last end token is a partial block, dropped


def test_bad_text_data_is_told(tmp_path: Path) -> None:
    folder = _corpus(tmp_path, count=2)
    with pytest.raises(ConfigError, match="no file matches"):
        read_documents([str(folder / "*.csv")])
    with pytest.raises(ConfigError, match="at least 3"):
        split_documents(read_documents([str(folder / "**" / "*.txt")]), 0.1, 0.1, 0)
    assert len(read_documents([str(folder / "**" / "*")], exclude=["*.md"])) == 2
    (folder / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_documents([str(folder / "bad.txt")])


def test_perplexity_is_exp_of_mean_token_cross_entropy() -> None:
    vocab = 11
    model = _TinyLM(vocab, seed=0)
    tokens = torch.randint(0, vocab, (5, 7), generator=torch.Generator().manual_seed(3))
    total, count = 0.0, 0
    for row in tokens:
        for position in range(1, len(row)):
            logits = model.table.weight[row[position - 1]].detach()
            total -= float(torch.log_softmax(logits, dim=0)[row[position]])
            count += 1
    assert count == 5 * 6
    assert mean_nll(model, tokens, batch_size=2) == pytest.approx(total / count, rel=1e-6)
    assert perplexity(model, tokens, batch_size=3) == pytest.approx(math.exp(total / count), rel=1e-6)


def test_kl_to_base_is_zero_for_the_base_and_positive_otherwise() -> None:
    vocab = 11
    base, other = _TinyLM(vocab, seed=0), _TinyLM(vocab, seed=1)
    tokens = torch.randint(0, vocab, (4, 6), generator=torch.Generator().manual_seed(3))
    assert kl_to_base(base, base, tokens) == pytest.approx(0.0, abs=1e-6)
    p = torch.log_softmax(base.table.weight.detach()[tokens], dim=-1)
    q = torch.log_softmax(other.table.weight.detach()[tokens], dim=-1)
    expected = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl_to_base(base, other, tokens, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_the_calibration_kl_is_the_same_whether_the_base_log_probs_are_kept_or_computed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vocab = 11
    base, other = _TinyLM(vocab, seed=0), _TinyLM(vocab, seed=1)
    tokens = torch.randint(0, vocab, (7, 6), generator=torch.Generator().manual_seed(3))
    expected = kl_to_base(base, other, tokens)
    kept = reference_log_probs(base, tokens, batch_size=3)
    assert kept is not None and kept.shape == (7, 6, vocab) and kept.device.type == "cpu"
    assert calibration_kl(other, base=base, blocks=tokens, reference=kept, batch_size=3) == pytest.approx(expected)
    monkeypatch.setattr(language, "REFERENCE_BYTES_MAX", tokens.numel() * vocab * 4 - 1)  # a byte short
    assert reference_log_probs(base, tokens, batch_size=3) is None
    assert calibration_kl(other, base=base, blocks=tokens, reference=None, batch_size=3) == pytest.approx(expected)


def test_a_bin_file_of_token_ids_is_read_as_documents_between_end_tokens(tmp_path: Path) -> None:
    import numpy as np

    tokenizer = _Characters()
    texts = [f"token document {i} " * 6 for i in range(9)]
    ids = [t for text in texts for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "corpus.bin")
    documents = read_documents([str(tmp_path / "corpus.bin")], vocab=len(tokenizer), end=0)
    assert [d.tokens for d in documents] == [tuple(tokenizer(t)["input_ids"]) for t in texts]
    # the same documents as text give the same blocks: a .bin is tokenized text, split by document alike
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    from_bin = load_text([str(tmp_path / "corpus.bin")], tokenizer, block=16, val_fraction=0.2, test_fraction=0.2)
    from_text = load_text([str(tmp_path / "*.txt")], tokenizer, block=16, val_fraction=0.2, test_fraction=0.2)
    assert from_bin.train.tolist() == from_text.train.tolist() and from_bin.val.tolist() == from_text.val.tolist()
    np.array([300, 1, 2], dtype=np.uint16).tofile(tmp_path / "other.bin")
    with pytest.raises(ConfigError, match="token id 300, outside the tokenizer's 256 tokens"):
        read_documents([str(tmp_path / "other.bin")], vocab=256, end=0)
    with pytest.raises(ConfigError, match="holds token ids, read with a tokenizer's vocabulary"):
        read_documents([str(tmp_path / "corpus.bin")])


def test_a_pattern_whose_files_are_all_excluded_says_so(tmp_path: Path) -> None:
    folder = _corpus(tmp_path)
    with pytest.raises(ConfigError, match=r"the 10 files '.*/sub/\*\.txt' matches are all excluded by \['\*/sub/\*'\]"):
        read_documents([str(folder / "sub" / "*.txt")], exclude=["*/sub/*"])
