"""``autoprune models | datasets | scorers``: the names a study file takes, one line on each."""

from __future__ import annotations

import pytest

from autoprune.cli import main
from autoprune.data import DATASETS
from autoprune.models import MODELS
from autoprune.scorers import SCORERS


def _listed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    assert main(list(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}


def test_models_lists_every_built_in_with_its_line_and_torchvision_in_one(capsys: pytest.CaptureFixture[str]) -> None:
    listed = _listed(capsys, "models")
    assert set(MODELS.names()) < set(listed)
    assert listed["resnet20"].startswith("CIFAR ResNet-20 (He et al. 2016")
    assert "classification models" in listed["torchvision:NAME"] and "module:function" in listed


def test_a_pattern_reaches_torchvision_and_says_what_cannot_be_pruned(capsys: pytest.CaptureFixture[str]) -> None:
    listed = _listed(capsys, "models", "resnet*")
    assert {"resnet20", "resnet56", "torchvision:resnet18", "torchvision:resnet50"} <= set(listed)
    assert "mobilenet_small" not in listed
    shuffles = _listed(capsys, "models", "torchvision:shufflenet*")
    assert shuffles and all(text.startswith("cannot be pruned:") for text in shuffles.values())
    swins = _listed(capsys, "models", "torchvision:swin*")
    assert len(swins) == 6 and set(swins.values()) == {"torchvision's model, untrained"}
    vits = _listed(capsys, "models", "torchvision:vit*")
    assert len(vits) == 5 and set(vits.values()) == {"torchvision's model, untrained"}


def test_a_timm_pattern_lists_timm_models(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    deits = _listed(capsys, "models", "timm:deit_tiny*")
    assert "timm:deit_tiny_patch16_224" in deits and "resnet20" not in deits
    assert "timm:NAME" in _listed(capsys, "models")


def test_datasets_and_scorers(capsys: pytest.CaptureFixture[str]) -> None:
    datasets = _listed(capsys, "datasets")
    assert set(datasets) == set(DATASETS.names()) and "no download" in datasets["digits"]
    scorers = _listed(capsys, "scorers")
    assert (
        set(scorers) == set(SCORERS.names()) and scorers["l1"] == "L1 norm of the channel's filters (Li et al., 2017)."
    )
    assert set(_listed(capsys, "scorers", "l?")) == {"l1", "l2"}


def test_a_pattern_that_matches_nothing_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "imagenet*"]) == 2
    assert capsys.readouterr().err.strip() == "no datasets match 'imagenet*'"


def test_only_optuna_and_torch_pruning_warnings_go_to_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import warnings

    import optuna

    from autoprune._logging import warnings_to_debug

    logger = logging.getLogger("warnings-to-debug-test")  # outside autoprune's own, which the CLI tests detach
    caplog.set_level(logging.DEBUG, logger="warnings-to-debug-test")
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with warnings_to_debug(logger):
            warnings.warn("", optuna.exceptions.ExperimentalWarning, stacklevel=1)
            warnings.warn("yours to act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["yours to act on"]
    assert [r.getMessage() for r in caplog.records] == ["ExperimentalWarning: "]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning), warnings_to_debug(logger):
            warnings.warn("an error under -W error stays one", UserWarning, stacklevel=1)
    caplog.clear()
    with pytest.raises(RuntimeError), warnings_to_debug(logger):
        warnings.warn("said before the failure", optuna.exceptions.ExperimentalWarning, stacklevel=1)
        raise RuntimeError
    assert [r.getMessage() for r in caplog.records] == ["ExperimentalWarning: said before the failure"]
