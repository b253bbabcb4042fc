"""The bad-input table of ``autoprune.bench.bad_input`` on two cheap cases and made-up rows (the full
table is a benchmark: ``python -m autoprune.bench.bad_input``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from autoprune.bench.bad_input import (
    STUDY,
    Case,
    Row,
    StoreCheck,
    build_table,
    cases,
    defects,
    digest,
    manifest,
    render,
    store_as_designed,
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A runs folder with a study ``digits`` (no trials), a weights file and an empty file lock."""
    runs = tmp_path / "runs"
    (runs / "digits" / "0123abcd").mkdir(parents=True)
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{(runs / f'{STUDY}.db').as_posix()}")
    (runs / "digits" / "0123abcd" / "trial-0.pt").write_bytes(b"weights")
    (runs / "digits.db.lock").touch()
    return runs


def test_two_cheap_cases_exit_2_with_one_line_and_leave_the_store_unchanged(store: Path, tmp_path: Path) -> None:
    names = ["missing study file", "pick of a study that does not exist"]
    rows = build_table([c for c in cases(store, tmp_path) if c.name in names], store, timeout=120)
    assert [r.case.name for r in rows] == names
    for row in rows:
        assert row.exit_code == 2, row.output
        assert row.error_lines == 1 and row.message.startswith("autoprune: error:")
        assert row.case.expect in row.message
        assert not row.traceback
        assert row.store.before == row.store.after and row.store.study_unchanged
        assert defects(row) == []
    text = render(rows, "python -m autoprune.bench.bad_input", tmp_path, store)
    assert "| # | case | ARGS | exit |" in text
    assert f"| 2 | pick of a study that does not exist | `pick --storage sqlite:///$S/runs/{STUDY}.db" in text
    assert "2 of 2 cases ok." in text and "DEFECT" not in text


def test_lock_files_are_left_out_of_the_store_hash_and_weights_are_not(store: Path) -> None:
    before = digest(manifest(store))
    (store / "digits.db.lock").write_text("held")
    assert digest(manifest(store)) == before
    (store / "digits" / "0123abcd" / "trial-0.pt").write_bytes(b"other weights")
    assert digest(manifest(store)) != before


def _row(case: Case, **changes: Any) -> Row:
    same = StoreCheck("a" * 64, "a" * 64, (), (), (), True, {}, ())
    row = Row(case, 2, "autoprune: error: study file not found: x", 1, False, False, same, 1.0, "")
    return dataclasses.replace(row, **changes)


def test_exit_1_traceback_leak_and_changed_store_are_marked_as_defects(tmp_path: Path) -> None:
    case = Case("missing study file", ("search", "x.toml"), "study file not found", secret="s3cret")
    changed = StoreCheck("a" * 64, "b" * 64, ("digits.db",), (), (), False, {}, ())
    row = _row(case, exit_code=1, error_lines=0, traceback=True, secret_leaked=True, store=changed, output="Boom")
    assert defects(row) == ["exit 1", "0 error lines", "traceback", "password in the output", "store changed"]
    assert defects(_row(case, exit_code=None, message="other")) == ["timed out", "unexpected message"]
    text = render([row], "cmd", tmp_path, tmp_path / "runs")
    assert "**DEFECT: exit 1, 0 error lines, traceback" in text and "**CHANGED**" in text
    assert "0 of 1 cases ok." in text and "## Case 1: missing study file" in text and "Boom" in text


def test_a_new_study_by_design_must_leave_the_stored_one_and_every_other_file() -> None:
    case = Case("all fail", ("search",), "stopped", new_study=f"{STUDY}-2")
    designed = StoreCheck("a" * 64, "b" * 64, (f"{STUDY}.db",), (), (), True, {f"{STUDY}-2": "3 FAIL"}, ())
    assert store_as_designed(_row(case, store=designed))
    assert not store_as_designed(_row(case, store=dataclasses.replace(designed, study_unchanged=False)))
    assert not store_as_designed(_row(case, store=dataclasses.replace(designed, modified=("cache/base.pt",))))
    assert not store_as_designed(_row(case, store=dataclasses.replace(designed, studies_added={})))
