"""autoprune: search structured-pruning policies with Optuna and return the Pareto front.

The public names below are imported on first use, so ``import autoprune`` (and ``autoprune --help``)
does not pay for torch, Optuna and the rest until a name needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "AutopruneError": "autoprune.errors",
    "ConfigError": "autoprune.errors",
    "TrialFailed": "autoprune.errors",
    "Policy": "autoprune.policy",
    "StudyConfig": "autoprune.config",
    "load_config": "autoprune.config",
    "SCORERS": "autoprune.scorers",
    "Scorer": "autoprune.scorers",
    "make_scorer": "autoprune.scorers",
    "run_study": "autoprune.search.run",
    "run_worker": "autoprune.search.run",
    "front": "autoprune.search.front",
    "rebuild_trial": "autoprune.search.rebuild",
    "TrialRow": "autoprune.results.rows",
    "front_rows": "autoprune.results.rows",
    "load": "autoprune.results.export",
    "export_trial": "autoprune.results.export",
    "write_report": "autoprune.results.report",
}
"""Each public name and the module it lives in."""

__all__ = [
    "AutopruneError",
    "ConfigError",
    "Policy",
    "SCORERS",
    "Scorer",
    "StudyConfig",
    "TrialFailed",
    "TrialRow",
    "export_trial",
    "front",
    "front_rows",
    "load",
    "load_config",
    "make_scorer",
    "rebuild_trial",
    "run_study",
    "run_worker",
    "write_report",
]

if TYPE_CHECKING:
    from autoprune.config import StudyConfig, load_config
    from autoprune.errors import AutopruneError, ConfigError, TrialFailed
    from autoprune.policy import Policy
    from autoprune.results.export import export_trial, load
    from autoprune.results.report import write_report
    from autoprune.results.rows import TrialRow, front_rows
    from autoprune.scorers import SCORERS, Scorer, make_scorer
    from autoprune.search.front import front
    from autoprune.search.rebuild import rebuild_trial
    from autoprune.search.run import run_study, run_worker


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
