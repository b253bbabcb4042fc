"""Budgets: the user's limits on a pruned model, and picking the trial that fits them.

A budget is a set of limits, each absolute or relative to the base model::

    [budget]
    max_macs = "50%"        # at most half the base model's MACs
    max_nonzero_macs = "10%" # MACs of non-zero weights only (weight-level sparsity)
    max_params = 60000      # absolute count; "60k", "1.2M" work too
    max_size = "200kB"      # bytes of the saved state_dict; B, kB, MB, GB (x1000) or KiB, MiB, GiB (x1024)
    min_accuracy = 0.97     # validation accuracy in [0, 1]; "99%" means 99% of the base model's

During a search the limits become Optuna constraints, one per limit, so the sampler steers toward
feasible policies; infeasible trials stay in the study, marked. ``pick`` chooses among the stored
front. ``max_latency_ms`` (absolute milliseconds, or a percentage of the base model's latency) makes
every trial measure its latency on the study's device (``[trial] latency_batch_size``, ``latency_repeats``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoprune.errors import AutopruneError, ConfigError

KEYS = ("max_macs", "max_nonzero_macs", "max_params", "max_size", "max_latency_ms", "min_accuracy")
"""Every budget key, in the order constraints are listed."""

FIGURES = {
    "max_macs": "macs",
    "max_nonzero_macs": "nonzero_macs",
    "max_params": "params",
    "max_size": "size",
    "max_latency_ms": "latency_ms",
    "min_accuracy": "accuracy",
}
"""The measured figure (trial user attribute) each key limits."""

PREFERENCES = ("accuracy", "smallest", "fastest")
"""``pick --prefer``: most accurate, smallest weights file, fewest MACs."""

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class Limit:
    """One limit as the user wrote it.

    Attributes:
        key: One of :data:`KEYS`.
        value: The absolute value, or the fraction of the base figure when ``relative``.
        relative: Whether ``value`` is a fraction of the base model's figure.
        text: The limit as written (for messages and reports).
    """

    key: str
    value: float
    relative: bool
    text: str

    @property
    def figure(self) -> str:
        return FIGURES[self.key]

    @property
    def is_max(self) -> bool:
        return self.key.startswith("max_")

    def absolute(self, base: Mapping[str, Any]) -> float:
        """The limit in the figure's own unit, given the base model's figures."""
        if not self.relative:
            return self.value
        if self.figure not in base:
            raise AutopruneError(f"budget {self.key} = {self.text!r}: the base model has no {self.figure} figure")
        return self.value * float(base[self.figure])


def parse_limit(key: str, raw: object) -> Limit:
    """Read one budget value: a number, or a string with a unit (``"2MB"``, ``"1.5M"``) or a percentage.

    Raises:
        ConfigError: naming the key, the value and the rule it breaks.
    """
    if key not in KEYS:
        raise ConfigError(f"unknown budget key {key!r}; known: {', '.join(KEYS)}")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"budget.{key} = {raw!r}: must be a number or a string such as '50%' or '2MB'")
    text = str(raw)
    if isinstance(raw, (int, float)):
        value, unit = float(raw), ""
    else:
        match = _NUMBER.match(raw)
        if not match:
            raise ConfigError(f"budget.{key} = {raw!r}: must be a number, optionally with a unit or '%'")
        value, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"budget.{key} = {raw!r}: must be a finite number >= 0")
    if unit == "%":
        if value <= 0:
            raise ConfigError(f"budget.{key} = {raw!r}: a percentage of the base model must be > 0")
        return Limit(key, value / 100.0, True, text)
    if key == "min_accuracy":
        if unit or value > 1.0:
            raise ConfigError(
                f"budget.{key} = {raw!r}: must be an accuracy in [0, 1] or a percentage of the base model's ('99%')"
            )
        return Limit(key, value, False, text)
    units = _SIZE_UNITS if key == "max_size" else _COUNT_UNITS
    if unit not in units:
        known = ", ".join(u for u in units if u) + ", %"
        raise ConfigError(f"budget.{key} = {raw!r}: unknown unit {unit!r}; use one of {known}")
    return Limit(key, value * units[unit], False, text)


@dataclass(frozen=True)
class Budget:
    """The limits a model must meet; empty means no limit."""

    limits: tuple[Limit, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Budget:
        """From ``{key: value}``; empty strings and ``None`` mean unset."""
        limits = [parse_limit(k, v) for k, v in values.items() if v is not None and v != ""]
        return cls(tuple(sorted(limits, key=lambda limit: KEYS.index(limit.key))))

    def merged(self, other: Budget) -> Budget:
        """This budget with ``other``'s limits replacing those of the same key."""
        keys = {limit.key for limit in other.limits}
        kept = [limit for limit in self.limits if limit.key not in keys]
        return Budget(tuple(sorted([*kept, *other.limits], key=lambda limit: KEYS.index(limit.key))))

    def __bool__(self) -> bool:
        return bool(self.limits)

    def to_dict(self) -> dict[str, str]:
        return {limit.key: limit.text for limit in self.limits}

    def resolve(self, base: Mapping[str, Any]) -> ResolvedBudget:
        """Turn relative limits into absolute ones against the base model's figures."""
        return ResolvedBudget({limit.key: limit.absolute(base) for limit in self.limits}, self, dict(base))


@dataclass(frozen=True)
class ResolvedBudget:
    """Absolute limits by key, with the budget they came from and the base figures."""

    limits: dict[str, float]
    budget: Budget
    base: dict[str, Any]

    def violations(self, figures: Mapping[str, Any]) -> dict[str, float]:
        """By key, how far ``figures`` break each limit, relative to it: <= 0 is within.

        ``max_*``: ``value / limit - 1``; ``min_accuracy``: ``1 - value / limit``. A zero limit
        gives the plain difference.
        """
        out = {}
        for key, limit in self.limits.items():
            value = float(figures[FIGURES[key]])
            diff = value - limit if key.startswith("max_") else limit - value
            out[key] = diff / limit if limit > 0 else diff
        return out

    def constraints(self, figures: Mapping[str, Any]) -> list[float]:
        """The violations as a list in :data:`KEYS` order (an Optuna constraint vector)."""
        return list(self.violations(figures).values())

    def fits(self, figures: Mapping[str, Any]) -> bool:
        return all(v <= 0 for v in self.violations(figures).values())

    def describe(self, key: str) -> str:
        """``max_macs <= 1.35M (50% of base)``."""
        limit = self.limits[key]
        spec = next(lim for lim in self.budget.limits if lim.key == key)
        op = "<=" if key.startswith("max_") else ">="
        text = f"{key} {op} {format_figure(FIGURES[key], limit)}"
        return f"{text} ({spec.text} of base)" if spec.relative else text

    def describe_all(self) -> str:
        return ", ".join(self.describe(k) for k in self.limits) or "no limits"


def format_figure(figure: str, value: float) -> str:
    """A figure for people: ``0.9826``, ``1.35M``, ``277.1kB``, ``0.0468 ms``."""
    if figure == "accuracy":
        return f"{value:.4f}"
    if figure == "latency_ms":
        return f"{value:.3g} ms"
    suffix = "B" if figure == "size" else ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}{suffix}"
    return f"{value:.0f}{suffix}"


class NothingFits(AutopruneError):
    """No stored trial meets the budget; the message says which limit and how close a trial came."""


@dataclass(frozen=True)
class Choice:
    """The trial ``pick`` chose, with the reason in words."""

    trial: int
    figures: dict[str, Any]
    reason: str
    candidates: list[int]


_ORDER = {
    # (figure, sign): sort ascending by sign * value; ties broken by the following entries.
    "accuracy": (("accuracy", -1), ("macs", 1), ("size", 1), ("trial", 1)),
    "smallest": (("size", 1), ("accuracy", -1), ("macs", 1), ("trial", 1)),
    "fastest": (("macs", 1), ("accuracy", -1), ("size", 1), ("trial", 1)),
}
_WHY = {
    "accuracy": ("highest validation accuracy", "accuracy"),
    "smallest": ("smallest weights file", "size"),
    "fastest": ("fewest MACs", "macs"),
}


def pick(rows: Sequence[Mapping[str, Any]], budget: ResolvedBudget, prefer: str = "accuracy") -> Choice:
    """Choose among ``rows`` (each with ``trial`` and the measured figures) the preferred one within budget.

    Raises:
        ConfigError: ``prefer`` is not one of :data:`PREFERENCES`.
        NothingFits: no row meets every limit; the message names the limits no row met and the
            nearest row.
    """
    if prefer not in PREFERENCES:
        raise ConfigError(f"--prefer {prefer!r}: must be one of {', '.join(PREFERENCES)}")
    if not rows:
        raise NothingFits("the study has no completed trial on its front to pick from")
    fitting = [r for r in rows if budget.fits(r)]
    if not fitting:
        raise NothingFits(nothing_fits_message(rows, budget))
    order = _ORDER[prefer]
    ranked = sorted(fitting, key=lambda r: tuple(sign * float(r[name]) for name, sign in order))
    best = ranked[0]
    words, figure = _WHY[prefer]
    reason = (
        f"trial {best['trial']}: {words} ({format_figure(figure, best[figure])}) among the "
        f"{len(fitting)} of {len(rows)} front trials within budget ({budget.describe_all()})"
    )
    if len(ranked) > 1:
        runner = ranked[1]
        reason += f"; runner-up: trial {runner['trial']} ({format_figure(figure, runner[figure])})"
    return Choice(int(best["trial"]), dict(best), reason, [int(r["trial"]) for r in ranked])


def _count_hint(spec: Limit, nearest: float) -> str:
    """For ``--max-params 40`` on a model of thousands: a bare number is a count, not a share."""
    if spec.key in ("max_params", "max_macs") and not spec.relative and 0 < spec.value <= 100 < nearest / spec.value:
        share = f"{100 * spec.value:g}%" if spec.value < 1 else f"{spec.text}%"  # 0.5: a fraction
        return f" ({spec.text} is a count; {share} is a share of the base model's)"
    return ""


def nothing_fits_message(rows: Sequence[Mapping[str, Any]], budget: ResolvedBudget) -> str:
    """Which limits no row met, and how close the nearest row came."""
    violations = {int(r["trial"]): budget.violations(r) for r in rows}
    by_trial = {int(r["trial"]): r for r in rows}
    unmet = [k for k in budget.limits if all(v[k] > 0 for v in violations.values())]
    parts = []
    for key in unmet:
        trial = min(violations, key=lambda t: violations[t][key])
        value = by_trial[trial][FIGURES[key]]
        spec = next(lim for lim in budget.budget.limits if lim.key == key)
        parts.append(
            f"no front trial met {budget.describe(key)}{_count_hint(spec, float(value))}; nearest: trial {trial} with "
            f"{format_figure(FIGURES[key], value)} ({100 * violations[trial][key]:.1f}% beyond the limit)"
        )
    if not unmet:
        trial = min(violations, key=lambda t: sum(max(v, 0.0) for v in violations[t].values()))
        missed = ", ".join(
            f"{budget.describe(k)} by {100 * v:.1f}% ({format_figure(FIGURES[k], by_trial[trial][FIGURES[k]])})"
            for k, v in violations[trial].items()
            if v > 0
        )
        parts.append(
            f"every limit is met by some front trial but no trial meets all of them; "
            f"nearest: trial {trial}, which misses {missed}"
        )
    return "nothing fits the budget: " + "; ".join(parts)


__all__ = [
    "FIGURES",
    "KEYS",
    "PREFERENCES",
    "Budget",
    "Choice",
    "Limit",
    "NothingFits",
    "ResolvedBudget",
    "format_figure",
    "nothing_fits_message",
    "parse_limit",
    "pick",
]
