"""Optuna storages for one or many workers, URLs with their passwords masked, and the faults of a
read-only or full folder or database told in one line.

Three kinds of storage URL are understood:

* ``sqlite:///path/study.db`` (the default): one machine, several processes. Connections wait up
  to :data:`SQLITE_TIMEOUT_S` for the database lock instead of failing with "database is locked",
  and a file lock (``study.db.lock``) lets only one process at a time pop an enqueued trial
  (:class:`LockedSQLiteStorage`).
* ``postgresql://user:password@host:port/db`` (needs ``pip install "autoprune[postgres]"``, which
  installs psycopg 3; psycopg2 works too): several machines.
* ``journal:///path/study.log``: Optuna's journal file storage (an append-only log with file
  locks), for one machine or a shared file system without a database server. It has no heartbeat,
  so a killed worker's trial stays RUNNING; it stops holding a place in the trial count after 10
  minutes, or 3× the longest trial (``autoprune.search.loop.UNWATCHED_STALE_S``).

RDB storages (SQLite, PostgreSQL) run Optuna's heartbeat: every worker stamps its running trial
every ``heartbeat_interval`` seconds; a trial not stamped for ``grace_period`` seconds is marked
FAILED by the next worker that starts a trial, and :class:`~optuna.storages.RetryFailedTrialCallback`
enqueues its policy once more.

A password is masked (``***``) in both places a URL can hold one: ``user:password@`` and a query
parameter such as ``?password=`` (:func:`redact_url`, :func:`redact_text`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from autoprune._logging import redact_text, redact_url
from autoprune.config import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S
from autoprune.errors import ConfigError

SQLITE_TIMEOUT_S = 60.0
"""How long a SQLite connection waits for another process's write lock."""
JOURNAL_PREFIX = "journal:///"


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


class LockedSQLiteStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` on a SQLite file that moves a trial to RUNNING only
    while it holds an exclusive lock on a file next to the database, so that two processes on this
    machine never pop the same enqueued trial.

    Optuna pops a WAITING trial with ``set_trial_state_values(trial_id, RUNNING)``, which reads the
    state (``SELECT ... FOR UPDATE``) and then writes it. PostgreSQL locks the row; SQLite ignores
    ``FOR UPDATE``, so two processes could both read WAITING and both run the trial. Under the lock the
    later one reads RUNNING and Optuna moves on to the next waiting trial. The heartbeat is the base
    class's.

    Args:
        url: A ``sqlite:`` URL.
        lock: The lock file (created when first needed).
        **kwargs: :class:`~optuna.storages.RDBStorage`'s other arguments.
    """

    def __init__(self, url: str, *, lock: Path, **kwargs: Any) -> None:
        self.lock = lock
        super().__init__(url, **kwargs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with file_lock(self.lock):
            return super().set_trial_state_values(trial_id, state, values)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) across processes on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
    create: bool = True,
) -> BaseStorage:
    """Open the storage at ``url`` for a worker. An unreachable one is a :class:`ConfigError` whose
    message shows the URL with its password masked; so is, later, a write that finds the database
    read-only or full (see :func:`storage_fault`).

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
    rdb_storage: Callable[..., RDBStorage] = RDBStorage
    if kind == "sqlite":
        db = sqlite_file(url)
        if db is not None:
            if not create and not db.is_file():
                raise ConfigError(f"no study database at {shown}; run `autoprune search` first")
            if not db.parent.is_dir():
                raise ConfigError(f"storage {shown}: folder {db.parent} does not exist")
            rdb_storage = functools.partial(LockedSQLiteStorage, lock=db.with_name(f"{db.name}.lock"))
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif kind == "postgresql":
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
            raise ConfigError(
                f"storage {shown} needs a PostgreSQL driver: pip install 'autoprune[postgres]' (psycopg 3)"
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
            storage = rdb_storage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # SQLAlchemy, the driver or the URL parser: never show the password
        fault = _db_fault(exc, f"storage {shown}")
        raise ConfigError(fault or f"storage {shown} cannot be reached: {_first_line(exc)}") from None
    sqlalchemy.event.listen(storage.engine, "handle_error", functools.partial(_raise_db_fault, f"storage {shown}"))
    return storage


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///runs/x.db``, or the URI form
    ``sqlite:///file:runs/x.db?mode=ro&uri=true``); ``None`` for an in-memory database or a URL that
    SQLAlchemy cannot parse (opening it says so)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    database = parsed.database or ""
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        database = urlsplit(database).path
    return Path(database) if database not in ("", ":memory:") else None


def _postgres_driver(url: str) -> str:
    """A bare ``postgresql://`` (or ``postgres://``) URL names the driver installed: psycopg 3 (the
    ``postgres`` extra, and SQLAlchemy 2.1's default) when present, else psycopg2."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    driver = "psycopg" if importlib.util.find_spec("psycopg") is not None else "psycopg2"
    return f"postgresql+{driver}://{rest}"


_ELSEWHERE = "another folder (--set study.runs_dir=PATH, --storage URL or --out PATH)"
_OS_FAULTS = {
    errno.EROFS: f"use {_ELSEWHERE} on a writable file system",
    errno.EACCES: f"make it writable for this user, or use {_ELSEWHERE}",
    errno.ENOSPC: f"free some space there, or use {_ELSEWHERE}",
    errno.EDQUOT: f"free some space there, or use {_ELSEWHERE}",
}
"""What to do about an :class:`OSError`, by ``errno``."""
_OTHER_STORAGE = "give another --storage URL (or --set study.runs_dir=PATH)"
_DB_FAULTS = (
    (("readonly database", "read-only transaction"), "is read-only", "make the database and its folder writable"),
    (("database or disk is full", "no space left on device", "disk quota exceeded"), "is full", "free some space"),
    (("unable to open database file",), "cannot be opened", "check that its folder exists and is writable"),
)
"""Database errors that a user can fix: words of the driver's message, the storage's state, what to do."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (``raise ... from``)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__)


def _db_fault(exc: BaseException, where: str) -> str | None:
    """The message for ``exc`` (or an exception it was raised from) when its text says the database
    at ``where`` is read-only, full or cannot be opened, else ``None``."""
    for cause in _causes(exc):
        text = str(cause).lower()
        for words, state, fix in _DB_FAULTS:
            if any(word in text for word in words):
                return f"{where} {state} ({_first_line(cause)}); {fix}, or {_OTHER_STORAGE}"
    return None


def _raise_db_fault(where: str, context: sqlalchemy.engine.ExceptionContext) -> None:
    """SQLAlchemy ``handle_error`` listener: a read-only, full or unopenable database raises a
    :class:`ConfigError` naming the storage (no retries, one line) instead of the driver's error."""
    fault = _db_fault(context.original_exception, where)
    if fault is not None:
        raise ConfigError(fault)


def storage_fault(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` when a read-only, full or inaccessible folder or database
    caused it, else ``None`` (a bug: keep its traceback).

    Faults: an :class:`OSError` (or one ``exc`` was raised from) with ``errno`` EROFS, ENOSPC, EDQUOT or
    EACCES, named by its path; Optuna's ``StorageInternalError`` or a SQLAlchemy ``DBAPIError`` whose
    text says the database is read-only, full or cannot be opened. (Storages from :func:`make_storage`
    raise a :class:`ConfigError` naming themselves for the latter.)
    """
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in _OS_FAULTS:
            where = "the runs folder or storage" if cause.filename is None else redact_text(str(cause.filename))
            return f"{where}: {os.strerror(cause.errno)}; {_OS_FAULTS[cause.errno]}"
    if isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DBAPIError)):
        return _db_fault(exc, "the study's storage")
    return None


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
    "SQLITE_TIMEOUT_S",
    "LockedSQLiteStorage",
    "file_lock",
    "make_storage",
    "retried_from",
    "sqlite_file",
    "storage_fault",
    "storage_kind",
]
