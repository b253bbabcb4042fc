"""The Optuna side of one trial: the trial's policy from the search space, the evaluation, and what
the trial stores (user attributes, budget constraints, objective values)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import optuna

from autoprune._logging import get_logger
from autoprune._progress import TRIAL_LINES
from autoprune.config import StudyConfig
from autoprune.trial.evaluate import Continuation, TrialEvaluator, TrialResult, evaluate_retrying_oom
from autoprune.trial.metrics import Measurement

log = get_logger(TRIAL_LINES)


def trial_seed(config: StudyConfig, number: int, rung: int = 0) -> int:
    """The seed of trial ``number``'s fine-tune batches (and random scorer): ``study.seed`` plus the number,
    or with ``trial.common_batches`` the same for every trial (plus the rung of a promoted run, whose added
    steps draw other batches than its parent's)."""
    return config.study.seed + (rung if config.trial.common_batches else number)


def run_trial(
    evaluator: TrialEvaluator, trial: optuna.Trial, start: Continuation | None = None, seed: int | None = None
) -> TrialResult:
    """Suggest the trial's policy, evaluate it (again at half the batch size when CUDA runs out of
    memory) and store what it did in the trial: its user attributes (:func:`record`) and budget
    constraints. A promoted run gives the ``start`` it continues from and its parent's policy ``seed``
    (default: :func:`trial_seed`).

    Raises:
        TrialFailed: the policy produced no model (a NaN loss, say), or ran out of memory twice.
        optuna.TrialPruned: the first look was hopeless; the trial stopped early.
    """
    began = time.perf_counter()
    policy = evaluator.space.suggest(trial, seed=trial_seed(evaluator.config, trial.number) if seed is None else seed)
    suggested = time.perf_counter() - began
    trial.set_user_attr("policy", policy.to_dict())
    result = evaluate_retrying_oom(evaluator, policy, start)
    result = dataclasses.replace(result, seconds={**result.seconds, "policy": suggested})
    for name, value in record(result).items():
        trial.set_user_attr(name, value)
    line = progress_line(trial.number, result, evaluator.base_measurement)
    if start is not None:
        line += f"  {start.label}"
    if result.early_stopped:
        log.info("%s  stopped early: first look hopeless", line)
        raise optuna.TrialPruned(f"first-look accuracy {result.first_look:.4f} is hopeless")
    note = ""
    if evaluator.budget is not None:
        violations = evaluator.budget.violations(result.measurement.to_dict())
        trial.set_user_attr("constraints", list(violations.values()))
        if hasattr(trial, "set_constraint"):  # Optuna >= 5: named constraints the samplers read
            for key, value in violations.items():
                trial.set_constraint(key, value)
        broken = [k for k, v in violations.items() if v > 0]
        note = f"  infeasible ({', '.join(broken)})" if broken else ""
    log.info("%s%s", line, note)
    return result


def objective_values(result: TrialResult, objectives: Sequence[str]) -> tuple[float, ...]:
    """A result's objective values, in ``objectives`` (``study.objectives``) order."""
    return tuple(result.objective(name) for name in objectives)


def record(result: TrialResult) -> dict[str, Any]:
    """The user attributes a trial stores: enough to rebuild and report it from storage alone."""
    attrs = {
        **result.measurement.to_dict(),
        "finetune_cost": result.finetune_cost,
        "first_look_accuracy": result.first_look,
        "early_stopped": result.early_stopped,
        "kept": result.kept,
        "removed": result.removed,
        "seconds": {k: round(v, 4) for k, v in result.seconds.items()},
    }
    if result.sparsity:
        attrs["sparsity"] = {name: round(share, 6) for name, share in result.sparsity.items()}
    if result.oom_retry_batch_size is not None:
        attrs["oom_retry_batch_size"] = result.oom_retry_batch_size
    return attrs


def progress_line(number: int, result: TrialResult, base: Measurement) -> str:
    """The one log line of a finished trial."""
    m = result.measurement
    sparse = f"nz MACs {100 * m.nonzero_macs / base.macs:5.1f}%  " if result.policy.sparsity is not None else ""
    return (
        f"trial {number:>4}  {result.policy.summary()}  acc {m.accuracy:.4f}  "
        f"MACs {100 * m.macs / base.macs:5.1f}%  {sparse}size {100 * m.size / base.size:5.1f}%  "
        f"{sum(result.seconds.values()):.1f}s"
    )


__all__ = ["objective_values", "progress_line", "record", "run_trial"]
