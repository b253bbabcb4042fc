"""autoprune: search structured-pruning policies with Optuna and return the Pareto front."""

from __future__ import annotations

from autoprune.config import StudyConfig, load_config
from autoprune.errors import AutopruneError, ConfigError, TrialFailed
from autoprune.export import load
from autoprune.policy import Policy
from autoprune.scorers import SCORERS, Scorer, make_scorer
from autoprune.study import front, rebuild_trial, run_study

__version__ = "0.1.0"

__all__ = [
    "SCORERS",
    "AutopruneError",
    "ConfigError",
    "Policy",
    "Scorer",
    "StudyConfig",
    "TrialFailed",
    "front",
    "load",
    "load_config",
    "make_scorer",
    "rebuild_trial",
    "run_study",
]
