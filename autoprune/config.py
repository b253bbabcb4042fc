"""Study files: TOML loaded into frozen, typed sections with commented defaults.

A study file only overrides the defaults below. Unknown sections or keys, values of the wrong
type and values out of range are rejected with a :class:`ConfigError` naming the key, the value
and the rule. ``--set section.key=value`` overrides are parsed as TOML values and typed like the
key they override.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

OBJECTIVES = {
    "accuracy": "maximize",
    "macs": "minimize",
    "params": "minimize",
    "size": "minimize",
    "finetune_cost": "minimize",
    "latency_ms": "minimize",
    "nonzero_macs": "minimize",
    "perplexity": "minimize",
    "kl": "minimize",
}
LANGUAGE_OBJECTIVES = ("perplexity", "kl", "params", "macs")
"""What a language study (``model.name = "hf:FOLDER"``) can minimize: validation perplexity, the KL
divergence to the base model on the calibration blocks, and parameters or MACs per token."""
LANGUAGE_LIMITS = ("max_params", "max_macs")
"""The ``[budget]`` limits a language study takes (MACs per token)."""
SAMPLERS = ("auto", "nsga2", "tpe", "gp", "gaps", "switch", "random")
LATENCY_RUNTIMES = ("torch", "onnxruntime")
GRANULARITIES = ("relative", "offset", "layer", "uniform", "global", "allocation")
REFERENCES = ("uniform", "allocation")
"""What the ``allocation`` granularity's trials deviate from, and its baselines."""
KINDS = ("channels", "weights", "n:m", "channels+n:m")
"""What a study prunes: ``space.kind``."""
SPARSITY_GRANULARITIES = ("layer", "uniform", "global", "lamp")


HEARTBEAT_INTERVAL_S = 10
"""Default seconds between heartbeats of a running trial (``--heartbeat-interval``; RDB storages)."""
GRACE_PERIOD_S = 60
"""Default seconds without a heartbeat after which a running trial counts as dead (``--grace-period``)."""
STORAGE_ENV = "AUTOPRUNE_STORAGE"
"""Environment variable read as ``--storage`` when the option is not given (keeps a password out of
``ps`` and shell history; ``search --workers`` hands the URL to its workers this way)."""


def _require(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {rule}")


@dataclass(frozen=True)
class StudySection:
    """How the search runs."""

    name: str = "autoprune"
    """Optuna study name; also names the default SQLite file ``runs/<name>.db``."""
    trials: int = 30
    """Total trials the study should hold; a rerun only adds the missing ones."""
    timeout: float = 0.0
    """Stop starting new trials after this many seconds (0: no limit)."""
    sampler: str = "auto"
    """One of auto, nsga2, tpe (multivariate), gp (Gaussian process), gaps, switch, random. ``gaps``
    (``allocation`` granularity only) gives each trial the policy of a front neighbour at the middle of the
    front's widest gap, until the front's neighbours are within half a point of accuracy, then the GP's
    (:mod:`autoprune.search.gaps`). ``switch`` (``allocation`` and language studies) gives each trial after the
    baselines one level switch of a band's pick (the most accurate trial at or under one of the study's
    share baselines; in a language study, the lowest in perplexity or KL): channels moved from one
    group to another at the pick's own cost, the bands in turn (:mod:`autoprune.search.switch`).
    ``auto``: ``gaps`` with the ``allocation`` granularity, ``tpe`` in a language study, ``nsga2``
    otherwise (:attr:`StudyConfig.sampler`); docs/compare.md compares them."""
    population_size: int = 8
    """NSGA-II generation size (small, so that evolution starts within an overnight budget)."""
    startup_trials: int = 8
    """tpe, gp and gaps' GP: trials sampled at random (enqueued baselines and gap fills included) before the
    model guides the search."""
    seed: int = 0
    """Seeds the sampler, fine-tuning and the random scorer."""
    storage: str = ""
    """Optuna storage URL; empty means ``sqlite:///<runs_dir>/<name>.db``."""
    runs_dir: str = "runs"
    """Where the default storage and the base-model cache live."""
    artifacts: str = ""
    """Where the study keeps its front's weights, base checkpoint and final fine-tunes: a folder (a shared mount
    for several machines), ``s3://bucket/prefix`` (S3 or an S3-compatible store, reached through
    ``AWS_ENDPOINT_URL``) or ``gs://bucket/prefix``; credentials from the clients' usual places. Empty keeps the
    front's weights in the local runs folder. Recorded with the study, so workers, reports and exports anywhere
    need only the storage URL."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    objectives: tuple[str, ...] = ("accuracy", "macs", "size")
    """What the study optimizes: any of accuracy, macs, params, size, finetune_cost, latency_ms. The default is
    what users pick a model by; with ``finetune_cost`` the fine-tune length is searched too, and a trial that
    fine-tuned a few steps is on the front however poor it is."""
    baselines: tuple[float | str, ...] = (0.25, 0.5, 0.75)
    """Ratios enqueued as the first trials, the reference the search must beat: plain global pruning with
    ``relative`` granularity (every bias 0), uniform pruning with ``offset`` (every offset 0), the same ratio in
    every group with ``layer``. With ``allocation`` granularity an entry may also be a share of the base
    model's MACs (or parameters: ``space.target``) such as ``"25%"``: uniform pruning and the allocation
    are then enqueued at the same figure, at or under that share."""
    pick_floor: float = 0.5
    """How far from chance (1 / classes) toward the base model's validation accuracy a front trial must
    be to be offered as a pick (the printed front, the report's front table, ``pick`` and ``export``):
    0.5 leaves out front trials less than halfway there, which no user would deploy; 0 offers them all.
    The chart still shows every trial."""
    max_failures: int = 5
    """Stop the study when this many trials in a row have failed (a NaN loss, say), or when every baseline
    has; the search then exits non-zero with the most common reason. 0: never stop for failures."""

    def __post_init__(self) -> None:
        _require(self.name.strip() != "", "study.name", self.name, "must not be empty")
        _require(self.max_failures >= 0, "study.max_failures", self.max_failures, "must be 0 (never stop) or more")
        _require(self.trials >= 1, "study.trials", self.trials, "must be at least 1")
        _require(self.timeout >= 0, "study.timeout", self.timeout, "must be >= 0 seconds")
        _require(self.sampler in SAMPLERS, "study.sampler", self.sampler, f"must be one of {', '.join(SAMPLERS)}")
        _require(self.population_size >= 2, "study.population_size", self.population_size, "must be at least 2")
        _require(self.startup_trials >= 1, "study.startup_trials", self.startup_trials, "must be at least 1")
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "study.device",
            self.device,
            "must be auto, cpu, cuda or cuda:N",
        )
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        _require(not unknown, "study.objectives", list(self.objectives), f"each must be one of {', '.join(OBJECTIVES)}")
        _require(
            len(set(self.objectives)) == len(self.objectives),
            "study.objectives",
            list(self.objectives),
            "must not repeat",
        )
        _require(0.0 <= self.pick_floor <= 1.0, "study.pick_floor", self.pick_floor, "must be in [0, 1]")
        for baseline in self.baselines:
            _require(
                isinstance(baseline, float) and 0.0 <= baseline < 1.0 or baseline_share(baseline) is not None,
                "study.baselines",
                list(self.baselines),
                "each must be a ratio in [0, 1) or a share of the base model's figure such as '25%'",
            )


PICK_SHARES = (0.5, 0.25, 0.125)
"""The shares of the base model's figure a study is read at when its baselines name none: the progress
line's best accuracy, the switch sampler's and promotion's bands, compare's levels."""


def baseline_share(baseline: float | str) -> float | None:
    """The fraction of the base model's figure a ``study.baselines`` entry such as ``"25%"`` names, in
    (0, 1]; ``None`` for a ratio or anything else."""
    if not isinstance(baseline, str) or not baseline.strip().endswith("%"):
        return None
    try:
        share = float(baseline.strip()[:-1]) / 100.0
    except ValueError:
        return None
    return share if 0.0 < share <= 1.0 else None


@dataclass(frozen=True)
class ModelSection:
    """The network to prune."""

    name: str = "digits_resnet"
    """A built-in model name (see ``autoprune.models.MODELS``), ``torchvision:NAME`` (any torchvision
    classification model, untrained), or the user's builder as ``module:function`` or
    ``path/to/file.py:function`` (this imports and runs the user's code)."""
    checkpoint: str = ""
    """A state_dict file; empty means: train the base model once and cache it."""

    def __post_init__(self) -> None:
        from autoprune.models import check_model_name

        check_model_name(self.name)


@dataclass(frozen=True)
class DataSection:
    """The data, split into train / validation / test."""

    name: str = "digits"
    """A built-in dataset name (see ``autoprune.data.DATASETS``), or the user's ``module:function``
    returning ``(train_dataset, test_dataset)`` (this imports and runs the user's code)."""
    root: str = ""
    """Dataset root folder, for datasets read from disk (relative paths: from the current directory)."""
    val_fraction: float = 0.2
    """Share of the training data held out as the validation split that scores trials."""
    test_fraction: float = 0.2
    """Share of the data held out as the test split (datasets without their own test set)."""
    split_seed: int = 0
    """Seed of the stratified splits."""
    batch_size: int = 64
    """Batch size for training, fine-tuning and evaluation."""
    files: tuple[str, ...] = ()
    """``name = "text"``: the text files, as glob patterns (``**`` matches folders at any depth); each
    file is one document (``.jsonl``: one per line, its ``"text"``; ``.bin``: token ids as nanoGPT writes
    them, one document between end-of-text tokens), and the splits are drawn by document."""
    exclude: tuple[str, ...] = ()
    """``name = "text"``: glob patterns of files to leave out (``*/test/*``)."""
    block: int = 128
    """``name = "text"``: tokens per block, the unit of training and evaluation."""
    subset: int = 0
    """Use only the first N training images (before the validation split), for tests and quick runs; 0: all."""
    image_size: int = 0
    """Resize images to this many pixels square (bilinear); 0: keep the dataset's size (imagefolder needs it)."""
    augment: str = "auto"
    """Training batches: crop_flip (random crop of the zero-padded image, horizontal flip), none, or auto
    (crop_flip for cifar10 and cifar100, none otherwise)."""
    crop_padding: int = 4
    """Padding, in pixels, of the random crop."""
    mean: tuple[float, ...] = ()
    """Per-channel normalization mean of images scaled to [0, 1]; empty: measured on the train split."""
    std: tuple[float, ...] = ()
    """Per-channel normalization standard deviation; empty: measured on the train split."""

    def __post_init__(self) -> None:
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "must be in (0, 1)")
        _require(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "must be in (0, 1)")
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be at least 1")
        _require(self.block >= 2, "data.block", self.block, "must be at least 2 tokens")
        from autoprune.data import TEXT, check_dataset_name

        _require(
            self.name != TEXT or bool(self.files),
            "data.files",
            list(self.files),
            'data.name = "text" reads these files: give glob patterns such as ["corpus/**/*.txt"]',
        )
        _require(self.subset >= 0, "data.subset", self.subset, "must be >= 0 (0: all images)")
        _require(self.image_size >= 0, "data.image_size", self.image_size, "must be >= 0 (0: the dataset's size)")
        augments = ("auto", "crop_flip", "none")
        _require(self.augment in augments, "data.augment", self.augment, f"must be one of {', '.join(augments)}")
        _require(self.crop_padding >= 0, "data.crop_padding", self.crop_padding, "must be >= 0")
        _require(
            len(self.mean) == len(self.std),
            "data.mean",
            list(self.mean),
            f"must have one value per channel, as data.std has ({len(self.std)}); both empty: measured",
        )
        _require(all(s > 0 for s in self.std), "data.std", list(self.std), "each value must be > 0")
        check_dataset_name(self.name)


@dataclass(frozen=True)
class TrainSection:
    """Training of the base model (only when no checkpoint is given) and optimizer settings."""

    epochs: int = 40
    """Epochs of base-model training."""
    lr: float = 0.05
    """Peak learning rate of base-model training (SGD, momentum 0.9, cosine decay)."""
    weight_decay: float = 5e-4
    """Weight decay, for base training and fine-tuning."""

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "must be at least 1")
        _require(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")


@dataclass(frozen=True)
class SpaceSection:
    """What a trial's policy may be."""

    granularity: str = "relative"
    """How a policy's ratios are parameterized:

    - ``relative``: one target ratio of all channels, ranked across groups (global ranking), plus one
      bias per group in ``[-bias_max, bias_max]`` that shifts the group's scores by that many of the
      group's standard deviations: the search moves channels between groups around the global
      allocation, and bias 0 everywhere is plain global ranking;
    - ``offset``: one target ratio for every group, plus one offset per group in
      ``[-offset_max, offset_max]``: the group keeps ``e^offset`` times the channels the target leaves
      it (its ratio clipped to ``[ratio_min, ratio_max]``), and offset 0 everywhere is uniform pruning.
      Suits residual networks, where ranking channels across groups (``relative``, ``global``) pits
      the residual groups' summed scores against single layers;
    - ``layer``: one independent ratio per group;
    - ``uniform``: one ratio for every group;
    - ``global``: one ratio of all channels, ranked across groups;
    - ``allocation``: one target (a fraction of the base model's ``target`` figure, MACs by default),
      a mix between uniform pruning (0) and the sensitivity allocation for that target (1), and one
      offset per group in ``[-offset_max, offset_max]`` on top (natural log of the kept fraction); the
      cost model then scales every group's kept channels by one common factor so the model lands on
      its target. Offsets 0 with mix 1 are the allocation itself, with mix 0 uniform pruning. Needs
      the ``[sensitivity]`` analysis, which runs (or is read from its cache) before the first trial.
    """
    ratio_min: float = 0.0
    """Lower bound of every pruning ratio."""
    ratio_max: float = 0.8
    """Upper bound of every pruning ratio (below 1)."""
    bias_max: float = 0.5
    """``relative`` granularity: the largest group bias, in standard deviations of the group's own scores (0.5
    shifts a group's scores by half their spread against every other group's)."""
    offset_max: float = 0.7
    """``offset`` and ``allocation`` granularities: the largest group offset, in natural log of the kept
    fraction (0.7: a group keeps from half to twice the channels the target leaves it)."""
    target: str = "macs"
    """``allocation`` granularity: the figure a trial targets, ``macs``, ``params`` or ``latency_ms`` (predicted
    on ``trial.latency_runtime`` by the study's latency model, measured once before the first trial)."""
    references: tuple[str, ...] = REFERENCES
    """``allocation`` granularity: what trials deviate from and what the enqueued baselines are, at the
    MACs (or parameters) of uniform pruning at each of ``study.baselines``: ``uniform``, ``allocation``
    or both (the mix is then searched)."""
    scorers: tuple[str, ...] = ("l1", "l2", "taylor", "gradient_norm", "fpgm", "bn_scale")
    """Scorers the search may choose from (``random`` exists as a control, not for searching)."""
    default_scorer: str = ""
    """Scorer of the enqueued baselines; empty means the first of ``scorers``."""
    finetune_steps_min: int = 20
    """Fewest optimizer steps of fine-tuning a trial may get."""
    finetune_steps_max: int = 200
    """Most optimizer steps of fine-tuning a trial may get (the baselines get this many)."""
    lr_min: float = 1e-3
    """Lower bound of the fine-tune learning rate (searched on a log scale)."""
    lr_max: float = 0.1
    """Upper bound of the fine-tune learning rate."""
    prune_steps_max: int = 3
    """Most progressive prune steps (prune a part, fine-tune, prune again)."""
    channel_multiple: int = 0
    """Round kept channels down to a multiple of this. 0 (default): 8 when latency is timed on ONNX Runtime
    (``trial.latency_runtime``), whose kernels ran pruned models markedly faster at equal MACs with multiples of 8
    (reports/bench/channel-multiple.md); M for ``channels+n:m``; else 1 (eager PyTorch gained little)."""
    calibration_batches: int = 4
    """Training batches the data-driven scorers (taylor, gradient_norm) look at."""
    kind: str = "channels"
    """What a trial prunes:

    - ``channels``: whole channels removed by surgery (the model shrinks; MACs and size fall);
    - ``weights``: single weights of every convolution and linear layer zeroed (shapes stay; ``size``, the
      packed weights file, and ``nonzero_macs`` fall, dense ``macs`` does not);
    - ``n:m``: semi-structured sparsity (``space.nm``, 2:4 by default), which sparse tensor cores run faster;
      the search chooses which layers get it;
    - ``channels+n:m``: channel surgery as ``channels``, then N:M on the layers the search chooses.
    """
    sparsity_granularity: str = "layer"
    """``weights`` kind: how a policy's sparsity is parameterized (``n:m`` kinds: ``layer`` searches each
    layer's N:M on or off, ``uniform`` gives it to every layer that fits):

    - ``layer``: a target sparsity of all weights, a reference (``sparsity_references``) and one offset per
      layer in ``[-sparsity_offset_max, sparsity_offset_max]`` (natural log of the layer's kept share against
      the reference's); every layer's kept share is then scaled by one common factor so the model lands on
      its target. Offsets 0 are the reference: uniform sparsity, or LAMP's allocation;
    - ``uniform``: one sparsity for every layer;
    - ``global``: one sparsity of all weights, the scores ranked across layers (global magnitude pruning);
    - ``lamp``: as ``global``, ranked by LAMP scores, which keep every layer's strongest weights.
    """
    sparsity_mode: str = "percent"
    """``weights`` kind: ``percent`` zeroes a share of the weights; ``threshold`` zeroes the weights scoring
    under τ times their layer's highest score, τ searched in ``[threshold_min, threshold_max]`` (``layer``
    and ``uniform`` granularities)."""
    sparsity_min: float = 0.5
    """``weights`` kind, percent mode: the lowest target sparsity (share of weights zeroed)."""
    sparsity_max: float = 0.98
    """``weights`` kind, percent mode: the highest target sparsity; targets are sampled evenly in the log of
    the kept share, so 90 % to 98 % gets as many trials as 50 % to 90 %."""
    sparsity_references: tuple[str, ...] = ("uniform", "lamp")
    """``weights`` kind, ``layer`` granularity, percent mode: what the per-layer offsets start from at the
    target: ``uniform`` (every layer at the target) or ``lamp`` (the shares LAMP ranking gives the base
    model); both: the reference is searched, and each is among the enqueued baselines."""
    sparsity_offset_max: float = 1.5
    """``weights`` kind, ``layer`` granularity: the largest per-layer offset (1.5: a layer keeps from a
    quarter to 4.5 times the share the reference leaves it)."""
    threshold_min: float = 0.01
    """``weights`` kind, threshold mode: the lowest τ."""
    threshold_max: float = 0.5
    """``weights`` kind, threshold mode: the highest τ."""
    weight_scorers: tuple[str, ...] = ("magnitude", "taylor")
    """``weights`` and ``n:m`` kinds: how weights are ranked (``magnitude`` |w|, ``taylor`` |w · ∂L/∂w|;
    ``random`` exists as a control); the first scores the baselines."""
    nm: str = "2:4"
    """``n:m`` kinds: keep N of every M consecutive weights along a layer's input channels. Layers whose
    input channels M does not divide stay dense."""

    @property
    def channels(self) -> bool:
        """Whether trials remove channels."""
        return self.kind in ("channels", "channels+n:m")

    @property
    def multiple(self) -> int:
        """The channel multiple in effect: a study resolves 0 (auto) when it is made (:class:`StudyConfig`);
        a section alone takes 1."""
        return self.channel_multiple or 1

    @property
    def nm_pair(self) -> tuple[int, int]:
        n, _, m = self.nm.partition(":")
        return int(n), int(m)

    def __post_init__(self) -> None:
        from autoprune.policy import WEIGHT_SCORERS
        from autoprune.scorers import SCORERS

        _require(self.kind in KINDS, "space.kind", self.kind, f"must be one of {', '.join(KINDS)}")
        _require(
            self.sparsity_granularity in SPARSITY_GRANULARITIES,
            "space.sparsity_granularity",
            self.sparsity_granularity,
            f"must be one of {', '.join(SPARSITY_GRANULARITIES)}",
        )
        _require(
            self.sparsity_mode in ("percent", "threshold"),
            "space.sparsity_mode",
            self.sparsity_mode,
            "must be percent or threshold",
        )
        _require(
            self.sparsity_mode == "percent" or self.sparsity_granularity in ("layer", "uniform"),
            "space.sparsity_mode",
            self.sparsity_mode,
            "threshold compares each weight with its own layer's highest score: use sparsity_granularity "
            "layer or uniform",
        )
        _require(
            0.0 <= self.sparsity_min <= self.sparsity_max < 1.0,
            "space.sparsity_min",
            self.sparsity_min,
            f"needs 0 <= sparsity_min <= sparsity_max ({self.sparsity_max}) < 1",
        )
        _require(
            0.0 <= self.sparsity_offset_max <= 5.0,
            "space.sparsity_offset_max",
            self.sparsity_offset_max,
            "must be in [0, 5]",
        )
        _require(
            0.0 < self.threshold_min <= self.threshold_max < 1.0,
            "space.threshold_min",
            self.threshold_min,
            f"needs 0 < threshold_min <= threshold_max ({self.threshold_max}) < 1",
        )
        _require(
            len(self.sparsity_references) >= 1 and set(self.sparsity_references) <= {"uniform", "lamp"},
            "space.sparsity_references",
            list(self.sparsity_references),
            "must name one or both of uniform, lamp",
        )
        _require(len(self.weight_scorers) >= 1, "space.weight_scorers", [], "must name at least one weight scorer")
        for name in self.weight_scorers:
            _require(
                name in WEIGHT_SCORERS, "space.weight_scorers", name, f"must be one of {', '.join(WEIGHT_SCORERS)}"
            )
        n, _, m = self.nm.partition(":")
        _require(
            n.isdigit() and m.isdigit() and 0 < int(n) < int(m),
            "space.nm",
            self.nm,
            "must read N:M with 0 < N < M, such as 2:4",
        )
        if "n:m" in self.kind:
            _require(
                self.sparsity_granularity in ("layer", "uniform"),
                "space.sparsity_granularity",
                self.sparsity_granularity,
                f"kind {self.kind} chooses layers for N:M: use layer (searched) or uniform (every layer)",
            )
        if self.kind == "channels+n:m":
            _require(
                self.channel_multiple % int(m) == 0,
                "space.channel_multiple",
                self.channel_multiple,
                f"kind channels+n:m needs kept channels in multiples of M ({m}) so N:M fits the pruned layers: "
                f"set it to {m}",
            )

        _require(
            self.granularity in GRANULARITIES,
            "space.granularity",
            self.granularity,
            f"must be one of {', '.join(GRANULARITIES)}",
        )
        _require(0.0 <= self.ratio_min < 1.0, "space.ratio_min", self.ratio_min, "must be in [0, 1)")
        _require(0.0 <= self.ratio_max < 1.0, "space.ratio_max", self.ratio_max, "must be in [0, 1)")
        _require(
            self.ratio_min <= self.ratio_max,
            "space.ratio_min",
            self.ratio_min,
            f"must be <= space.ratio_max ({self.ratio_max})",
        )
        _require(0.0 <= self.bias_max <= 5.0, "space.bias_max", self.bias_max, "must be in [0, 5]")
        _require(0.0 <= self.offset_max <= 3.0, "space.offset_max", self.offset_max, "must be in [0, 3]")
        _require(
            self.target in ("macs", "params", "latency_ms"),
            "space.target",
            self.target,
            "must be macs, params or latency_ms",
        )
        _require(
            len(self.references) >= 1 and set(self.references) <= set(REFERENCES),
            "space.references",
            list(self.references),
            f"must name one or both of {', '.join(REFERENCES)}",
        )
        object.__setattr__(self, "scorers", tuple(SCORERS.current(n) for n in self.scorers))
        object.__setattr__(self, "default_scorer", SCORERS.current(self.default_scorer))
        _require(len(self.scorers) >= 1, "space.scorers", list(self.scorers), "must name at least one scorer")
        for name in self.scorers:
            _require(name in SCORERS, "space.scorers", name, f"unknown scorer; known: {', '.join(SCORERS.names())}")
        _require(
            self.default_scorer in ("", *self.scorers),
            "space.default_scorer",
            self.default_scorer,
            f"must be one of space.scorers ({', '.join(self.scorers)})",
        )
        if not self.default_scorer:
            object.__setattr__(self, "default_scorer", self.scorers[0])
        _require(self.finetune_steps_min >= 0, "space.finetune_steps_min", self.finetune_steps_min, "must be >= 0")
        _require(
            self.finetune_steps_max >= max(self.finetune_steps_min, 1),
            "space.finetune_steps_max",
            self.finetune_steps_max,
            f"must be >= max(1, space.finetune_steps_min = {self.finetune_steps_min})",
        )
        _require(self.lr_min > 0, "space.lr_min", self.lr_min, "must be > 0")
        _require(self.lr_max >= self.lr_min, "space.lr_max", self.lr_max, f"must be >= space.lr_min ({self.lr_min})")
        _require(1 <= self.prune_steps_max <= 10, "space.prune_steps_max", self.prune_steps_max, "must be in [1, 10]")
        _require(
            self.channel_multiple >= 0, "space.channel_multiple", self.channel_multiple, "must be 0 (auto) or above"
        )
        _require(
            self.calibration_batches >= 1, "space.calibration_batches", self.calibration_batches, "must be at least 1"
        )


@dataclass(frozen=True)
class TrialSection:
    """How each trial runs, beyond its policy."""

    recalibrate_batches: int = 0
    """Training batches that re-estimate BatchNorm statistics right after the first prune step (adaptive
    BN), followed by the cheap first look: validation accuracy before any fine-tuning. 0 (default): neither;
    it is opt-in because on Fashion-MNIST it ranked trials poorly against fine-tuned accuracy for a
    noticeable share of trial time (both measured in reports/bench/fashion_mnist.md)."""
    first_look_samples: int = 1000
    """Validation samples the first look evaluates (0: all): a ranking needs fewer than the final score, and
    a full validation pass would cost as much as the fine-tune it is meant to save."""
    early_stop_margin: float = -1.0
    """Stop a trial before fine-tuning (Optuna state PRUNED, figures kept) when its first-look accuracy is
    below chance (1 / classes) plus this margin; negative: never stop."""
    latency_runtime: str = "torch"
    """Where latency (an objective or a budget) is timed: ``torch`` (eager PyTorch on the study's device) or
    ``onnxruntime`` (the model exported to ONNX and run by ONNX Runtime: its CPU provider, CUDA's on a GPU
    where installed), the runtime that serves the model."""
    latency_batch_size: int = 1
    """Batch size of the latency measurement (taken when latency_ms is an objective or a budget)."""
    latency_threads: int = 0
    """CPU threads of the latency measurement, as the deployment runs it; 0: the runtime's own choice."""
    latency_repeats: int = 30
    """Timed forward passes; the median is recorded, after a third as many warm-up passes."""
    latency_predicted: bool = True
    """When the space removes channels: a trial's latency is predicted from the study's latency model (each
    layer timed alone on a grid of widths, calibrated on the whole model; measured once per study, in seconds)
    instead of timed, and the report times the front for real; false: every trial is timed."""
    amp: bool = True
    """On CUDA: bf16 autocast and channels_last memory format for training and evaluation."""
    distill_weight: float = 0.0
    """Knowledge distillation from the base model in every trial's fine-tune, baselines included: α of the loss
    ``(1 - α) · cross-entropy + α · T² · KL(teacher ‖ student)`` at temperature T; 0 (default): plain
    cross-entropy. Each step also runs the base model forward."""
    distill_temperature: float = 4.0
    """T of the distillation loss: higher softens both models' outputs more."""
    common_batches: bool = False
    """Common random numbers: every trial fine-tunes on the same batches in the same order (seeded by
    ``study.seed``), so two trials differ by their policies alone and not by the luck of their batches;
    false (default): each trial's batches are seeded by ``study.seed`` plus its number."""

    def __post_init__(self) -> None:
        _require(0.0 <= self.distill_weight <= 1.0, "trial.distill_weight", self.distill_weight, "must be in [0, 1]")
        _require(self.distill_temperature > 0, "trial.distill_temperature", self.distill_temperature, "must be > 0")
        _require(self.recalibrate_batches >= 0, "trial.recalibrate_batches", self.recalibrate_batches, "must be >= 0")
        _require(self.first_look_samples >= 0, "trial.first_look_samples", self.first_look_samples, "must be >= 0")
        _require(
            self.early_stop_margin < 0 or self.recalibrate_batches > 0,
            "trial.early_stop_margin",
            self.early_stop_margin,
            "needs trial.recalibrate_batches > 0 (the first look decides the early stop)",
        )
        _require(
            self.latency_runtime in LATENCY_RUNTIMES,
            "trial.latency_runtime",
            self.latency_runtime,
            f"must be one of {', '.join(LATENCY_RUNTIMES)}",
        )
        _require(self.latency_batch_size >= 1, "trial.latency_batch_size", self.latency_batch_size, "must be >= 1")
        _require(self.latency_threads >= 0, "trial.latency_threads", self.latency_threads, "must be >= 0")
        _require(self.latency_repeats >= 1, "trial.latency_repeats", self.latency_repeats, "must be >= 1")


PROMOTION_BANDS = ("octaves", "levels")
"""``fidelity.bands``: where promotion takes its runs from."""


@dataclass(frozen=True)
class FidelitySection:
    """Promotion across fine-tune budgets (successive halving, per band of MACs): once ``study.trials``
    trials have run, the best of each band are fine-tuned ``eta`` times longer, continuing from their
    kept weights, and so on for ``rungs`` rungs; the front holds the highest rung each policy reached."""

    rungs: int = 1
    """Fine-tune budgets a policy can reach; 1 (default): every trial is judged after its one fine-tune."""
    eta: int = 3
    """Each rung fine-tunes ``eta`` times as long in all as the one before, and promotes the best 1/``eta``
    of every band (at least one per band)."""
    bands: str = "octaves"
    """Where the promoted runs come from. ``octaves`` (default): the best 1/``eta`` of every octave of the
    base figure, (50 %, 100 %], (25 %, 50 %], ... ``levels``: as many runs, from the bands a user picks
    from only: between consecutive share baselines (``"50%"``, ``"25%"``, ...; 50, 25 and 12.5 % when
    the study names none), the lowest band down to half its level; each band's best, then each band's
    second best, and so on."""

    def __post_init__(self) -> None:
        _require(self.rungs >= 1, "fidelity.rungs", self.rungs, "must be >= 1 (1: no promotion)")
        _require(self.eta >= 2, "fidelity.eta", self.eta, "must be >= 2")
        _require(
            self.bands in PROMOTION_BANDS, "fidelity.bands", self.bands, f"must be one of {', '.join(PROMOTION_BANDS)}"
        )


@dataclass(frozen=True)
class SensitivitySection:
    """The sensitivity analysis (``autoprune sensitivity``; the first step of an ``allocation`` study): every
    group pruned alone at each ratio with ``space.default_scorer``, BatchNorm statistics re-estimated, and
    validation loss and accuracy measured."""

    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """The ratios each group is pruned at, alone."""
    batches: int = 4
    """Training batches that re-estimate BatchNorm statistics after each pruning (0: none)."""
    samples: int = 1000
    """Validation samples each pruned model is measured on (0: all); the same ones every time. The
    measurement dominates the analysis's time (reports/bench/sensitivity-fashion_mnist_mobilenet/ times one)."""

    def __post_init__(self) -> None:
        _require(len(self.ratios) >= 1, "sensitivity.ratios", list(self.ratios), "must name at least one ratio")
        for ratio in self.ratios:
            _require(0.0 < ratio < 1.0, "sensitivity.ratios", ratio, "every ratio must be in (0, 1)")
        _require(
            list(self.ratios) == sorted(set(self.ratios)),
            "sensitivity.ratios",
            list(self.ratios),
            "must rise, without repeats",
        )
        _require(self.batches >= 0, "sensitivity.batches", self.batches, "must be >= 0")
        _require(self.samples >= 0, "sensitivity.samples", self.samples, "must be >= 0")


@dataclass(frozen=True)
class LanguageSection:
    """A language study (``model.name = "hf:FOLDER"``, ``data.name = "text"``): how heads and channels are
    ranked, what a trial is scored on and how long it recovers (docs/language-models.md)."""

    scorer: str = "activation"
    """How heads and channels are ranked: activation (each unit's activation on the calibration blocks
    times its outgoing weights' norm; the hidden size: its activation after every norm) or magnitude
    (weights only)."""
    calibration_blocks: int = 32
    """Training blocks, drawn with ``study.seed``, that the scorer and the sensitivity analysis look at and
    that a trial's KL divergence to the base model is measured on."""
    eval_blocks: int = 256
    """Validation blocks a trial's perplexity is measured on (test blocks for the report's test perplexity),
    evenly spaced over their documents; 0: all of them."""
    recovery_steps: int = 0
    """Steps of full fine-tuning after each trial's pruning, on random training blocks (0: none, as a
    search scored by KL alone, EvoPress's, runs)."""
    recovery_lr: float = 5e-4
    """Learning rate of the recovery fine-tune (AdamW, constant, batches of ``data.batch_size`` blocks)."""

    def __post_init__(self) -> None:
        scorers = ("activation", "magnitude")
        _require(self.scorer in scorers, "language.scorer", self.scorer, f"must be one of {', '.join(scorers)}")
        _require(
            self.calibration_blocks >= 1, "language.calibration_blocks", self.calibration_blocks, "must be at least 1"
        )
        _require(self.eval_blocks >= 0, "language.eval_blocks", self.eval_blocks, "must be >= 0 (0: all)")
        _require(self.recovery_steps >= 0, "language.recovery_steps", self.recovery_steps, "must be >= 0")
        _require(self.recovery_lr > 0, "language.recovery_lr", self.recovery_lr, "must be > 0")


@dataclass(frozen=True)
class BudgetSection:
    """Limits on the pruned model; during a search they become Optuna constraints.

    Each is a number or a string: absolute (``120000``, ``"1.5M"``, ``"200kB"``) or relative to the
    base model (``"50%"``). Empty means no limit. See :mod:`autoprune.budget`.
    """

    max_macs: str | float = ""
    """Most MACs of one forward pass on one example."""
    max_nonzero_macs: str | float = ""
    """Most MACs of one forward pass counting only non-zero weights (``space.kind`` weights and n:m)."""
    max_params: str | float = ""
    """Most parameters."""
    max_size: str | float = ""
    """Most bytes of the weights file, zeros packed (units: B, kB, MB, GB, KiB, MiB, GiB)."""
    max_latency_ms: str | float = ""
    """Most milliseconds per forward pass on the study's device (``trial.latency_batch_size``), or % of base."""
    min_accuracy: str | float = ""
    """Least validation accuracy, in [0, 1], or a percentage of the base model's ("99%")."""

    def __post_init__(self) -> None:
        from autoprune.budget import parse_limit

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != "":
                parse_limit(f.name, value)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study file."""

    study: StudySection = field(default_factory=StudySection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    trial: TrialSection = field(default_factory=TrialSection)
    fidelity: FidelitySection = field(default_factory=FidelitySection)
    sensitivity: SensitivitySection = field(default_factory=SensitivitySection)
    language: LanguageSection = field(default_factory=LanguageSection)
    budget: BudgetSection = field(default_factory=BudgetSection)

    def __post_init__(self) -> None:
        from autoprune.data import TEXT

        if self.is_language or self.data.name == TEXT:
            self._check_language()
        else:
            bad = [o for o in self.study.objectives if o in ("perplexity", "kl")]
            _require(
                not bad and "accuracy" in self.study.objectives,
                "study.objectives",
                list(self.study.objectives),
                "an image classifier's study must include accuracy; perplexity and kl are a language model's",
            )
        if self.space.channel_multiple == 0:  # frozen: the resolved value is what the study records
            space = dataclasses.replace(self.space, channel_multiple=self._channel_multiple())
            object.__setattr__(self, "space", space)
        _require(
            self.space.kind not in ("weights", "n:m") or "macs" not in self.study.objectives,
            "study.objectives",
            list(self.study.objectives),
            f"space.kind = {self.space.kind!r} keeps every weight in place, so dense MACs never change: minimize "
            "nonzero_macs instead (e.g. objectives = ['accuracy', 'nonzero_macs', 'size'])",
        )
        _require(
            (self.space.channels and self.space.granularity == "allocation")
            or self.is_language
            or not any(isinstance(b, str) for b in self.study.baselines),
            "study.baselines",
            list(self.study.baselines),
            "a share of the base model's figure ('25%') needs space.granularity = 'allocation'; give ratios otherwise",
        )
        _require(
            self.study.sampler not in ("gaps", "switch")
            or (self.space.channels and self.space.granularity == "allocation")
            or self.is_language,  # a language study's space is the allocation's; its own checks follow
            "study.sampler",
            self.study.sampler,
            f"{self.study.sampler} moves trials' MACs (or parameter) targets and per-group offsets: it needs "
            "space.granularity = 'allocation'",
        )

    @property
    def levels(self) -> tuple[float, ...]:
        """The shares of the base figure a user picks at, largest first: the study's share baselines
        (``"25%"``; in a language study a ratio ``r`` too, as the share ``1 - r`` it lands at), else
        :data:`PICK_SHARES`."""
        shares = {share for b in self.study.baselines if (share := baseline_share(b)) is not None}
        if self.is_language:
            shares |= {1.0 - float(b) for b in self.study.baselines if not isinstance(b, str) and 0.0 < b < 1.0}
        return tuple(sorted(shares, reverse=True)) or PICK_SHARES

    @property
    def is_language(self) -> bool:
        """Whether this is a language study: the model is a causal language model (``hf:FOLDER``)."""
        from autoprune.models import HF_PREFIX

        return self.model.name.startswith(HF_PREFIX)

    def _check_language(self) -> None:
        """A language study's settings: an ``hf:`` model on ``text`` data, objectives of
        :data:`LANGUAGE_OBJECTIVES`, channels only, one fine-tune budget, :data:`LANGUAGE_LIMITS` only."""
        from autoprune.data import TEXT

        _require(
            self.is_language and self.data.name == TEXT,
            "data.name" if self.is_language else "model.name",
            self.data.name if self.is_language else self.model.name,
            'a language model (model.name = "hf:FOLDER") is pruned on text (data.name = "text"), and text '
            "data prunes a language model only",
        )
        objectives = list(self.study.objectives)
        _require(
            set(objectives) <= set(LANGUAGE_OBJECTIVES)
            and bool({"perplexity", "kl"} & set(objectives))
            and bool({"params", "macs"} & set(objectives)),
            "study.objectives",
            objectives,
            "a language study minimizes perplexity or kl, and params or macs (per token): e.g. "
            'objectives = ["perplexity", "params"]',
        )
        _require(
            self.space.target in ("params", "macs"),
            "space.target",
            self.space.target,
            "a language study allocates parameters or MACs per token",
        )
        _require(self.space.kind == "channels", "space.kind", self.space.kind, "a language study prunes channels only")
        _require(self.fidelity.rungs == 1, "fidelity.rungs", self.fidelity.rungs, "a language study has one budget")
        _require(
            self.study.sampler in ("auto", "tpe", "gp", "nsga2", "random", "switch"),
            "study.sampler",
            self.study.sampler,
            "a language study samples with auto (tpe), tpe, gp, nsga2, random or switch",
        )
        limits = {k: v for k, v in dataclasses.asdict(self.budget).items() if v != ""}
        other = {k: v for k, v in limits.items() if k not in LANGUAGE_LIMITS}
        _require(not other, "budget", other, f"a language study takes {' and '.join(LANGUAGE_LIMITS)} limits only")

    def _channel_multiple(self) -> int:
        """``space.channel_multiple = 0`` resolved: M of N:M for ``channels+n:m``, 8 on ONNX Runtime, else 1."""
        if self.space.kind == "channels+n:m":
            return int(self.space.nm_pair[1])
        return 8 if self.trial.latency_runtime == "onnxruntime" else 1

    @property
    def needs_latency(self) -> bool:
        """Whether trials record latency: an objective, a budget or the allocation's target."""
        return (
            "latency_ms" in self.study.objectives
            or self.budget.max_latency_ms != ""
            or (self.space.granularity == "allocation" and self.space.target == "latency_ms")
        )

    @property
    def predicts_latency(self) -> bool:
        """Whether the study fits a latency model: trials' latency is predicted (``trial.latency_predicted``,
        a space that removes channels) or the allocation targets latency."""
        if not (self.space.channels and self.needs_latency):
            return False
        return self.trial.latency_predicted or self.space.target == "latency_ms"

    @property
    def sampler(self) -> str:
        """The sampler the study runs: ``study.sampler``, with ``auto`` resolved to ``gaps`` for an
        ``allocation`` space of channels and to ``nsga2`` otherwise."""
        if self.study.sampler != "auto":
            return self.study.sampler
        if self.is_language:
            return "tpe"
        return "gaps" if self.space.channels and self.space.granularity == "allocation" else "nsga2"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A plain, JSON-able dict that :func:`config_from_dict` reads back."""
        return {
            f.name: {
                k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, f.name)).items()
            }
            for f in dataclasses.fields(self)
        }


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(StudyConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(StudyConfig)}


def _type_name(annotation: Any) -> str:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return " or ".join(t.__name__ for t in options or (annotation,))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r}: must be a list of {_type_name(item_type)}")
        return tuple(_coerce(key, item, item_type) for item in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r}: must be a {_type_name(annotation)}")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r}: must be finite")
        return float(value)
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} = {value!r}: must be an integer")
    if annotation in (str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{key} = {value!r}: must be a {annotation.__name__}")
    return value


def config_from_dict(data: dict[str, Any]) -> StudyConfig:
    """Build a :class:`StudyConfig` from nested dicts, rejecting unknown keys."""
    sections = _sections()
    built: dict[str, Any] = {}
    for section_name, values in data.items():
        if section_name not in sections:
            raise ConfigError(f"unknown section [{section_name}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{section_name} = {values!r}: must be a table [{section_name}]")
        section_cls = sections[section_name]
        hints = typing.get_type_hints(section_cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown key {section_name}.{key}; known: {', '.join(hints)}")
            kwargs[key] = _coerce(f"{section_name}.{key}", value, hints[key])
        built[section_name] = section_cls(**kwargs)
    return StudyConfig(**built)


def _parse_override(item: str) -> tuple[str, str, str]:
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"--set {item!r}: must look like section.key=value")
    return section, name, raw.strip()


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to raw study-file data (a new dict is returned).

    The value is read as a TOML value (``0.5``, ``"nsga2"``, ``["l1", "l2"]``); for string keys a
    bare word is accepted too (``study.sampler=tpe``).
    """
    merged = {section: dict(values) for section, values in data.items()}
    sections = _sections()
    for item in overrides:
        section, name, raw = _parse_override(item)
        if section not in sections:
            raise ConfigError(f"--set {item!r}: unknown section [{section}]; known: {', '.join(sections)}")
        hints = typing.get_type_hints(sections[section])
        if name not in hints:
            raise ConfigError(f"--set {item!r}: unknown key {section}.{name}; known: {', '.join(hints)}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            if hints[name] is not str and str not in typing.get_args(hints[name]):
                raise ConfigError(f"--set {item!r}: {raw!r} is not a valid value for {section}.{name}") from None
            value = raw
        merged.setdefault(section, {})[name] = value
    return merged


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> StudyConfig:
    """Read a study file, apply overrides and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return config_from_dict(apply_overrides(data, overrides))


__all__ = [
    "BudgetSection",
    "DataSection",
    "FidelitySection",
    "LanguageSection",
    "ModelSection",
    "SensitivitySection",
    "SpaceSection",
    "StudyConfig",
    "StudySection",
    "TrainSection",
    "TrialSection",
    "apply_overrides",
    "baseline_share",
    "config_from_dict",
    "load_config",
]
