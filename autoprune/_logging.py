"""Library logging: modules log to ``autoprune.*``; only the command line attaches a handler, whose
filters mask the passwords of URLs (:func:`redact_text`) and drop Optuna's duplicate failure reports."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("autoprune") else f"autoprune.{name}")


def configure_cli_logging(verbose: bool = False, *, quiet: bool = False) -> None:
    """Progress lines to stderr, plain, for the command line (``quiet``: warnings and errors only)."""
    root = logging.getLogger("autoprune")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False


_QUIETED_FROM = ("optuna", "torch_pruning")
"""Libraries whose warnings :func:`warnings_to_debug` sends to the debug log."""


@contextlib.contextmanager
def warnings_to_debug(logger: logging.Logger) -> Iterator[None]:
    """Turn the warnings that Optuna and torch-pruning raise inside the block into debug lines of
    ``logger``: notices a user cannot act on (Optuna's experimental-API notices, torch-pruning's
    tracing notes) stay out of the terminal and show with ``-v``. Every other warning is issued
    again after the block, under the filters in force (``-W error`` included), and the debug lines
    are written even when the block raises."""
    caught: list[warnings.WarningMessage] = []
    raised = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        raised = False
    finally:
        for warning in caught:
            if warning.category.__name__ == "ExperimentalWarning" or any(
                f"{os.sep}{name}{os.sep}" in warning.filename for name in _QUIETED_FROM
            ):
                text = str(warning.message).splitlines()
                logger.debug("%s: %s", warning.category.__name__, text[0] if text else "")
            elif not raised:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def prefix_logs(prefix: str) -> None:
    """Start every line autoprune logs with ``prefix`` (a worker's ``[worker N] ``)."""
    for handler in logging.getLogger("autoprune").handlers:
        handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))


_URL_END = "\\s'\"`<>"
"""Characters that end a URL in free text (besides its own): whitespace, quotes, backquotes, brackets."""


def _secret_patterns(end: str) -> tuple[re.Pattern[str], ...]:
    """Patterns whose ``head`` group is kept and whose secret after it is masked: the password of
    ``scheme://user:password@`` and the value of a query parameter named ``password``, ``passwd`` or
    ``pwd`` (any case, also with a prefix such as ``sslpassword``). ``end``: characters that end a URL.

    The userinfo password is what SQLAlchemy reads (all up to the first ``@``, even ``/`` and ``?``)
    and, for a password with an unescaped ``@``, what :func:`urllib.parse.urlsplit` and libpq read
    (all up to the last ``@`` before the host): the mask covers both.
    """
    userinfo = rf"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/{end}]*:)[^@{end}]*(?:@[^@/?#{end}]*(?=@))*(?=@)"
    query = rf"(?P<head>[?&;][\w.\-]*(?:password|passwd|pwd)=)[^&#{end}]*"
    return re.compile(userinfo), re.compile(query, re.IGNORECASE)


_SECRETS_IN_URL = _secret_patterns("")
_SECRETS_IN_TEXT = _secret_patterns(_URL_END)


def _masked(text: str, patterns: tuple[re.Pattern[str], ...]) -> str:
    for pattern in patterns:
        text = pattern.sub(r"\g<head>***", text)
    return text


def redact_url(url: str) -> str:
    """``url`` with its passwords (``user:password@`` and ``?password=``) replaced by ``***``: safe
    for messages, logs and reports."""
    return _masked(url, _SECRETS_IN_URL)


def redact_text(text: str) -> str:
    """``text`` (a log line, a command line, an error message) with the passwords of the URLs in it
    replaced by ``***``, as :func:`redact_url` does; a URL ends at whitespace, a quote or a bracket."""
    return _masked(text, _SECRETS_IN_TEXT)


class RedactingFilter(logging.Filter):
    """Masks passwords of URLs in every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class OptunaTrialFailureFilter(logging.Filter):
    """Drops Optuna's "Trial N failed with parameters ..." warning and its traceback: the worker
    logs each failed trial's reason on one line itself (and stores it as ``fail_reason``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("optuna") and "failed with parameters" in str(record.msg))


def install_log_redaction() -> None:
    """Add :class:`RedactingFilter` to the handlers of autoprune's and Optuna's loggers, and
    :class:`OptunaTrialFailureFilter` to Optuna's."""
    import optuna  # noqa: F401 - importing Optuna attaches its handler, which gets the filters

    for name in ("autoprune", "optuna"):
        for handler in logging.getLogger(name).handlers:
            for kind in (RedactingFilter, OptunaTrialFailureFilter) if name == "optuna" else (RedactingFilter,):
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())
