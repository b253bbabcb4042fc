"""Preparing a study: the data, the base model and its figures, the groups, the sensitivity analysis
and the search space, and the check that the budget can be met, all before the first trial."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune._logging import get_logger
from autoprune.config import StudyConfig
from autoprune.data import DataSplits, load_data
from autoprune.errors import ConfigError
from autoprune.scorers import make_scorer
from autoprune.search.basemodel import load_base
from autoprune.search.latency import cached_latency_model
from autoprune.search.opening import budget_of
from autoprune.search.record import DataShape, StudyRecord, code_sha256, public_settings
from autoprune.trial.allocation import Allocator
from autoprune.trial.cost import CostModel
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.latency import NOISY, measure_latency
from autoprune.trial.latency_model import LatencyModel
from autoprune.trial.metrics import Measurement, count_macs_params, measure, size_bytes
from autoprune.trial.sensitivity import Sensitivity
from autoprune.trial.space import SearchSpace
from autoprune.trial.sparsity import LampReference, WeightMasks, nonzero_macs, sparse_layers
from autoprune.trial.surgery import PrunableGroup, Surgery, TracedModel

log = get_logger(__name__)

CHANCE_MARGIN = 0.05
"""A base model less than this above chance accuracy (1 / classes) gets a warning before the study."""

NOTICEABLE_COST_ERROR = 0.001
"""Relative error of the cost model above which a study warns that trials miss their targets: a
tenth of the 1 % a trial may miss its target by anyway (:data:`autoprune.trial.allocation.LANDING`);
below it (timm's DeiT-tiny: 0.006 %) the error changes no trial."""


FAST_MS = 1.0
"""A base model faster than this on the CPU, timed at the runtime's default threads, gets a warning:
waking a pool of threads and what else the machine runs then weigh on the figure."""


@dataclass
class Prepared:
    """Everything a study needs before its first trial."""

    evaluator: TrialEvaluator
    base_path: Path
    groups: list[PrunableGroup]
    sensitivity: Sensitivity | None = None
    """The base model's sensitivity analysis (``allocation`` granularity)."""
    latency_model: LatencyModel | None = None
    """Predicts trials' latency (:attr:`~autoprune.config.StudyConfig.predicts_latency`)."""

    def record(
        self,
        config: StudyConfig,
        *,
        artifacts: str | None = None,
        study_id: str | None = None,
        base_in_store: bool = False,
    ) -> StudyRecord:
        """The study's record: ``config`` (this run's settings) as the study stores them, the base model's
        figures and file, this code's hash, the groups, the data's shape and where its artifacts are."""
        ev = self.evaluator
        return StudyRecord(
            config=public_settings(config),
            base=ev.base_measurement,
            base_checkpoint=self.base_path.resolve(),
            groups={g.name: g.channels for g in self.groups},
            data_shape=DataShape(
                num_classes=ev.data.num_classes,
                in_channels=ev.data.in_channels,
                image_size=ev.data.image_size,
                example_input=tuple(ev.example_input.shape),
            ),
            base_sha256=hashlib.sha256(self.base_path.read_bytes()).hexdigest(),
            code_sha256=code_sha256(),
            artifacts=artifacts,
            base_in_store=base_in_store,
            study_id=study_id,
            sensitivity=self.sensitivity,
            latency_model=self.latency_model,
        )


def prepare(
    config: StudyConfig,
    device: torch.device,
    *,
    base_checkpoint: Path | None = None,
    expected_base: Measurement | None = None,
    trust_checkpoint: bool = False,
    sensitivity: Sensitivity | None = None,
    latency_model: LatencyModel | None = None,
    check_budget: bool = False,
) -> Prepared:
    """Load the data and the base model, measure it and find its groups.

    Args:
        config: The study's settings.
        device: Where trials run.
        base_checkpoint: The base model of a study that has one (:func:`~autoprune.search.rebuild.base_file`).
        expected_base: The study's recorded base figures; a base model that measures otherwise (a
            machine that trained its own) is refused.
        trust_checkpoint: Allow a ``model.checkpoint`` that needs full unpickling.
        sensitivity: The study's stored sensitivity analysis (``allocation`` granularity): a worker
            or a resumed study allocates from the analysis the study was made with, wherever it runs.
        latency_model: The study's stored latency model: likewise, predictions from the tables the
            study was made with.
        check_budget: Refuse a budget no policy can meet (:func:`check_budget_reachable`), before the
            latency model is measured where the allocation does not target latency.
    """
    data = load_data(config.data).to(device)
    base, path = load_base(config, data, device, base_checkpoint, trust_checkpoint)
    example = data.val.x[:1]
    base_measurement = measure(base, example, data.val, config.data.batch_size)
    if config.needs_latency:
        timing = measure_latency(base, data.val.x[: config.trial.latency_batch_size], config.trial)
        base_measurement = dataclasses.replace(base_measurement, latency_ms=timing.ms)
        log.info("base model: latency %s, batch %d", timing.describe(), config.trial.latency_batch_size)
        if timing.spread > NOISY:
            log.warning(
                "base model: the latency passes spread by %.0f %% of their median: run nothing else beside the "
                "study, or raise trial.latency_repeats, or trial latencies differ by noise",
                100 * timing.spread,
            )
        if config.trial.latency_threads == 0 and device.type == "cpu" and timing.ms < FAST_MS:
            log.warning(
                "base model: %.3g ms at the runtime's own choice of threads: a model this fast times "
                "differently with what else the machine runs; set trial.latency_threads to the deployment's "
                "thread count",
                timing.ms,
            )
    if expected_base is not None:
        got, want = base_measurement, expected_base
        if (got.macs, got.params) != (want.macs, want.params) or abs(got.accuracy - want.accuracy) > 0.01:
            raise ConfigError(
                f"this machine's base model ({path}: val acc {got.accuracy:.4f}, {got.params:,} params) is not "
                f"the study's (val acc {want.accuracy:.4f}, {want.params:,} params)"
            )
    traced = TracedModel(base, example)
    groups = traced.groups
    log.info(
        "base model: val acc %.4f, %s MACs, %s params, %s bytes, %d prunable groups, device %s",
        base_measurement.accuracy,
        f"{base_measurement.macs:,}",
        f"{base_measurement.params:,}",
        f"{base_measurement.size:,}",
        len(groups),
        device,
    )
    chance = 1.0 / data.num_classes
    if base_measurement.accuracy < chance + CHANCE_MARGIN:
        log.warning(
            "base model: validation accuracy %.4f is at chance (%.4f for %d classes): pruning it and "
            "fine-tuning the copies measures nothing; train it longer (train.epochs, train.lr) or give a "
            "trained model.checkpoint",
            base_measurement.accuracy,
            chance,
            data.num_classes,
        )
    latency_batch = data.val.x[: config.trial.latency_batch_size]
    targets_latency = config.space.granularity == "allocation" and config.space.target == "latency_ms"
    if config.predicts_latency and latency_model is None and targets_latency:  # the allocation needs it now
        latency_model = cached_latency_model(config, traced, latency_batch, path)
    allocator = None
    if config.space.channels and config.space.granularity == "allocation":
        sensitivity, allocator = study_allocator(
            config, data, traced, path, device, stored=sensitivity, latency_model=latency_model
        )
    else:
        sensitivity = None
    layers = sparse_layers(base, config.space.kind, config.space.nm_pair[1])
    space = SearchSpace(
        config.space,
        [g.name for g in groups],
        search_finetune_steps="finetune_cost" in config.study.objectives,
        allocator=allocator,
        layers=layers,
        lamp=LampReference(base, list(layers)) if config.space.kind == "weights" else None,
    )
    budget = budget_of(config)
    resolved = budget.resolve(base_measurement.to_dict()) if budget else None
    if resolved is not None:
        log.info("budget (Optuna constraints): %s", resolved.describe_all())
    evaluator = TrialEvaluator(
        config=config,
        data=data,
        traced=traced,
        base_measurement=base_measurement,
        space=space,
        device=device,
        budget=resolved,
    )
    prepared = Prepared(evaluator, path, groups, sensitivity)
    if check_budget:  # before the latency model's tables, which a refused budget would not use
        check_budget_reachable(prepared)
    if config.predicts_latency and latency_model is None:
        latency_model = cached_latency_model(config, traced, latency_batch, path)
    prepared.latency_model = latency_model
    if config.trial.latency_predicted:  # else trials are timed
        evaluator.latency_model = latency_model
    return prepared


def study_allocator(
    config: StudyConfig,
    data: DataSplits,
    traced: TracedModel,
    base_checkpoint: Path,
    device: torch.device,
    *,
    stored: Sensitivity | None = None,
    figure: str | None = None,
    latency_model: LatencyModel | None = None,
) -> tuple[Sensitivity, Allocator]:
    """The base model's sensitivity analysis (the study's ``stored`` one, else the cached one) and
    its allocator for ``figure`` (default ``space.target``): what the ``allocation`` granularity and
    the headroom benchmark allocate from; ``latency_model`` predicts the figure ``latency_ms``."""
    from autoprune.search.sensitivity import cached_sensitivity, make_allocator

    amp = config.trial.amp and device.type == "cuda"
    sensitivity = stored or cached_sensitivity(config, data, traced, base_checkpoint, amp=amp)[0]
    cost = dataclasses.replace(CostModel.fit(traced, seed=config.study.seed), latency=latency_model)
    if cost.max_error > NOTICEABLE_COST_ERROR:
        log.warning(
            "cost model: off by up to %.1f%% on this model (the kept counts alone do not decide its cost, as where "
            "a group spans a concatenation): trials land near their %s target, not on it",
            100 * cost.max_error,
            figure or config.space.target,
        )
    allocator = make_allocator(config, sensitivity, cost, figure=figure)
    low, high = allocator.bounds
    log.info(
        "allocation: targets from %.1f%% to %.1f%% of the base model's %s; least sensitive groups first: %s",
        100 * low,
        100 * high,
        allocator.figure,
        ", ".join(g for g, _v in sensitivity.ranking()[:3]),
    )
    return sensitivity, allocator


def check_budget_reachable(prepared: Prepared) -> None:
    """Refuse, before any trial, a budget that no policy of the space can meet: an accuracy floor
    above the base model's validation accuracy (pruning and a brief fine-tune do not add accuracy),
    or ``max_*`` limits that the base model pruned at ``space.ratio_max`` in every group, at
    ``space.sparsity_max`` in every layer or with N:M wherever it fits (the smallest the space allows)
    does not fit, latency included (measured on the study's device as the trials measure it). A
    threshold-mode study is not checked: what a threshold zeroes depends on the fine-tuned weights."""
    ev = prepared.evaluator
    if ev.budget is None:
        return
    floor = ev.budget.limits.get("min_accuracy")
    if floor is not None and floor > ev.base_measurement.accuracy:
        raise ConfigError(
            f"no policy can meet {ev.budget.describe('min_accuracy')}: the base model's validation accuracy is "
            f"{ev.base_measurement.accuracy:.4f}, and pruned models are expected below it; lower min_accuracy "
            "(e.g. 99% of the base model's)"
        )
    limits = {k: v for k, v in ev.budget.limits.items() if k.startswith("max_")}
    if not limits:
        return
    cfg = ev.config.space
    if cfg.kind == "weights" and cfg.sparsity_mode == "threshold":
        return  # what a threshold zeroes depends on the fine-tuned weights
    # the space's own baseline at ratio_max, ranked by l1 (the channel counts decide the figures), with
    # sparsity_max in every layer or N:M wherever it fits
    policy = dataclasses.replace(ev.space.from_params(ev.space.baseline_params(cfg.ratio_max), seed=0), scorer="l1")
    if policy.sparsity is not None:
        layers = dict.fromkeys(policy.sparsity.layers, cfg.sparsity_max)
        policy = dataclasses.replace(
            policy, sparsity=dataclasses.replace(policy.sparsity, layers=layers, ranking="layer", scorer="magnitude")
        )
    model, graph = ev.traced.copy("cpu")
    model.eval()
    example = ev.example_input.cpu()
    scorer = make_scorer("l1", seed=0)
    surgery = Surgery(model, example, policy, scorer, groups=ev.space.groups, graph=graph) if policy.ratios else None
    masks = WeightMasks(model, policy.sparsity, 1) if policy.sparsity is not None else None
    if surgery is not None:
        for _ in range(surgery.steps):
            surgery.step()
    if masks is not None:
        masks.step()
        masks.finish()
    macs, params = count_macs_params(model, example)
    figures: dict[str, float] = {
        "macs": macs,
        "nonzero_macs": nonzero_macs(model, example, macs),
        "params": params,
        "size": size_bytes(model),
        "accuracy": 1.0,
    }
    smallest = f"{macs:,} MACs ({figures['nonzero_macs']:,} of non-zero weights), {params:,} params, "
    smallest += f"{figures['size']:,} bytes"
    if "max_latency_ms" in limits:
        settings = ev.config.trial
        model.to(ev.device)
        figures["latency_ms"] = measure_latency(model, ev.data.val.x[: settings.latency_batch_size], settings).ms
        smallest += f", {figures['latency_ms']:.3g} ms"
    broken = {k: v for k, v in ev.budget.violations(figures).items() if k in limits and v > 0}
    if broken:
        where = [f"space.ratio_max = {cfg.ratio_max} in every group"] if cfg.channels else []
        if cfg.kind == "weights":
            where.append(f"space.sparsity_max = {cfg.sparsity_max} in every layer")
        elif cfg.kind != "channels":
            where.append(f"{cfg.nm} on every layer that takes it")
        raise ConfigError(
            f"no policy in the space can meet {', '.join(ev.budget.describe(k) for k in broken)}: "
            f"pruned at {' and '.join(where)}, the model still has {smallest}; "
            "prune harder (space.ratio_max, space.sparsity_max) or loosen the budget"
        )


__all__ = ["Prepared", "check_budget_reachable", "prepare", "study_allocator"]
