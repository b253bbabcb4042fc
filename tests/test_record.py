"""The study record: typed, versioned, migrated on read, and read and written by its module alone."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import REPO

import autoprune
from autoprune.errors import AutopruneError
from autoprune.results.rows import front_rows, pick_floor
from autoprune.search.record import RECORD_ATTR, VERSION, DataShape, StudyRecord
from autoprune.trial.metrics import Measurement

STORED_V1 = REPO / "tests" / "data" / "study-v1.db"
"""A digits study (``allocation`` granularity, 4 trials) written by autoprune before records had a
version: the format of every study made until then."""


@pytest.fixture
def v1_study(tmp_path: Path) -> optuna.Study:
    copy = tmp_path / "study.db"
    shutil.copy(STORED_V1, copy)
    return optuna.load_study(study_name="v1", storage=f"sqlite:///{copy}")


def test_a_study_stored_before_records_had_a_version_reads_as_a_typed_record(v1_study: optuna.Study) -> None:
    assert "version" not in v1_study.user_attrs[RECORD_ATTR]
    record = StudyRecord.from_study(v1_study)
    assert record.config.space.granularity == "allocation" and record.config.model.name == "digits_resnet"
    assert isinstance(record.base, Measurement) and record.base.macs == 2_695_882
    assert record.data_shape == DataShape(num_classes=10, in_channels=1, image_size=8, example_input=(1, 1, 8, 8))
    assert record.sensitivity is not None and {p.group for p in record.sensitivity.points} == set(record.groups)
    assert record.study_id == "c02ea51871e5" and record.artifacts is not None
    assert record.code_sha256 is not None and len(record.code_sha256) == 64
    rows = front_rows(v1_study)  # the report's readers take the migrated record
    assert rows and all(row.accuracy is not None and row.accuracy >= pick_floor(record) for row in rows)


def test_a_saved_record_is_of_this_version_and_reads_back_equal(v1_study: optuna.Study) -> None:
    record = StudyRecord.from_study(v1_study)
    record.save(v1_study)
    assert v1_study.user_attrs[RECORD_ATTR]["version"] == VERSION
    assert StudyRecord.from_study(v1_study) == record


def test_settings_a_later_version_dropped_are_ignored_and_missing_ones_take_their_defaults(
    v1_study: optuna.Study,
) -> None:
    data = StudyRecord.from_study(v1_study).to_dict()
    data["config"]["space"]["a_removed_key"] = 1
    data["config"]["a_removed_section"] = {"key": 1}
    del data["config"]["trial"]
    record = StudyRecord.from_dict(data)
    assert record.config.trial == type(record.config.trial)()


def test_a_record_of_a_later_version_is_refused_with_the_advice_to_upgrade(v1_study: optuna.Study) -> None:
    data = {**StudyRecord.from_study(v1_study).to_dict(), "version": VERSION + 1}
    with pytest.raises(AutopruneError, match="upgrade autoprune"):
        StudyRecord.from_dict(data)


def test_a_study_autoprune_did_not_make_is_named() -> None:
    study = optuna.create_study(study_name="foreign")
    assert StudyRecord.find(study) is None
    with pytest.raises(AutopruneError, match="'foreign' was not made by autoprune"):
        StudyRecord.from_study(study)


def test_only_the_record_module_reads_or_writes_the_record_attribute() -> None:
    package = Path(autoprune.__file__).parent
    pattern = re.compile(rf"RECORD_ATTR|user_attrs\b[^\n]*[\"']{RECORD_ATTR}[\"']|set_user_attr\([\"']{RECORD_ATTR}")
    readers = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name != "record.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert readers == []
