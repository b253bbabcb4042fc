"""Hugging Face causal language models (``hf:PATH``): a local checkpoint folder, never a download.

``PATH`` is a folder as ``save_pretrained`` writes it. With weights beside its ``config.json`` the
model loads them (``AutoModelForCausalLM.from_pretrained(PATH)``); with a ``config.json`` alone it
is built from the configuration, untrained (how the tests build tiny Llama and Qwen2 models). A
tokenizer saved in the folder comes with it. ``transformers`` is an optional extra
(``pip install "autoprune[llm]"``), imported only when a study names such a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from autoprune.errors import ConfigError

PREFIX = "hf:"

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def transformers_module() -> Any:
    """The ``transformers`` package, or a ConfigError that says how to install it. Its own progress
    bars (loading and writing a checkpoint's shards, a bar each time) are turned off: autoprune shows
    the progress of the work that takes time."""
    try:
        import transformers
    except ImportError:
        raise ConfigError('Hugging Face models need transformers: pip install "autoprune[llm]"') from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def checkpoint_folder(name: str) -> Path:
    """The folder an ``hf:PATH`` name points at, checked to hold a ``config.json``."""
    folder = Path(name[len(PREFIX) :]).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{name}: {folder} is not a Hugging Face checkpoint folder (no config.json); autoprune never "
            "downloads a model: save it with save_pretrained, or download it yourself, and name its folder"
        )
    return folder


def has_weights(folder: Path) -> bool:
    """Whether a checkpoint folder holds weights (else its model is built from the configuration)."""
    return any((folder / name).is_file() for name in _WEIGHTS)


def build_hf(name: str) -> nn.Module:
    """The causal language model of an ``hf:PATH`` name, in eval mode on the CPU, in float32.

    Raises:
        ConfigError: transformers is missing, the folder is not a checkpoint, or it holds a model
            that is not a causal language model.
    """
    transformers = transformers_module()
    folder = checkpoint_folder(name)
    try:
        if has_weights(folder):
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="float32")
        else:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype="float32")
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{name}: cannot load a causal language model from {folder}: {exc}") from None
    return model.eval()


def load_tokenizer(name: str) -> Any:
    """The tokenizer saved in an ``hf:PATH`` folder, or a ConfigError where it has none."""
    transformers = transformers_module()
    folder = checkpoint_folder(name)
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{name}: no tokenizer in {folder} ({exc}); save one there with save_pretrained") from None
