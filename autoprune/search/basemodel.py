"""The base model: loaded from a checkpoint (a pickled one only when trusted), or trained once and
cached, one process at a time (:func:`file_lock`)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune._logging import get_logger
from autoprune._progress import EpochLines, format_seconds, progress_bar
from autoprune.config import StudyConfig
from autoprune.data import DataSplits
from autoprune.errors import ConfigError
from autoprune.models import build_model
from autoprune.models._user import is_user_spec, source_file
from autoprune.search.storage import file_lock
from autoprune.trial.finetune import train_steps
from autoprune.trial.metrics import accuracy

log = get_logger(__name__)


def new_model(config: StudyConfig, data: DataSplits) -> nn.Module:
    """An untrained instance of the study's model, shaped for its data."""
    return build_model(
        config.model.name, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )


CACHE_NAME_CHARS = 48
"""Characters of the model's name kept in a cache file's name (its last ones: a file path's tail)."""


def _source_digest(spec: str, what: str) -> str | None:
    """sha256 of the file defining a user's ``module:function`` (None for built-in names)."""
    path = source_file(spec, what)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None


def cache_path(config: StudyConfig) -> Path:
    """Where the trained base model of these model, data and training settings is cached.

    The key holds the settings and, for the user's own ``module:function`` or
    ``path/to/file.py:function`` model or dataset, the sha256 of the file that defines it: editing
    that file trains a new base model. The file sits directly in ``<runs_dir>/cache/``; its name
    holds the model's name with every character other than ``A-Z a-z 0-9 . _ -`` replaced by ``_``
    (its last :data:`CACHE_NAME_CHARS` characters).
    """
    settings = config.to_dict()
    key: dict[str, object] = {k: settings[k] for k in ("model", "data", "train")} | {"seed": config.study.seed}
    sources = {
        what: _source_digest(name, what)
        for what, name in (("model", config.model.name), ("dataset", config.data.name))
        if is_user_spec(name)
    }
    if sources:  # built-in names keep the key (and the cached files) they had
        key["sources"] = sources
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", config.model.name)[-CACHE_NAME_CHARS:]
    return Path(config.study.runs_dir) / "cache" / f"base-{name}-{digest}.pt"


def load_state(model: nn.Module, path: Path) -> None:
    """Load a state_dict file into ``model`` with ``weights_only=True``; a mismatch names the first differing key."""
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} cannot be read as weights: {exc}".splitlines()[0]) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    for key in [*expected, *(k for k in state if k not in expected)]:
        if key not in state:
            raise ConfigError(f"checkpoint {path} does not match the model: key {key!r} is missing from the file")
        if key not in expected:
            raise ConfigError(f"checkpoint {path} does not match the model: unexpected key {key!r}")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"checkpoint {path} does not match the model: {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``state_dict``, detached and on the CPU, with its ``_metadata``: the layers'
    versions, without which some layers refuse to load (torchvision's MNASNet raises "version
    should be set to 1 or 2")."""
    state = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    out._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return out


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a truncated file.

    When the save fails (a full disk, a read-only folder) the temporary file is removed and the
    error raised again; torch's own error for a full disk (a ``RuntimeError`` such as "unexpected
    pos 576 vs 534") is raised as ``OSError(ENOSPC)`` naming the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except RuntimeError as exc:
        full = shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
        raise
    except BaseException:  # a read-only folder, Ctrl-C: leave nothing half-written
        tmp.unlink(missing_ok=True)
        raise


FULL_DISK_BYTES = 1 << 20
"""Free bytes under which a failed ``torch.save`` is taken for a full disk."""


def train_base(config: StudyConfig, data: DataSplits, device: torch.device) -> nn.Module:
    """Train the study's model from scratch on the train split. On a terminal one bar shows the
    epoch, loss, validation accuracy and time left; elsewhere a line is logged about every tenth of
    the epochs (every epoch at debug verbosity), with the time left."""
    torch.manual_seed(config.study.seed)
    model = new_model(config, data).to(device)
    epochs = config.train.epochs
    steps_per_epoch = max(1, math.ceil(len(data.train) / config.data.batch_size))
    total = epochs * steps_per_epoch
    batches = data.train.shuffled_batches(config.data.batch_size, torch.Generator().manual_seed(config.study.seed))
    start = time.perf_counter()
    lines = EpochLines("base model", epochs, total)
    losses: list[float] = []
    val = 0.0

    with progress_bar(total, desc="base model", unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            nonlocal val
            losses.append(loss)
            if bar is not None:
                bar.update(1)
            if (step + 1) % steps_per_epoch != 0 and step + 1 != total:
                return
            val = accuracy(model, data.val, config.data.batch_size)
            model.train()
            lines(bar, (step + steps_per_epoch) // steps_per_epoch, step + 1, sum(losses) / len(losses), val)
            losses.clear()

        train_steps(
            model,
            batches,
            steps=total,
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            amp=config.trial.amp and device.type == "cuda",
            on_step=on_step,
        )
    if bar is not None:
        log.info("base model: %d epochs in %s, val acc %.4f", epochs, format_seconds(time.perf_counter() - start), val)
    model.eval()
    return model


def base_model(config: StudyConfig, data: DataSplits, device: torch.device) -> tuple[nn.Module, Path]:
    """The study's trained base model (in eval mode, on ``device``) and the file its weights live in."""
    if config.model.checkpoint:
        path = Path(config.model.checkpoint)
        model = new_model(config, data)
        load_state(model, path)
        return model.to(device).eval(), path
    path = cache_path(config)
    model = new_model(config, data)
    if path.is_file():
        load_state(model, path)
        log.info("base model: reusing %s", path)
        return model.to(device).eval(), path
    log.info(
        "base model: training %s for %d epochs (cached afterwards in %s)", config.model.name, config.train.epochs, path
    )
    model = train_base(config, data, device)
    save_atomic(cpu_state(model), path)
    return model, path


def _trusted_checkpoint(config: StudyConfig) -> StudyConfig:
    """With ``--trust-checkpoint``: a checkpoint that needs full unpickling (a pickled model, a
    training checkpoint with other objects) is unpickled once and its state_dict written under
    ``runs/cache/``; the study then reads that file with ``weights_only=True`` like any other."""

    source = Path(config.model.checkpoint)
    if not source.is_file():
        raise ConfigError(f"checkpoint not found: {source}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = Path(config.study.runs_dir) / "cache" / f"trusted-{source.stem}-{digest}.pt"
    if not target.is_file():
        log.warning("--trust-checkpoint: unpickling %s in full (this runs any code the file holds)", source)
        obj = torch.load(source, map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        elif isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(obj.get(key), (dict, nn.Module)):
                    obj = obj[key]
                    break
            if isinstance(obj, nn.Module):
                obj = obj.state_dict()
        if not isinstance(obj, dict):
            raise ConfigError(f"checkpoint {source} holds a {type(obj).__name__}: no state_dict found in it")
        save_atomic({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, target)
    model = dataclasses.replace(config.model, checkpoint=str(target))
    return dataclasses.replace(config, model=model)


def load_base(
    config: StudyConfig, data: Any, device: torch.device, base_checkpoint: Path | None, trust: bool
) -> tuple[nn.Module, Path]:
    if base_checkpoint is not None and base_checkpoint.is_file():
        model = new_model(config, data)
        load_state(model, base_checkpoint)
        return model.to(device).eval(), base_checkpoint
    if trust and config.model.checkpoint:
        config = _trusted_checkpoint(config)
    try:
        # one process trains (or reads) the cached base model at a time; the others then read it
        with file_lock(cache_path(config).with_suffix(".lock")):
            return base_model(config, data, device)
    except ConfigError as exc:
        if "cannot be read as weights" in str(exc):
            raise ConfigError(
                f"{exc}; if the file is your own full pickle (not a state_dict), pass --trust-checkpoint"
            ) from None
        raise
