"""Optuna storages for one or many workers, and URLs with their passwords masked.

Three kinds of storage URL are understood:

* ``sqlite:///path/study.db`` (the default): one machine, several processes. Connections wait up
  to :data:`SQLITE_TIMEOUT_S` for the database lock instead of failing with "database is locked".
* ``postgresql://user:password@host:port/db`` (needs ``pip install "autoprune[postgres]"``):
  several machines.
* ``journal:///path/study.log``: Optuna's journal file storage (an append-only log with file
  locks), for one machine or a shared file system without a database server. It has no heartbeat,
  so a killed worker's trial stays RUNNING until the study is resumed with
  :func:`fail_running_trials`.

RDB storages (SQLite, PostgreSQL) run Optuna's heartbeat: every worker stamps its running trial
every ``heartbeat_interval`` seconds; a trial not stamped for ``grace_period`` seconds is marked
FAILED by the next worker that starts a trial, and :class:`~optuna.storages.RetryFailedTrialCallback`
enqueues its policy once more.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.storages import BaseStorage, RDBStorage

from autoprune.errors import ConfigError

SQLITE_TIMEOUT_S = 60.0
"""How long a SQLite connection waits for another process's write lock."""
HEARTBEAT_INTERVAL_S = 10
"""Default seconds between heartbeats of a running trial."""
GRACE_PERIOD_S = 60
"""Default seconds without a heartbeat after which a running trial counts as dead."""
JOURNAL_PREFIX = "journal:///"

_SECRET_IN_TEXT = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s@/]*)(?P<tail>@)")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe for messages, logs and reports."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return redact_text(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    return _SECRET_IN_TEXT.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def storage_kind(url: str) -> str:
    """``sqlite``, ``postgresql``, ``journal`` or ``other`` (any other SQLAlchemy URL)."""
    if url.startswith(JOURNAL_PREFIX):
        return "journal"
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    return "other"


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
    create: bool = True,
) -> BaseStorage:
    """Open the storage at ``url`` for a worker; an unreachable one is a :class:`ConfigError`
    whose message shows the URL with its password masked.

    Args:
        url: A storage URL (see the module docstring).
        heartbeat_interval: Seconds between heartbeats (RDB storages); ``None``: no heartbeat.
        grace_period: Seconds without a heartbeat before a running trial is failed and retried.
        create: Whether a missing SQLite or journal file may be created (``False``: it is an error).
    """
    shown = redact_url(url)
    kind = storage_kind(url)
    if kind == "journal":
        path = Path(url[len(JOURNAL_PREFIX) - 1 :])
        if not create and not path.is_file():
            raise ConfigError(f"no journal storage at {shown}; run `autoprune search` first")
        if not path.parent.is_dir():
            raise ConfigError(f"storage {shown}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if kind == "sqlite":
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            db = Path(url[len("sqlite:///") :])
            if not create and not db.is_file():
                raise ConfigError(f"no study database at {shown}; run `autoprune search` first")
            if not db.parent.is_dir():
                raise ConfigError(f"storage {shown}: folder {db.parent} does not exist")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif kind == "postgresql":
        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
            raise ConfigError(
                f"storage {shown} needs the PostgreSQL driver: pip install 'autoprune[postgres]' (psycopg2-binary)"
            ) from None
        url = _postgres_driver(url)
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 2 * heartbeat_interval)
        kwargs.update(_retry_once())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # SQLAlchemy, the driver or the URL parser: never show the password
        reason = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise ConfigError(f"storage {shown} cannot be reached: {reason}") from None


def _postgres_driver(url: str) -> str:
    """A bare ``postgresql://`` (or ``postgres://``) URL names the driver installed: SQLAlchemy 2.1
    defaults to psycopg 3, the ``postgres`` extra installs psycopg2."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    driver = "psycopg" if importlib.util.find_spec("psycopg") is not None else "psycopg2"
    return f"postgresql+{driver}://{rest}"


def _retry_once() -> dict[str, Any]:
    """The RDBStorage argument that re-enqueues a stale trial's parameters once (Optuna >= 4.9
    names it ``heartbeat_stale_trial_callback``, older ones ``failed_trial_callback``)."""
    storages = optuna.storages
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    return {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}  # pragma: no cover


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the stale trial this one retries, else ``None``."""
    value = trial.system_attrs.get("failed_trial")
    return int(value) if value is not None else None


__all__ = [
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "SQLITE_TIMEOUT_S",
    "make_storage",
    "redact_text",
    "redact_url",
    "retried_from",
    "storage_kind",
]
