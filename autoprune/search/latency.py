"""The study's latency model (:class:`~autoprune.trial.latency_model.LatencyModel`): fitted once per
base model, runtime and machine, and cached in ``runs/cache`` so that the studies of one model (a
compare's methods, a study made again) share it; a study keeps its own in its record, so that every
worker predicts from the same tables wherever it runs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from autoprune._logging import get_logger
from autoprune.config import StudyConfig
from autoprune.trial.latency import ROUNDS
from autoprune.trial.latency_model import BLOCKS, CALIBRATION, GRID, LAYER_REPEATS, LINEAR_OUTPUTS, LatencyModel
from autoprune.trial.surgery import TracedModel

log = get_logger(__name__)

ROUGH = 0.15
"""A latency model off by more than this on its own calibration gets a warning: its trials' latency
is then a rough guide. In ``reports/bench/latency-model.md`` the calibration errors run from 2.2 %
(the MobileNet on PyTorch) to 16.5 % (the CNN on PyTorch)."""


def _checked(model: LatencyModel) -> LatencyModel:
    if model.error > ROUGH:
        log.warning(
            "latency model: off by up to %.0f%% on its own calibration: on this model trials' latency is a rough "
            "guide (the report times the front, pick and export time it for a latency budget); "
            "trial.latency_predicted = false times every trial instead",
            100 * model.error,
        )
    return model


def _processor() -> str:
    """This machine's processor, as the kernel names it (the tables are its timings)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file(config: StudyConfig, base_checkpoint: Path, device: torch.device) -> Path:
    """Where the latency model of this base model, on this runtime and machine, is cached."""
    import onnxruntime

    trial = config.trial
    key = {
        "weights": hashlib.sha256(base_checkpoint.read_bytes()).hexdigest(),
        "runtime": [trial.latency_runtime, trial.latency_batch_size, trial.latency_threads, trial.latency_repeats],
        "space": [config.space.multiple, config.space.ratio_max],
        # how this version times: another makes other tables
        "tables": [GRID, LINEAR_OUTPUTS, LAYER_REPEATS, list(CALIBRATION), list(BLOCKS), ROUNDS],
        "seed": config.study.seed,
        "machine": [_processor(), os.cpu_count(), str(device), torch.__version__, onnxruntime.__version__],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(config.study.runs_dir) / "cache" / f"latency-{digest}.json"


def cached_latency_model(
    config: StudyConfig, traced: TracedModel, batch: torch.Tensor, base_checkpoint: Path
) -> LatencyModel:
    """The latency model of the (traced) base model, timed on ``batch`` as ``[trial]`` says: read from
    its cache file, else fitted and cached."""
    path = cache_file(config, base_checkpoint, batch.device)
    if path.exists():
        model = LatencyModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
        log.info("latency model: %s (cached in %s)", model.describe(), path)
        return _checked(model)
    log.info(
        "latency model: timing each layer alone on %s at %d widths (a linear layer's outputs at up to %d), "
        "then the whole model at %d prunings",
        config.trial.latency_runtime,
        GRID,
        LINEAR_OUTPUTS,
        sum(CALIBRATION),
    )
    start = time.perf_counter()
    model = LatencyModel.fit(
        traced,
        config.trial,
        batch=batch,
        ratio_max=config.space.ratio_max,
        multiple=config.space.multiple,
        seed=config.study.seed,
    )
    log.info("latency model: %s; %.0fs", model.describe(), time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(model.to_dict()), encoding="utf-8")
    os.replace(tmp, path)
    return _checked(model)


__all__ = ["ROUGH", "cache_file", "cached_latency_model"]
