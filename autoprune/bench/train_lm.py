"""Train a small Llama-style language model from scratch on local text: the model the language-model
measurements run on where no pretrained checkpoint can be downloaded.

A byte-level BPE tokenizer is trained on the training documents (Hugging Face ``tokenizers``), then a
Llama with grouped-query attention and tied embeddings on their token blocks (AdamW, linear warm-up,
cosine decay). The folder written is a Hugging Face checkpoint with its tokenizer (``hf:FOLDER`` names
it), and a report of the run::

    python -m autoprune.bench.train_lm --text 'DIR/**/*.py' [--exclude '*/test/*' ...] --out FOLDER
        [--steps 3000] [--hidden 192] [--layers 6] [--heads 8] [--kv-heads 2] [--intermediate 512]
        [--vocab 2048] [--block 128] [--batch 16] [--lr 2e-3] [--threads 2] [--report FILE]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.bench import commit, print_report, run_main
from autoprune.models._hf import transformers_module
from autoprune.text import load_text, read_documents, split_documents
from autoprune.trial.language import perplexity, train_step

COMMAND = "python -m autoprune.bench.train_lm"
END = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab: int) -> Any:
    """A byte-level BPE tokenizer of ``vocab`` tokens (``END`` among them) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return transformers_module().PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END, bos_token=END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", nargs="+", required=True, help="glob patterns of the text files (** recurses)")
    parser.add_argument("--exclude", nargs="*", default=[], help="shell-style patterns of paths to leave out")
    parser.add_argument("--out", required=True, help="the checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", default=None, help="where to write the report (default: FOLDER/training.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers = transformers_module()
    started = time.perf_counter()

    documents = read_documents(args.text, args.exclude)
    train_docs = split_documents(documents, 0.05, 0.05, args.seed)["train"]
    tokenizer = train_tokenizer([d.text for d in train_docs], args.vocab)
    data = load_text(args.text, tokenizer, block=args.block, seed=args.seed, exclude=args.exclude)
    end = tokenizer.convert_tokens_to_ids(END)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.block,
        tie_word_embeddings=True,
        bos_token_id=end,
        eos_token_id=end,
    )
    model = transformers.LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    losses: list[float] = []
    for step in range(args.steps):
        losses.append(train_step(model, optimizer, data.train, args.batch, generator))
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - started
            recent = sum(losses[-100:]) / len(losses[-100:])
            eta = elapsed / (step + 1) * (args.steps - step - 1)
            print(f"step {step + 1}/{args.steps}: train loss {recent:.3f}; {elapsed:.0f}s, ETA {eta:.0f}s", flush=True)
    model.eval()
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    val, test = perplexity(model, data.val), perplexity(model, data.test)
    minutes = (time.perf_counter() - started) / 60
    lines = [
        f"# A small Llama trained from scratch: {out.name}",
        "",
        f"Command: `{COMMAND} {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Commit: {commit()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {args.threads} torch threads on the CPU.",
        "",
        f"- Corpus: {len(documents)} documents ({len(data.documents['train'])} train, "
        f"{len(data.documents['val'])} validation, {len(data.documents['test'])} test, split by document, seed "
        f"{args.seed}); {data.train.numel():,} / {data.val.numel():,} / {data.test.numel():,} tokens.",
        f"- Tokenizer: byte-level BPE, {len(tokenizer)} tokens, trained on the training documents.",
        f"- Model: Llama, hidden {args.hidden}, {args.layers} layers, {args.heads} query heads over "
        f"{args.kv_heads} key/value heads, MLP {args.intermediate}, tied embeddings; {params:,} parameters.",
        f"- Training: {args.steps} steps of {args.batch} blocks of {args.block} tokens "
        f"({args.steps * args.batch * args.block:,} tokens), AdamW lr {args.lr}, {minutes:.1f} min.",
        f"- Train loss over the last 100 steps: {sum(losses[-100:]) / len(losses[-100:]):.3f}.",
        f"- Perplexity: validation {val:.2f}, test {test:.2f}.",
    ]
    print_report(lines, args.report or str(out / "training.md"))
    return 0


if __name__ == "__main__":
    run_main(main, COMMAND)
