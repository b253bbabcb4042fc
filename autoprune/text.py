"""Text data for language models: local files, tokenized with the checkpoint's tokenizer, split by document.

Each file is one document (a ``.jsonl`` file: one document per line, its ``"text"``; a ``.bin`` file:
token ids already, as nanoGPT's ``prepare.py`` writes them, one document between end-of-text tokens).
The documents are shuffled with a seed and split into train, validation and test by document, so no
document is in two splits; each split's documents are tokenized, joined with the tokenizer's
end-of-text token, and cut into blocks of ``block`` tokens (the last partial block dropped).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import ConfigError

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    tokens: tuple[int, ...] | None = None
    """The document's token ids, where its file held them (``.bin``): ``text`` is then empty."""


TOKEN_DTYPES = {2**16: np.uint16, 2**32: np.uint32}
"""A ``.bin`` file's integer type: the narrowest that holds the tokenizer's vocabulary (nanoGPT's
``uint16`` for GPT-2's 50,257 tokens)."""


def read_tokens(path: Path, vocab: int, end: int | None) -> list[Document]:
    """The documents of a ``.bin`` file of token ids: split at ``end`` (the tokenizer's end-of-text
    token; the whole file when there is none), empty ones dropped.

    Raises:
        ConfigError: an id outside the vocabulary (a file written for another tokenizer or integer type).
    """
    dtype = next(t for limit, t in TOKEN_DTYPES.items() if vocab <= limit)
    ids = np.fromfile(path, dtype=dtype).astype(np.int64)
    if len(ids) and int(ids.max()) >= vocab:
        raise ConfigError(
            f"text data: {path} holds token id {int(ids.max())}, outside the tokenizer's {vocab} tokens: a .bin "
            f"of this tokenizer holds {np.dtype(dtype).name} ids"
        )
    cuts = np.flatnonzero(ids == end) if end is not None else np.array([], dtype=np.int64)
    parts = np.split(ids, cuts)
    pieces = [part[1:] if i and end is not None else part for i, part in enumerate(parts)]
    return [Document(f"{path}:{i}", "", tuple(int(t) for t in piece)) for i, piece in enumerate(pieces) if len(piece)]


@dataclass(frozen=True)
class TextSplits:
    """Token blocks, ``(blocks, block)`` int64 tensors, and the documents of each split by name."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    documents: dict[str, list[str]]


def read_documents(
    patterns: Sequence[str], exclude: Sequence[str] = (), *, vocab: int | None = None, end: int | None = None
) -> list[Document]:
    """The documents of every file the glob patterns match (``**`` recurses), in name order, each once;
    a file whose path matches one of ``exclude`` (shell-style, ``*`` crossing folders) is left out.
    ``.bin`` files of token ids need the tokenizer's ``vocab`` size and its end-of-text token ``end``.

    Raises:
        ConfigError: a pattern matches no file, a file is not UTF-8 text, or a ``.bin`` file comes
            without ``vocab`` or holds an id outside it.
    """
    files: dict[str, Path] = {}
    for pattern in patterns:
        found = [m for m in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True)) if Path(m).is_file()]
        matched = [m for m in found if not any(fnmatch.fnmatch(m, x) for x in exclude)]
        if not found:
            raise ConfigError(f"text data: no file matches {pattern!r}")
        if not matched:
            raise ConfigError(
                f"text data: the {len(found)} files {pattern!r} matches are all excluded by {list(exclude)}"
            )
        files.update((str(Path(m)), Path(m)) for m in matched)
    documents = []
    for name, path in sorted(files.items()):
        if path.suffix == ".bin":
            if vocab is None:
                raise ConfigError(f"text data: {path} holds token ids, read with a tokenizer's vocabulary")
            documents += read_tokens(path, vocab, end)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"text data: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); leave it out (exclude)"
            ) from None
        if path.suffix == ".jsonl":
            for line, row in enumerate(text.splitlines(), 1):
                if row.strip():
                    documents.append(Document(f"{name}:{line}", str(json.loads(row)["text"])))
        elif text.strip():
            documents.append(Document(name, text))
    return documents


def split_documents(
    documents: Sequence[Document], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Document]]:
    """Train, validation and test documents: shuffled with ``seed``, validation and test each at
    least one document (their fraction of the documents, rounded), train the rest.

    Raises:
        ConfigError: fewer than three documents, or none left for training.
    """
    if len(documents) < 3:
        raise ConfigError(f"text data: {len(documents)} document(s); splitting by document needs at least 3")
    order = list(documents)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction))
    n_test = max(1, round(len(order) * test_fraction))
    if n_val + n_test >= len(order):
        raise ConfigError(
            f"text data: {len(order)} documents leave none for training after {n_val} validation and {n_test} test"
        )
    return {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}


def blocks(documents: Sequence[Document], tokenize: Tokenize, end: int | None, block: int) -> torch.Tensor:
    """The documents' tokens, each followed by ``end`` (where given), joined and cut into rows of ``block``."""
    ids: list[int] = []
    for document in documents:
        ids += document.tokens if document.tokens is not None else tokenize(document.text)
        if end is not None:
            ids.append(end)
    rows = len(ids) // block
    return torch.tensor(ids[: rows * block], dtype=torch.long).reshape(rows, block)


def load_text(
    patterns: Sequence[str],
    tokenizer: object,
    *,
    block: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    exclude: Sequence[str] = (),
) -> TextSplits:
    """Text data from local files (module docstring), tokenized with a Hugging Face ``tokenizer``.

    Raises:
        ConfigError: no file, too few documents, or a split too short for one block.
    """
    end = getattr(tokenizer, "eos_token_id", None)
    vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    documents = read_documents(patterns, exclude, vocab=vocab, end=end)
    parts = split_documents(documents, val_fraction, test_fraction, seed)

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    tensors = {name: blocks(docs, tokenize, end, block) for name, docs in parts.items()}
    short = [name for name, rows in tensors.items() if len(rows) == 0]
    if short:
        raise ConfigError(f"text data: the {' and '.join(short)} split(s) hold fewer than {block} tokens")
    names = {name: [d.name for d in docs] for name, docs in parts.items()}
    return TextSplits(tensors["train"], tensors["val"], tensors["test"], names)
