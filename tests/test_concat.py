"""Models whose groups span a concatenation: every front trial rebuilds, reports, exports and
loads with the trial's exact channels."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
from test_workers import completed, search_args

from autoprune import load
from autoprune.cli import main
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.results.export import export_trial, study_data, trial_model
from autoprune.scorers import make_scorer
from autoprune.search.front import front_numbers
from autoprune.search.paths import study_artifacts
from autoprune.search.rebuild import rebuild_trial
from autoprune.trial.surgery import Surgery, find_groups, rebuild

# the random scorer spreads a group's removals over both branches of the concatenation, where
# a count alone would rebuild them wrongly
BRANCHES = ["--set", "model.name='digits_branchnet'", "--set", "space.scorers=['random']"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str]:
    runs = tmp_path_factory.mktemp("concat") / "runs"
    assert main(search_args(runs, "--trials", "6", *BRANCHES)) == 0
    storage = f"sqlite:///{runs / 'digits.db'}"
    return optuna.load_study(study_name="digits", storage=storage), storage


def test_the_search_records_removals_that_split_a_group_across_both_branches(
    searched: tuple[optuna.Study, str],
) -> None:
    study, _storage = searched
    assert len(completed(study)) == 6
    for trial in completed(study):
        model = rebuild_trial(study, trial.number)
        left, right = model.branches.left[0].out_channels, model.branches.right[0].out_channels  # type: ignore[index, union-attr]
        assert left + right == trial.user_attrs["kept"]["branches.project.0"]
    split = [t for t in completed(study) if "branches.project.0" in {name for name, *_ in t.user_attrs["removed"]}]
    assert split, "no trial pruned the group that spans the concatenation"


def test_every_front_trial_reports_exports_and_loads_with_the_trials_outputs(
    searched: tuple[optuna.Study, str], tmp_path: Path
) -> None:
    study, storage = searched
    front = front_numbers(study)
    assert front and study_artifacts(study, storage).weight_numbers() == set(front)
    assert main(["report", "--storage", storage, "--study", "digits", "--out", str(tmp_path / "report")]) == 0
    x = study_data(study).val.x[:16]
    for number in front:
        model = trial_model(study, number, storage=storage)
        out = tmp_path / f"export-{number}"
        result = export_trial(study, number, out, storage=storage)  # checks the recorded accuracy and MACs
        assert result.measurement.accuracy == study.trials[number].user_attrs["accuracy"]
        with torch.no_grad():
            assert torch.equal(load(out)(x), model(x))


@pytest.mark.parametrize("name", ["googlenet", pytest.param("densenet121", marks=pytest.mark.slow)])
def test_torchvision_concatenating_models_rebuild_exactly_from_their_removals(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", num_classes=10, in_channels=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = find_groups(model, x)
    policy = Policy(ratios={g.name: 0.3 for g in groups}, scorer="random", finetune_steps=1, lr=0.01)
    pruned = copy.deepcopy(model)
    surgery = Surgery(pruned, x, policy, make_scorer("random", seed=0), groups=[g.name for g in groups])
    surgery.step()
    skeleton = rebuild(copy.deepcopy(model), x, surgery.kept(), surgery.removed())
    skeleton.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(skeleton.eval()(x), pruned(x))
