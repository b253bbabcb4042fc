"""The sensitivity analysis of a study's base model, cached, and the allocator built on it.

The analysis (:func:`autoprune.trial.sensitivity.analyse`) is cached in ``<runs_dir>/cache/`` under
a key of the base model's weights (the sha256 of its checkpoint), the data settings, the
``[sensitivity]`` settings, the scorer and the seed: a rerun, a worker, ``autoprune sensitivity``
and a study all read the same file, and one process computes it at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from autoprune._logging import get_logger
from autoprune.config import StudyConfig
from autoprune.data import DataSplits
from autoprune.scorers import make_scorer
from autoprune.search.storage import file_lock
from autoprune.trial.allocation import Allocator
from autoprune.trial.cost import CostModel
from autoprune.trial.sensitivity import Point, Sensitivity, analyse
from autoprune.trial.surgery import TracedModel

log = get_logger(__name__)


def cache_file(config: StudyConfig, base_checkpoint: Path, *, amp: bool = False) -> Path:
    """Where the analysis of this base model under these settings is cached."""
    key = {
        "weights": hashlib.sha256(base_checkpoint.read_bytes()).hexdigest(),
        "data": config.data.__dict__ | {"root": ""},
        "sensitivity": config.to_dict()["sensitivity"],
        "scorer": config.space.default_scorer,
        "calibration_batches": config.space.calibration_batches,
        "batch_size": config.data.batch_size,
        "seed": config.study.seed,
        "amp": amp,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(config.study.runs_dir) / "cache" / f"sensitivity-{digest}.json"


def cached_sensitivity(
    config: StudyConfig,
    data: DataSplits,
    traced: TracedModel,
    base_checkpoint: Path,
    *,
    amp: bool = False,
) -> tuple[Sensitivity, Path]:
    """The sensitivity analysis of the (traced) base model: read from its cache file, else computed
    and cached.

    Returns:
        The analysis and its cache file.
    """
    path = cache_file(config, base_checkpoint, amp=amp)
    groups = traced.groups
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return Sensitivity.from_dict(json.loads(path.read_text(encoding="utf-8"))), path
        settings = config.sensitivity
        scorer = config.space.default_scorer
        count = max(settings.batches, config.space.calibration_batches if make_scorer(scorer).needs_data else 0)
        batches = data.train.shuffled_batches(config.data.batch_size, torch.Generator().manual_seed(config.study.seed))
        calibration = [next(batches) for _ in range(count)]
        total = len(groups) * len(settings.ratios)
        log.info(
            "sensitivity analysis: %d groups x %d ratios, scorer %s, %d validation samples (cached afterwards in %s)",
            len(groups),
            len(settings.ratios),
            scorer,
            min(settings.samples or len(data.val), len(data.val)),
            path,
        )
        start = time.perf_counter()

        def progress(point: Point, index: int, points: int) -> None:
            if (index + 1) % len(settings.ratios) == 0:
                elapsed = time.perf_counter() - start
                log.info(
                    "sensitivity: %d/%d groups (%s), %.0fs elapsed, about %.0fs left",
                    (index + 1) // len(settings.ratios),
                    len(groups),
                    point.group,
                    elapsed,
                    elapsed / (index + 1) * (points - index - 1),
                )

        sensitivity = analyse(
            traced,
            groups,
            val=data.val.head(settings.samples),
            calibration=calibration,
            bn_batches=settings.batches,
            scorer=scorer,
            ratios=settings.ratios,
            batch_size=config.data.batch_size,
            seed=config.study.seed,
            amp=amp,
            on_point=progress,
        )
        assert total == len(sensitivity.points)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sensitivity.to_dict()), encoding="utf-8")
        os.replace(tmp, path)
        log.info("sensitivity analysis: %.0fs", sensitivity.seconds)
        return sensitivity, path


def study_sensitivity(
    config: StudyConfig, device: torch.device, *, trust_checkpoint: bool = False
) -> tuple[Sensitivity, Path]:
    """The sensitivity analysis of the study file's base model (trained first when it is not cached
    yet), and its cache file."""
    from autoprune.data import load_data
    from autoprune.search.basemodel import load_base

    data = load_data(config.data).to(device)
    base, path = load_base(config, data, device, None, trust_checkpoint)
    amp = config.trial.amp and device.type == "cuda"
    return cached_sensitivity(config, data, TracedModel(base, data.val.x[:1]), path, amp=amp)


def make_allocator(
    config: StudyConfig, sensitivity: Sensitivity, cost: CostModel, *, figure: str | None = None
) -> Allocator:
    """The allocator of the study's ``[space]`` settings, for ``figure`` (default ``space.target``)."""
    space = config.space
    return Allocator(
        sensitivity,
        cost,
        figure=figure or space.target,
        channel_multiple=space.multiple,
        ratio_min=space.ratio_min,
        ratio_max=space.ratio_max,
    )


__all__ = ["cache_file", "cached_sensitivity", "make_allocator", "study_sensitivity"]
