"""The report's data: one row per trial, the front's test accuracies and latencies, parameter importances."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from torch import nn

from autoprune._logging import get_logger
from autoprune.budget import ResolvedBudget
from autoprune.errors import AutopruneError
from autoprune.policy import Policy
from autoprune.results.rows import TrialRow
from autoprune.search.front import front_numbers
from autoprune.search.paths import study_artifacts
from autoprune.search.rebuild import stored_base
from autoprune.search.record import StudyRecord
from autoprune.trial.latency import Timing, measure_latencies
from autoprune.trial.metrics import accuracy

log = get_logger(__name__)


def policy_summary(policy: dict[str, Any]) -> str:
    try:
        return Policy.from_dict(policy).summary()
    except AutopruneError:
        return ""


def trials_frame(
    study: optuna.Study, budget: ResolvedBudget | None = None, front: Iterable[int] | None = None
) -> pd.DataFrame:
    """One row per trial (:class:`~autoprune.results.rows.TrialRow`), with front membership (the
    study's front unless ``front`` gives the numbers), search-time feasibility and, with ``budget``,
    whether it fits and by how much it breaks each limit; then the policy in words, what surgery
    kept, each layer's share of zero weights (weight-level sparsity) and why a trial failed."""
    base = StudyRecord.from_study(study).base.to_dict()
    on_front = set(front) if front is not None else set(front_numbers(study))
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        policy = attrs.get("policy", {})
        row = TrialRow.of(t, base).to_dict()
        del row["test_accuracy"]  # measured for front members only, by write_report
        complete = row["accuracy"] is not None
        row["front"] = t.number in on_front
        row["feasible_at_search"] = all(v <= 0 for v in t.constraints.values()) if complete else None
        for key, value in t.constraints.items():
            row[f"constraint.{key}"] = value
        if budget is not None:
            violations = budget.violations(attrs) if complete else {}
            row["fits_budget"] = all(v <= 0 for v in violations.values()) if complete else None
            for key in budget.limits:
                row[f"violation.{key}"] = violations.get(key)
        row["summary"] = policy_summary(policy) if policy else ""
        row["kept"] = json.dumps(attrs["kept"], sort_keys=True) if complete else None
        row["sparsity"] = json.dumps(attrs["sparsity"], sort_keys=True) if complete and "sparsity" in attrs else None
        row["fail_reason"] = attrs.get("fail_reason")
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class FrontFigures:
    """What the report measures of the front members whose weights were kept."""

    test_accuracy: dict[int, float] = field(default_factory=dict)
    latency: dict[int, Timing] = field(default_factory=dict)
    """Each member's latency on the study's runtime (``trial.latency_runtime``), timed now, in rounds with
    the base model and the other members (:func:`~autoprune.trial.latency.measure_latencies`)."""
    base_latency: Timing | None = None


def measure_front(
    study: optuna.Study, numbers: Sequence[int], storage: str | None, *, test: bool = True, speed: bool = True
) -> FrontFigures:
    """Test accuracy (``test``) and latency on the study's runtime (``speed``, the base model's too) of
    each front member whose weights were kept; the data is loaded once."""
    found = FrontFigures()
    weights = study_artifacts(study, storage).weight_numbers()
    todo = [n for n in numbers if n in weights]
    if not todo or not (test or speed):
        return found
    from autoprune.results.export import study_data, trial_model

    data = study_data(study)
    config = StudyRecord.from_study(study).config
    batch = data.val.x[: config.trial.latency_batch_size]
    base = None
    if speed:
        try:
            base = stored_base(study)
        except AutopruneError as exc:
            log.warning("report: no speedups: the base model cannot be timed here (%s)", exc)
    models: dict[int, nn.Module] = {}
    for number in todo:
        try:
            model = trial_model(study, number, storage=storage)
        except AutopruneError as exc:
            log.warning("report: trial %d is not measured: %s", number, exc)
            continue
        if test:
            found.test_accuracy[number] = accuracy(model, data.test, config.data.batch_size)
        if base is not None:
            models[number] = model
    if base is not None:  # timed together: a burst of load on the machine moves no speedup much
        found.base_latency, *timings = measure_latencies([base, *models.values()], batch, config.trial)
        found.latency = dict(zip(models, timings, strict=True))
    return found


def parameter_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    directions = study.directions
    names = study.metric_names or []
    index = names.index("accuracy") if "accuracy" in names else 0
    if len(directions) <= index:
        return {}, "no accuracy objective"
    try:
        # PED-ANOVA (Optuna's default evaluator) rates what leads to *low* targets: negate accuracy
        sign = -1.0 if directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's reminder about the target's sign
            values = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[index])
    except Exception as exc:  # importances fail on tiny or degenerate studies: say so, keep the report
        return {}, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {k: float(v) for k, v in values.items()}, ""
