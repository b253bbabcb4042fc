"""One row per stored trial, built once (:meth:`TrialRow.of`): what the printed front, ``pick``, the
report's tables, the comparison's fronts and the model card show of a trial."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.search.front import PARENT, front, measured, rung_of
from autoprune.search.record import StudyRecord

FIGURES = ("accuracy", "macs", "nonzero_macs", "params", "size")
"""The measured figures a row also gives as % of the base model's (``macs_pct``...)."""


@dataclass(frozen=True)
class TrialRow:
    """A stored trial's figures (absolute and as % of the base model), policy settings and time.
    The figures are ``None`` unless the trial completed with a record of its surgery.

    Attributes:
        test_accuracy: Accuracy on the test split, measured from the trial's kept weights by the
            views that need it (report, compare, export); ``None`` until then.
    """

    trial: int
    state: str
    accuracy: float | None = None
    accuracy_pct: float | None = None
    macs: int | None = None
    macs_pct: float | None = None
    nonzero_macs: int | None = None
    nonzero_macs_pct: float | None = None
    params: int | None = None
    params_pct: float | None = None
    size: int | None = None
    size_pct: float | None = None
    latency_ms: float | None = None
    finetune_cost: int | None = None
    scorer: str | None = None
    finetune_steps: int | None = None
    prune_steps: int | None = None
    lr: float | None = None
    baseline: float | str | None = None
    seconds: float | None = None
    test_accuracy: float | None = None
    rung: int = 0
    parent: int | None = None

    @classmethod
    def of(cls, trial: FrozenTrial, base: Mapping[str, Any]) -> TrialRow:
        """The row of ``trial``, its figures relative to the ``base`` model's (a study's ``base``)."""
        attrs = trial.user_attrs
        policy = attrs.get("policy") or {}
        complete = measured(trial)
        figures: dict[str, Any] = {}
        for name in FIGURES:
            # trials and base models measured before nonzero_macs existed were dense
            value = attrs.get(name, attrs.get("macs")) if complete else None
            figures[name] = value
            reference = base.get(name, base.get("macs"))
            figures[f"{name}_pct"] = 100.0 * value / reference if value is not None and reference else None
        return cls(
            trial=trial.number,
            state=trial.state.name,
            **figures,
            latency_ms=attrs.get("latency_ms") if complete else None,
            finetune_cost=attrs.get("finetune_cost"),
            scorer=_scorer(policy),
            finetune_steps=attrs.get("finetune_steps", policy.get("finetune_steps")),
            prune_steps=policy.get("prune_steps"),
            lr=policy.get("lr"),
            baseline=attrs.get("baseline"),
            seconds=sum(attrs.get("seconds", {}).values()) if complete else None,
            rung=rung_of(trial),
            parent=attrs.get(PARENT),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scorer(policy: Mapping[str, Any]) -> str | None:
    """The scorer that chose what a policy removed: the channel scorer, the weight scorer when only
    weights were zeroed, both (``l1+magnitude``) for channels and weights."""
    channel = policy.get("scorer") if policy.get("ratios", True) else None
    weights = (policy.get("sparsity") or {}).get("scorer")
    return "+".join(s for s in (channel, weights) if s) or None


def pick_floor(record: StudyRecord) -> float:
    """The validation accuracy under which a front trial is not offered as a pick: chance plus
    ``study.pick_floor`` of the way to the base model's."""
    chance = 1.0 / record.data_shape.num_classes
    return chance + record.config.study.pick_floor * max(0.0, record.base.accuracy - chance)


def front_rows(study: optuna.Study) -> list[TrialRow]:
    """The study's front (:func:`~autoprune.search.front.front`) at or above the pick floor
    (:func:`pick_floor`) as rows, from the largest MACs of non-zero weights down (all MACs, when no
    trial zeroes weights)."""
    record = StudyRecord.from_study(study)
    floor = pick_floor(record)
    rows = [TrialRow.of(t, record.base.to_dict()) for t in front(study)]
    return sorted(
        (r for r in rows if (r.accuracy or 0.0) >= floor),
        key=lambda r: (-(r.nonzero_macs or 0.0), -(r.macs or 0.0), r.trial),
    )


def _missing(value: object) -> bool:
    return value is None or isinstance(value, float) and math.isnan(value)


def trial_note(baseline: float | str | None, rung: int = 0, parent: float | None = None) -> str:
    """The note a table gives a trial: ``baseline 0.50`` for a ratio, ``baseline 25%`` for a share of
    the base figure, and ``rung 2 (from trial 14)`` for a promoted run; empty for neither."""
    notes = []
    if not _missing(baseline):
        notes.append(f"baseline {baseline}" if isinstance(baseline, str) else f"baseline {baseline:.2f}")
    if rung and parent is not None and not _missing(parent):
        notes.append(f"rung {int(rung)} (from trial {int(parent)})")
    return ", ".join(notes)


__all__ = ["FIGURES", "TrialRow", "trial_note", "front_rows", "pick_floor"]
