"""The study record: what autoprune keeps in an Optuna study beside its trials (the settings, the base
model and its figures, the code that ran it, the sensitivity analysis, the groups, the data's shape),
typed and versioned. Only this module reads or writes the study attribute that holds it; a record of
an earlier version is migrated when it is read."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autoprune._logging import get_logger, redact_url
from autoprune.config import StudyConfig, config_from_dict
from autoprune.errors import AutopruneError
from autoprune.trial.latency_model import LatencyModel
from autoprune.trial.metrics import Measurement
from autoprune.trial.sensitivity import Sensitivity

log = get_logger(__name__)

RECORD_ATTR = "autoprune"
"""The study user attribute holding the record."""
LANGUAGE_ATTR = "language"
"""The study user attribute that holds a language study's settings and base figures instead."""


def is_language_study(study: optuna.Study) -> bool:
    """Whether a stored study is a language study (:mod:`autoprune.search.language`)."""
    return LANGUAGE_ATTR in study.user_attrs


VERSION = 3
"""The record's format. 1: the untyped record of studies made before records carried a version (the
same keys, some optional ones missing); 2: ``version`` added; 3: ``artifacts`` may name a bucket and
``base_in_store`` says whether the base checkpoint is in it."""

RESULT_CODE = ("trial", "search", "models", "scorers", "data.py", "config.py", "policy.py", "budget.py", "registry.py")
"""The parts of the package that decide a trial's result: what :func:`code_sha256` covers. Benchmarks,
reports, exports, the command line and logging do not: editing a table's format keeps stored runs."""

COMPARED = ("model", "data", "train", "space", "sensitivity", "language", "budget")
LATENCY_KEYS = ("latency_runtime", "latency_batch_size", "latency_threads")
"""The ``[trial]`` keys that say what a trial's latency is: compared like the sections above."""
"""Sections that define what a study's trials mean: a stored study whose values differ is refused."""


@functools.cache
def code_sha256() -> str:
    """sha256 of the source files that decide a trial's result (:data:`RESULT_CODE`: their paths in the
    package and their contents): what a study records of the code that ran it, and what ``compare`` reruns
    a stored run for when it changed."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in RESULT_CODE:
            digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def public_settings(config: StudyConfig) -> StudyConfig:
    """The settings as a study stores them: the storage URL without its password."""
    study = dataclasses.replace(config.study, storage=redact_url(config.study.storage))
    return dataclasses.replace(config, study=study)


def settings_differences(stored: StudyConfig, new: StudyConfig) -> list[str]:
    """The keys (``space.ratio_max``, ``study.objectives``) whose values differ between a stored
    study's settings and a new study file's (:data:`COMPARED` sections, the objectives and, where the
    study takes latency, :data:`LATENCY_KEYS`): trials made under one are not comparable to the other."""
    old, cur = stored.to_dict(), new.to_dict()
    differ = [
        f"{section}.{key}"
        for section in COMPARED
        for key in sorted(set(old[section]) | set(cur[section]))
        if old[section].get(key) != cur[section].get(key)
    ]
    if stored.needs_latency or new.needs_latency:
        differ += [f"trial.{key}" for key in LATENCY_KEYS if old["trial"].get(key) != cur["trial"].get(key)]
    if list(stored.study.objectives) != list(new.study.objectives):
        differ.append("study.objectives")
    return differ


@dataclass(frozen=True)
class DataShape:
    """The shape of the study's data, which rebuilding its model needs."""

    num_classes: int
    in_channels: int
    image_size: int
    example_input: tuple[int, ...]
    """The shape of one input batch, for torch-pruning's tracing."""


@dataclass(frozen=True)
class StudyRecord:
    """What a study holds beside its trials. ``from_study`` reads it, ``save`` writes it."""

    config: StudyConfig
    """The settings the study runs with, as :func:`public_settings` stores them; a resumed study
    refreshes its ``study`` and ``fidelity`` sections."""
    base: Measurement
    """The base model's figures on the validation split."""
    base_checkpoint: Path
    """The base model's weights, on the machine that created the study."""
    groups: dict[str, int]
    """Every prunable group and its channels."""
    data_shape: DataShape
    base_sha256: str | None = None
    code_sha256: str | None = None
    """:func:`code_sha256` of the code that created the study."""
    artifacts: str | None = None
    """Where the study's artifacts are: a folder or ``s3://bucket/prefix/<name>/<study ID>``
    (:class:`~autoprune.search.artifacts.Artifacts`)."""
    base_in_store: bool = False
    """Whether the base checkpoint is in the artifact store too (a study given ``study.artifacts``)."""
    study_id: str | None = None
    """An ID that keys the artifacts folder: two stores holding studies of one name never share one."""
    sensitivity: Sensitivity | None = None
    """The base model's sensitivity analysis (``allocation`` granularity)."""
    latency_model: LatencyModel | None = None
    """The latency model trials' latency is predicted by (:attr:`StudyConfig.predicts_latency`)."""

    @classmethod
    def find(cls, study: optuna.Study) -> StudyRecord | None:
        """The study's record, ``None`` for a study autoprune did not make."""
        data = study.user_attrs.get(RECORD_ATTR)
        return cls.from_dict(data) if data is not None else None

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyRecord:
        """The study's record.

        Raises:
            AutopruneError: autoprune did not make the study.
        """
        record = cls.find(study)
        if record is None and "language" in study.user_attrs:
            raise AutopruneError(
                f"study {study.study_name!r} is a language study: `autoprune report`, `pick` and `export` read it "
                "(docs/language-models.md)"
            )
        if record is None:
            raise AutopruneError(f"study {study.study_name!r} was not made by autoprune (no {RECORD_ATTR!r} attribute)")
        return record

    def save(self, study: optuna.Study) -> None:
        study.set_user_attr(RECORD_ATTR, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        shape = dataclasses.asdict(self.data_shape)
        return {
            "version": VERSION,
            "config": self.config.to_dict(),
            "base": self.base.to_dict(),
            "base_checkpoint": str(self.base_checkpoint),
            "base_sha256": self.base_sha256,
            "code_sha256": self.code_sha256,
            "artifacts": self.artifacts,
            "base_in_store": self.base_in_store,
            "study_id": self.study_id,
            "groups": dict(self.groups),
            "data_shape": {**shape, "example_input": list(self.data_shape.example_input)},
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity is not None else None,
            "latency_model": self.latency_model.to_dict() if self.latency_model is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyRecord:
        """A record from what a study stores, of this version or an earlier one.

        Raises:
            AutopruneError: a record of a later version (a newer autoprune made the study).
        """
        version = int(data.get("version", 1))
        if version > VERSION:
            raise AutopruneError(
                f"the study's record is of version {version}; this autoprune reads up to {VERSION}: upgrade autoprune"
            )
        shape = data["data_shape"]
        return cls(
            config=_settings(data["config"]),
            base=Measurement(**data["base"]),
            base_checkpoint=Path(data["base_checkpoint"]),
            groups={str(g): int(c) for g, c in data["groups"].items()},
            data_shape=DataShape(
                num_classes=int(shape["num_classes"]),
                in_channels=int(shape["in_channels"]),
                image_size=int(shape["image_size"]),
                example_input=tuple(int(n) for n in shape["example_input"]),
            ),
            base_sha256=data.get("base_sha256"),
            code_sha256=data.get("code_sha256"),
            artifacts=data.get("artifacts") or None,
            base_in_store=bool(data.get("base_in_store", False)),
            study_id=data.get("study_id"),
            sensitivity=Sensitivity.from_dict(data["sensitivity"]) if data.get("sensitivity") else None,
            latency_model=LatencyModel.from_dict(data["latency_model"]) if data.get("latency_model") else None,
        )

    @property
    def predicted_latency(self) -> bool:
        """Whether the study's trials hold latency predicted by its latency model, not timed."""
        return self.latency_model is not None and self.config.trial.latency_predicted

    def model_info(self) -> dict[str, Any]:
        """What :func:`autoprune.search.rebuild.build_pruned` needs to know of the study's model."""
        shape = self.data_shape
        return {
            "name": self.config.model.name,
            "num_classes": shape.num_classes,
            "in_channels": shape.in_channels,
            "image_size": shape.image_size,
        }


def _settings(data: dict[str, Any]) -> StudyConfig:
    """Stored settings as a :class:`StudyConfig`: a key the study was stored without takes its default;
    a key this version no longer has is dropped (and logged), so that an older study still reads."""
    sections = typing.get_type_hints(StudyConfig)
    known = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in sections.items()}
    kept: dict[str, Any] = {}
    for section, values in data.items():
        if section not in known:
            log.debug("study record: dropping the settings section [%s], which this version does not have", section)
            continue
        dropped = sorted(set(values) - set(known[section]))
        if dropped:
            log.debug("study record: dropping %s, which this version does not have", ", ".join(dropped))
        kept[section] = {k: v for k, v in values.items() if k not in dropped}
    return config_from_dict(kept)


__all__ = [
    "COMPARED",
    "LANGUAGE_ATTR",
    "LATENCY_KEYS",
    "RECORD_ATTR",
    "RESULT_CODE",
    "VERSION",
    "DataShape",
    "StudyRecord",
    "code_sha256",
    "is_language_study",
    "public_settings",
    "settings_differences",
]
