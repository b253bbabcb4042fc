"""Where a study's files go: its default storage URL, its artifacts folder and its weight files."""

from __future__ import annotations

from pathlib import Path

import optuna

from autoprune.config import StudyConfig
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


def study_artifacts(study: optuna.Study, storage: str | None = None) -> Path:
    """The folder holding a study's front weights: the one recorded at creation, else the one derived
    from the storage; either way keyed by the study's ID, so two stores holding studies of one name
    never share a folder (studies made before IDs were recorded use the folder of their name)."""
    record = StudyRecord.from_study(study)
    if record.artifacts is not None and record.artifacts.is_dir():
        return record.artifacts
    runs_dir = record.config.study.runs_dir
    if storage is None:
        storage = record.config.study.storage or default_storage(study.study_name, runs_dir)
    folder = artifacts_dir(storage, study.study_name, runs_dir)
    return folder / record.study_id if record.study_id is not None else folder


def weight_path(folder: Path, number: int) -> Path:
    """The file of trial ``number``'s fine-tuned weights in an artifacts folder."""
    return folder / f"trial-{number}.pt"


def stored_weights(folder: Path) -> dict[int, Path]:
    """The fine-tuned weight files in an artifacts folder, by trial number."""
    found = {}
    for path in folder.glob("trial-*.pt"):
        number = path.stem.removeprefix("trial-")
        if number.isdigit():
            found[int(number)] = path
    return found


__all__ = ["artifacts_dir", "default_storage", "storage_url", "stored_weights", "study_artifacts", "weight_path"]
