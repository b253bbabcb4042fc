"""Where a study's files go: its default storage URL and its artifact store."""

from __future__ import annotations

from pathlib import Path

import optuna

from autoprune.config import StudyConfig
from autoprune.search.artifacts import Artifacts, is_remote, join
from autoprune.search.record import StudyRecord
from autoprune.search.storage import JOURNAL_PREFIX, sqlite_file, storage_kind


def default_storage(study_name: str, runs_dir: str | Path = "runs") -> str:
    """The storage of a study file that names none: ``sqlite:///<runs_dir>/<name>.db``."""
    return f"sqlite:///{Path(runs_dir) / study_name}.db"


def storage_url(config: StudyConfig) -> str:
    """The study's storage: the configured URL, else :func:`default_storage` (its folder created)."""
    if config.study.storage:
        return config.study.storage
    Path(config.study.runs_dir).mkdir(parents=True, exist_ok=True)
    return default_storage(config.study.name, config.study.runs_dir)


def artifacts_dir(storage: str, study_name: str, runs_dir: str | Path = "runs") -> Path:
    """The folder of a study's name: next to a SQLite or journal file (``runs/<name>.db`` →
    ``runs/<name>/``), else ``<runs_dir>/<name>/``. A study keeps its front's weights in a subfolder
    named by its ID (:func:`study_artifacts`)."""
    kind = storage_kind(storage)
    file = sqlite_file(storage) if kind == "sqlite" else None
    if kind == "journal":
        file = Path(storage[len(JOURNAL_PREFIX) - 1 :])
    return (file.parent if file is not None else Path(runs_dir)) / study_name


def study_url(config: StudyConfig, storage: str, study_id: str) -> str:
    """Where a new study keeps its artifacts: ``<study.artifacts>/<name>/<study ID>``, or without
    ``study.artifacts`` the local folder of its name (:func:`artifacts_dir`) and its ID."""
    name = config.study.name
    if config.study.artifacts:
        return join(config.study.artifacts, name, study_id)
    return str((artifacts_dir(storage, name, config.study.runs_dir) / study_id).resolve())


def study_artifacts(study: optuna.Study, storage: str | None = None, *, url: str = "") -> Artifacts:
    """A study's artifact store: under ``url`` when given (this machine's address of the store the
    study was made with, such as a shared mount at another path), else the one recorded at creation
    when this machine reaches it (a bucket, or a folder that is here), else the folder derived from the
    storage; keyed by the study's ID, so two stores holding studies of one name never share a folder
    (studies made before IDs were recorded use the folder of their name)."""
    record = StudyRecord.from_study(study)
    if url:
        return Artifacts(join(url, study.study_name, record.study_id or ""))
    if record.artifacts is not None and (is_remote(record.artifacts) or Path(record.artifacts).is_dir()):
        return Artifacts(record.artifacts)
    runs_dir = record.config.study.runs_dir
    if storage is None:
        storage = record.config.study.storage or default_storage(study.study_name, runs_dir)
    folder = artifacts_dir(storage, study.study_name, runs_dir)
    return Artifacts(str(folder / record.study_id if record.study_id is not None else folder))


def lock_folder(study: optuna.Study, artifacts: Artifacts, storage: str) -> Path:
    """Where the processes of this machine take turns (promotion's lock): the study's artifacts
    folder, or for a bucket the local folder a study of this storage would have."""
    if artifacts.folder is not None:
        return artifacts.folder
    record = StudyRecord.from_study(study)
    return artifacts_dir(storage, study.study_name, record.config.study.runs_dir) / (record.study_id or "")


__all__ = ["artifacts_dir", "default_storage", "lock_folder", "storage_url", "study_artifacts", "study_url"]
