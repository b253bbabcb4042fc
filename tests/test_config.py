from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DIGITS

from autoprune.config import StudyConfig, apply_overrides, config_from_dict, load_config
from autoprune.errors import ConfigError


def test_digits_study_file_loads_with_defaults_filled_in() -> None:
    config = load_config(DIGITS)
    assert config.study.name == "digits"
    assert config.model.name == "digits_resnet"
    assert config.space.default_scorer == "l1"
    assert config.data.val_fraction == 0.2


def test_config_is_frozen() -> None:
    config = StudyConfig()
    with pytest.raises(AttributeError):
        config.study.trials = 3  # type: ignore[misc]


def test_round_trip_through_dict() -> None:
    config = load_config(DIGITS, ["space.scorers=['l1', 'taylor']"])
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("space.ratio_max=0.6", ("space", "ratio_max", 0.6)),
        ("study.trials=12", ("study", "trials", 12)),
        ("study.sampler=tpe", ("study", "sampler", "tpe")),
        ("study.sampler='random'", ("study", "sampler", "random")),
        ("space.lr_max=1", ("space", "lr_max", 1.0)),
        ("space.scorers=['l1','fpgm']", ("space", "scorers", ("l1", "fpgm"))),
    ],
)
def test_overrides_are_typed_like_the_key(override: str, expected: tuple[str, str, object]) -> None:
    section, key, value = expected
    config = load_config(DIGITS, [override])
    got = getattr(getattr(config, section), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": {}}, "unknown section [bogus]"),
        ({"study": {"trails": 3}}, "unknown key study.trails"),
        ({"study": {"trials": "many"}}, "study.trials = 'many': must be an integer"),
        ({"study": {"trials": 0}}, "study.trials = 0: must be at least 1"),
        ({"space": {"ratio_max": 1.0}}, "space.ratio_max = 1.0: must be in [0, 1)"),
        ({"space": {"ratio_min": -0.1}}, "space.ratio_min = -0.1: must be in [0, 1)"),
        ({"space": {"ratio_min": 0.5, "ratio_max": 0.4}}, "must be <= space.ratio_max"),
        ({"space": {"scorers": ["l1", "magic"]}}, "space.scorers = 'magic': unknown scorer"),
        ({"space": {"scorers": ["l1"], "default_scorer": "l2"}}, "space.default_scorer = 'l2'"),
        ({"study": {"objectives": ["macs"]}}, "must include accuracy"),
        ({"study": {"sampler": "cmaes"}}, "must be one of auto, nsga2, tpe, gp, gaps, switch, random"),
        ({"study": {"baselines": [0.5, 1.5]}}, "each must be a ratio in [0, 1)"),
        ({"data": {"val_fraction": 0}}, "data.val_fraction = 0.0: must be in (0, 1)"),
        ({"study": {"objectives": "accuracy"}}, "must be a list of str"),
        ({"fidelity": {"bands": "deciles"}}, "fidelity.bands = 'deciles': must be one of octaves, levels"),
    ],
)
def test_bad_values_name_key_value_and_rule(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert message in str(err.value)


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["trials=3"])
    with pytest.raises(ConfigError, match="unknown key study.nope"):
        apply_overrides({}, ["study.nope=1"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(DIGITS, ["study.trials=1.5"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="study file not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(bad)


def test_the_channel_multiple_follows_the_runtime_unless_set() -> None:
    assert config_from_dict({}).space.channel_multiple == 1  # eager PyTorch: no consistent gain from rounding
    onnx = config_from_dict({"trial": {"latency_runtime": "onnxruntime"}})
    assert onnx.space.channel_multiple == 8  # reports/bench/channel-multiple.md
    assert config_from_dict({"space": {"kind": "channels+n:m", "nm": "2:4"}}).space.channel_multiple == 4
    assert (
        config_from_dict(
            {"space": {"channel_multiple": 2}, "trial": {"latency_runtime": "onnxruntime"}}
        ).space.channel_multiple
        == 2
    )
    # what a study records is the value in effect: a stored study of before reads back equal
    assert config_from_dict(onnx.to_dict()) == onnx
