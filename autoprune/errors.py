"""The one exception family autoprune raises for problems a user can fix."""

from __future__ import annotations


class AutopruneError(Exception):
    """Base class: the message says what is wrong and what would be right.

    The command line prints it on one line and exits with status 2, never with a traceback.
    """


class ConfigError(AutopruneError):
    """A study file, an override or an option breaks a rule."""


class TrialFailed(AutopruneError):
    """A trial cannot produce a result (for example its loss became NaN)."""


class TrialsFailing(AutopruneError):
    """A study stopped because its trials keep failing (``study.max_failures`` in a row, or every
    baseline); the message gives the most common reason."""
