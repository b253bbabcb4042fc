"""``autoprune compare``: method settings, statistics, hypervolume by hand, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch

import autoprune.search.record as record_module
from autoprune.bench import compare
from autoprune.bench.compare import (
    CSV_COLUMNS,
    FILES,
    LEVELS,
    METHODS,
    RESULT_ATTR,
    RunResult,
    Stat,
    _same_settings,
    axis_of,
    method_config,
    parse_variant,
    ratio_grid,
    run_compare,
    verdict,
)
from autoprune.cli import main
from autoprune.config import StudyConfig, load_config
from autoprune.data import DataSplits, load_data
from autoprune.errors import ConfigError
from autoprune.results.pareto import HV_REFERENCE, hypervolume_2d
from autoprune.results.rows import TrialRow
from autoprune.search.loop import StopRequest
from autoprune.search.record import DataShape, StudyRecord
from autoprune.trial.metrics import Measurement
from autoprune.trial.space import SearchSpace
from tests.conftest import DIGITS, tiny_overrides

REF = (HV_REFERENCE[0], -HV_REFERENCE[1])


def test_hypervolume_by_hand_with_dominated_and_duplicate_points() -> None:
    # (MACs / base, -accuracy): three front points, rectangles summed by hand, left to right:
    # x 0.1..1 at acc 0.6 -> 0.9 * 0.6; x 0.3..1 adds acc 0.6..0.8 -> 0.7 * 0.2; x 0.6..1 adds 0.8..0.9 -> 0.4 * 0.1
    front = [(0.1, -0.6), (0.3, -0.8), (0.6, -0.9)]
    expected = 0.9 * 0.6 + 0.7 * 0.2 + 0.4 * 0.1
    assert expected == pytest.approx(0.72)
    assert hypervolume_2d(front, REF) == pytest.approx(expected)
    dominated = [(0.35, -0.7), (0.6, -0.85), (0.9, -0.6)]
    duplicates = [(0.3, -0.8), (0.3, -0.8), (0.1, -0.6)]
    outside = [(1.0, -0.99), (1.5, -0.95), (0.2, 0.0)]  # at or beyond the reference: no area
    assert hypervolume_2d(front + dominated + duplicates + outside, REF) == pytest.approx(expected)
    # order does not matter; a single point is a rectangle
    assert hypervolume_2d(list(reversed(front + dominated)), REF) == pytest.approx(expected)
    assert hypervolume_2d([(0.25, -0.8)], REF) == pytest.approx(0.75 * 0.8)
    # equal MACs, different accuracy: only the better one counts
    assert hypervolume_2d([(0.5, -0.5), (0.5, -0.7)], REF) == pytest.approx(0.5 * 0.7)


def test_ratio_grid() -> None:
    assert ratio_grid(8, 0.0, 0.8) == pytest.approx((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
    assert ratio_grid(1, 0.0, 0.8) == (0.8,)
    assert ratio_grid(2, 0.2, 0.6) == pytest.approx((0.4, 0.6))
    with pytest.raises(ConfigError):
        ratio_grid(0, 0.0, 0.8)


def test_method_configs_share_the_base_model_and_differ_only_where_they_should(tmp_path: Path) -> None:
    config = load_config(DIGITS)
    ckpt = tmp_path / "base.pt"
    made = {m: method_config(config, m, seed=7, trials=5, checkpoint=ckpt, runs_dir=tmp_path / "runs") for m in METHODS}
    for method, cfg in made.items():
        assert cfg.study.name == f"digits-{method}-s7"
        assert cfg.study.seed == 7 and cfg.study.trials == 5 and cfg.study.timeout == 0
        assert cfg.model.checkpoint == str(ckpt)
        assert cfg.study.runs_dir == (tmp_path / "runs").as_posix()
        assert cfg.space.finetune_steps_min == config.space.finetune_steps_min
        assert cfg.space.finetune_steps_max == config.space.finetune_steps_max
        assert cfg.data == config.data and cfg.train == config.train
    # compare --artifacts: every method's study keeps its artifacts in that store (each in its own part)
    stored = load_config(DIGITS, ["study.artifacts='s3://bucket/compare'"])
    kept = {
        method_config(stored, m, seed=7, trials=5, checkpoint=ckpt, runs_dir=tmp_path).study.artifacts for m in METHODS
    }
    assert kept == {"s3://bucket/compare"}
    grid = ratio_grid(5, config.space.ratio_min, config.space.ratio_max)
    assert made["uniform"].space.granularity == "uniform" and made["uniform"].study.baselines == grid
    assert made["global"].space.granularity == "global" and made["global"].study.baselines == grid
    one_shot_method = made["one_shot"]
    assert (one_shot_method.space.granularity, one_shot_method.space.references) == ("allocation", ("allocation",))
    assert one_shot_method.study.baselines == grid
    assert made["random"].study.sampler == "random" and made["random"].space == config.space
    assert made["random"].study.baselines == config.study.baselines
    assert made["autoprune"].study.sampler == config.study.sampler and made["autoprune"].space == config.space
    # no group of the global method loses more than ratio_max, the bound of every other method's ratios
    policy = SearchSpace(made["global"].space, ["a", "b"]).from_params({"ratio": 0.5, "lr": 0.01, "prune_steps": 1}, 0)
    assert policy.global_ranking and policy.max_ratio == config.space.ratio_max < 1.0
    # the one-shot takes the study's shares first, where autoprune enqueues its own one-shot trials
    shares = load_config(DIGITS, ["study.baselines=['50%', 0.3, '12.5%']", "space.granularity=allocation"])
    one_shot = method_config(shares, "one_shot", seed=0, trials=5, checkpoint=ckpt, runs_dir=tmp_path)
    assert one_shot.study.baselines == ("50%", "12.5%", *ratio_grid(3, config.space.ratio_min, config.space.ratio_max))
    assert (
        method_config(shares, "uniform", seed=0, trials=5, checkpoint=ckpt, runs_dir=tmp_path).study.baselines == grid
    )
    tpe = method_config(
        config, "tpe", seed=0, trials=5, checkpoint=ckpt, runs_dir=tmp_path, overrides=["study.sampler=tpe"]
    )
    assert tpe.study.sampler == "tpe" and tpe.study.name == "digits-tpe-s0"


def _record() -> StudyRecord:
    """A study record with made-up base figures."""
    shape = DataShape(num_classes=10, in_channels=1, image_size=8, example_input=(1, 1, 8, 8))
    base = Measurement(accuracy=0.95, macs=100, params=10, size=40)
    return StudyRecord(StudyConfig(), base, base_checkpoint=Path(), groups={}, data_shape=shape)


def test_stored_runs_are_matched_by_checkpoint_content_and_keys_at_their_defaults(tmp_path: Path) -> None:
    first, moved = tmp_path / "a.pt", tmp_path / "moved" / "b.pt"
    moved.parent.mkdir()
    first.write_bytes(b"weights")
    moved.write_bytes(b"weights")
    new = load_config(DIGITS, [f"model.checkpoint='{moved}'"])
    data = new.to_dict()
    data["model"]["checkpoint"] = str(first)
    del data["sensitivity"], data["space"]["target"]  # stored before these keys existed
    stored = StudyRecord.from_dict({**_record().to_dict(), "config": data}).config
    assert _same_settings(stored, None, new)  # stored before studies recorded their checkpoint's sha256
    first.write_bytes(b"other weights")
    assert not _same_settings(stored, None, new)
    digest = hashlib.sha256(b"weights").hexdigest()
    assert _same_settings(stored, digest, new)  # the recorded content decides, not the file at the path now
    first.unlink()
    assert _same_settings(stored, digest, new)
    moved.write_bytes(b"other weights")
    assert not _same_settings(stored, digest, new)
    moved.write_bytes(b"weights")
    data["space"]["target"] = "params"
    assert not _same_settings(StudyRecord.from_dict({**_record().to_dict(), "config": data}).config, digest, new)


def test_the_axis_is_parameters_only_when_the_objectives_name_them_and_not_macs() -> None:
    assert axis_of(["accuracy", "macs"]) == "macs"
    assert axis_of(["accuracy", "params"]) == "params"
    assert axis_of(["accuracy", "macs", "params"]) == "macs"
    front = [_point(1, 0.8, 0.79, 10)]
    run = RunResult("uniform", 0, 1, 0.5, dict.fromkeys(LEVELS, 0.79), dict.fromkeys(LEVELS, 0.8), front)
    settings = {"seeds": [0], "trials": 1, "grid": [0.5], "checkpoint": "x", "device": "cpu", "torch_threads": 1}
    on_params = compare.Comparison(
        "x", [run], ["uniform"], {}, None, settings | {"config": {"study": {"objectives": ["accuracy", "params"]}}}
    )
    assert on_params.axis == "params" and "best test acc ≤ 12.5% parameters" in compare.markdown(on_params)


def test_parse_variant() -> None:
    assert parse_variant("tpe:study.sampler=tpe") == ("tpe", ("study.sampler=tpe",))
    expected = ("x", ("study.sampler=tpe", "study.baselines=[]"))
    assert parse_variant("x: study.sampler=tpe ; study.baselines=[]") == expected
    for bad in ("tpe", "tpe:", ":study.sampler=tpe", "uniform:study.sampler=tpe"):
        with pytest.raises(ConfigError):
            parse_variant(bad)


def test_stat_and_verdict() -> None:
    a = Stat.of_values([0.80, 0.82, 0.84])
    assert a.mean == pytest.approx(0.82) and a.std == pytest.approx(0.02)
    b = Stat.of_values([0.79, 0.80, 0.81])
    assert verdict(a, b)[1] == "tie"  # difference 0.02 within the larger spread 0.02
    c = Stat.of_values([0.70, 0.71, 0.72])
    diff, word = verdict(a, c)
    assert diff == pytest.approx(0.11) and word == "better"
    assert verdict(c, a)[1] == "worse"
    missing = Stat.of_values([None, 0.5])
    assert missing.mean == 0.5 and missing.count == 1 and missing.std == 0.0
    assert "(1/2 seeds)" in missing.text()
    assert verdict(Stat.of_values([None]), a) == (None, "n/a")


def _point(trial: int, accuracy: float, test_accuracy: float, macs_pct: float) -> TrialRow:
    """A front member of a base model with 100 MACs."""
    return TrialRow(trial, "COMPLETE", accuracy, macs=int(macs_pct), macs_pct=macs_pct, test_accuracy=test_accuracy)


def test_best_test_accuracy_picks_by_validation() -> None:
    front = [_point(1, 0.8, 0.79, 10), _point(2, 0.85, 0.86, 20), _point(3, 0.9, 0.88, 45)]
    run = RunResult("x", 0, 3, 0.5, {50.0: 0.88, 25.0: 0.86, 12.5: 0.79}, {}, front)
    assert run.csv_row() == {
        "method": "x",
        "seed": 0,
        "hypervolume": 0.5,
        "best_test_acc_50": 0.88,
        "best_test_acc_25": 0.86,
        "best_test_acc_12": 0.79,
        **dict.fromkeys(CSV_COLUMNS[6:], ""),  # no final fine-tune ran
    }


def _trial_starts(runs: Path, method: str) -> list[object]:
    study = optuna.load_study(study_name=f"digits-{method}-s0", storage=f"sqlite:///{runs}/digits-{method}-s0.db")
    return [t.datetime_start for t in study.trials]


def test_compare_end_to_end_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    runs = tmp_path / "compare-runs"
    sets = [a for o in tiny_overrides(tmp_path / "runs") for a in ("--set", o)]
    argv = ["compare", str(DIGITS), *sets, "--seeds", "2", "--trials", "4", "--runs", str(runs), "--out", str(out)]
    assert main(argv) == 0
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with (out / "results.csv").open(encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert all(r["final_test_acc_50"] == "" for r in rows)  # no --final-epochs: no final fine-tune
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in METHODS for s in ("0", "1"))
    for row in rows:
        assert 0.0 < float(row["hypervolume"]) < 1.0
        for column in CSV_COLUMNS[3:]:
            assert row[column] == "" or 0.0 <= float(row[column]) <= 1.0
    # uniform's grid reaches 0.8 of every group: well under 50 % of base MACs, so there is a pick there
    assert all(r["best_test_acc_50"] != "" for r in rows if r["method"] == "uniform")
    md = (out / "results.md").read_text(encoding="utf-8")
    for method in METHODS:
        assert f"| {method} |" in md
    assert "± " in md and "## Goals" in md and "issue" not in md and "sample standard deviation" in md
    with (out / "fronts.csv").open(encoding="utf-8") as fh:
        fronts = list(csv.DictReader(fh))
    assert fronts and all(f["test_accuracy"] != "" for f in fronts)
    # the final fine-tune of a pick: autoprune finetune's recipe, continued from its checkpoint when asked again
    uniform = optuna.load_study(study_name="digits-uniform-s0", storage=f"sqlite:///{runs}/digits-uniform-s0.db")
    pick = int(next(f["trial"] for f in fronts if f["method"] == "uniform" and f["seed"] == "0"))
    data = load_data(load_config(DIGITS, tiny_overrides(tmp_path / "runs")).data)
    kwargs = dict(epochs=1, extra_samples=64, lr=0.01, device=torch.device("cpu"))
    tested = compare.final_test(uniform, pick, data, **kwargs)  # type: ignore[arg-type]
    assert 0.0 < tested <= 1.0
    [folder] = (runs / "digits-uniform-s0").rglob(f"trial-{pick}-*")
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == checkpoint["recipe"]["steps"] == checkpoint["recipe"]["steps_per_epoch"] + 1
    assert compare.final_test(uniform, pick, data, **kwargs) == tested  # type: ignore[arg-type]
    # one base model for every method and seed: no cache entry per seed, and the studies record the same file
    assert len(list((tmp_path / "runs" / "cache").glob("base-*.pt"))) == 1
    # the stored studies are resumed, not rerun: a second call finishes without new trials
    before = {m: _trial_starts(runs, m) for m in METHODS}
    assert main([*argv, "--seeds", "1"]) == 0
    assert {m: _trial_starts(runs, m) for m in METHODS} == before
    # other baselines change what random and autoprune ran (they take the study file's), not the grids
    assert main([*argv, "--seeds", "1", "--set", "study.baselines=[0.4]"]) == 0
    after = {m: _trial_starts(runs, m) for m in METHODS}
    assert all(after[m] == before[m] for m in ("uniform", "global", "one_shot"))
    assert after["random"] != before["random"] and after["autoprune"] != before["autoprune"]
    rerun = optuna.load_study(study_name="digits-autoprune-s0", storage=f"sqlite:///{runs}/digits-autoprune-s0.db")
    assert rerun.trials[0].user_attrs["baseline"] == 0.4 and len(rerun.trials) == 4
    assert StudyRecord.from_study(rerun).code_sha256 == compare.code_sha256()
    assert len(LEVELS) == 3
    # studies made by other autoprune code are rerun, every method's
    monkeypatch.setattr(compare, "code_sha256", lambda: "another version")
    assert main([*argv, "--seeds", "1", "--set", "study.baselines=[0.4]", "--trials", "2"]) == 0
    assert all(_trial_starts(runs, m) != after[m] for m in METHODS)


# ------------------------------------------------------------------------------------ signals


class UnhandledSigterm(Exception):
    """A SIGTERM reached the test's own handler: the code under test had none installed."""


def _unhandled(signum: int, frame: object) -> None:
    raise UnhandledSigterm


@pytest.fixture
def sigterm_fails() -> Iterator[None]:
    """A SIGTERM that the code under test does not handle fails the test instead of ending pytest."""
    previous = signal.signal(signal.SIGTERM, _unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def _sigterm() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


def _blocked() -> None:
    """A slow evaluation: a second SIGTERM arrives while it waits, and must end it."""
    threading.Timer(0.2, _sigterm).start()
    time.sleep(20)
    raise AssertionError("the second SIGTERM did not interrupt the evaluation")


class FakeRuns:
    """``run_compare`` without a base model, trials or test split: every run is an in-memory study of
    completed trials (one fewer when ``short`` says the run was stopped), its evaluation a constant."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.started: list[str] = []
        self.studies: list[optuna.Study] = []
        self.evaluated: list[str] = []
        self.on_run: Callable[[int], bool] = lambda n: False
        """Called with the run's index before it returns; True: the run was stopped one trial short."""
        self.on_evaluate: Callable[[int], None] = lambda n: None
        self.on_base_test: Callable[[], None] = lambda: None
        monkeypatch.setattr(compare, "shared_base", lambda config, device: tmp_path / "base.pt")
        monkeypatch.setattr(compare, "load_data", lambda config: None)
        monkeypatch.setattr(compare, "run_study", self.run_study)
        monkeypatch.setattr(compare, "evaluate_run", self.evaluate_run)
        monkeypatch.setattr(compare, "base_test_accuracy", self.base_test_accuracy)

    def run_study(self, config: StudyConfig, device: torch.device) -> optuna.Study:
        self.started.append(config.study.name)
        study = optuna.create_study(directions=["maximize", "minimize"])
        _record().save(study)
        short = self.on_run(len(self.started) - 1)
        for _ in range(config.study.trials - short):
            study.add_trial(optuna.trial.create_trial(values=[0.9, 50.0]))
        self.studies.append(study)
        return study

    def evaluate_run(
        self, study: optuna.Study, method: str, seed: int, data: DataSplits, seconds: float = 0.0
    ) -> RunResult:
        self.on_evaluate(len(self.evaluated))
        self.evaluated.append(method)
        picks = dict(zip(LEVELS, (2, 1, 0), strict=True))  # trial numbers, one per level
        return RunResult(
            method, seed, len(study.trials), 0.5, dict.fromkeys(LEVELS, 0.9), dict.fromkeys(LEVELS, 0.9), picks=picks
        )

    def base_test_accuracy(self, *args: object) -> float:
        self.on_base_test()
        return 0.95


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sigterm_fails: None) -> FakeRuns:
    return FakeRuns(monkeypatch, tmp_path)


def _compare_argv(tmp_path: Path) -> list[str]:
    return ["compare", str(DIGITS), "--trials", "3", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]


def test_first_signal_lets_the_evaluation_finish_and_starts_no_other_run(fake_runs: FakeRuns, tmp_path: Path) -> None:
    fake_runs.on_evaluate = lambda n: _sigterm() if n == 1 else None  # during the second run's evaluation
    config = load_config(DIGITS)
    comparison = run_compare(config, seeds=2, trials=3, runs_dir=tmp_path / "runs", device=torch.device("cpu"))
    assert fake_runs.started == ["digits-uniform-s0", "digits-global-s0"]
    assert fake_runs.evaluated == ["uniform", "global"]
    assert [r.method for r in comparison.runs] == ["uniform", "global"]
    assert comparison.settings["stopped"] and comparison.base_test_accuracy == 0.95
    assert signal.getsignal(signal.SIGTERM) is _unhandled  # the handlers are given back


def test_second_signal_during_an_evaluation_exits_at_once_and_writes_nothing(
    fake_runs: FakeRuns, tmp_path: Path
) -> None:
    def evaluate(n: int) -> None:
        if n == 1:
            _sigterm()  # the first: this evaluation may finish...
            _blocked()  # ...but the second ends it

    fake_runs.on_evaluate = evaluate
    start = time.perf_counter()
    assert main(_compare_argv(tmp_path)) == 130
    assert time.perf_counter() - start < 10
    assert fake_runs.started == ["digits-uniform-s0", "digits-global-s0"] and fake_runs.evaluated == ["uniform"]
    assert not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) is _unhandled
    # what was evaluated stays in its study, for the rerun
    assert RESULT_ATTR in fake_runs.studies[0].user_attrs and RESULT_ATTR not in fake_runs.studies[1].user_attrs


def test_a_signal_in_the_last_trial_of_a_run_starts_no_other_run(fake_runs: FakeRuns, tmp_path: Path) -> None:
    def last_trial(n: int) -> bool:
        with StopRequest():  # run_study's own, inside compare's: the signal reaches compare's
            _sigterm()
        return False  # the signal came in the run's last trial: the run is whole

    fake_runs.on_run = last_trial
    config = load_config(DIGITS)
    comparison = run_compare(config, seeds=1, trials=3, runs_dir=tmp_path / "runs", device=torch.device("cpu"))
    assert fake_runs.started == ["digits-uniform-s0"] and fake_runs.evaluated == ["uniform"]
    assert [r.method for r in comparison.runs] == ["uniform"] and comparison.settings["stopped"]
    text = compare.markdown(comparison)  # autoprune never ran: nothing is judged of it
    assert "| autoprune | uniform |" not in text and "- autoprune: hypervolume above" not in text


def test_after_a_study_stopped_by_its_own_handler_a_second_signal_exits_at_once(
    fake_runs: FakeRuns, tmp_path: Path
) -> None:
    def stopped_study(n: int) -> bool:
        if n == 1:
            with StopRequest():  # the study's handler (run_study's) takes the first signal, not compare's
                _sigterm()
        return n == 1

    fake_runs.on_run = stopped_study
    fake_runs.on_base_test = _blocked  # the base model's test accuracy: the last evaluation before the report
    assert main(_compare_argv(tmp_path)) == 130
    assert fake_runs.started == ["digits-uniform-s0", "digits-global-s0"] and fake_runs.evaluated == ["uniform"]
    assert not (tmp_path / "out").exists()


def test_methods_runs_only_those_and_judges_no_goal_without_every_baseline(fake_runs: FakeRuns, tmp_path: Path) -> None:
    config = load_config(DIGITS)
    comparison = run_compare(
        config, seeds=1, trials=3, runs_dir=tmp_path / "runs", device=torch.device("cpu"), only=("uniform", "autoprune")
    )
    assert fake_runs.started == ["digits-uniform-s0", "digits-autoprune-s0"]
    text = compare.markdown(comparison)
    assert "| autoprune | uniform |" in text and "| autoprune | global |" not in text
    assert "these runs leave out global, one_shot, random" in text and "above every baseline" not in text
    alone = run_compare(
        config, seeds=1, trials=3, runs_dir=tmp_path / "runs", device=torch.device("cpu"), only=("autoprune",)
    )
    assert "Against each baseline" not in compare.markdown(alone)  # no table without a baseline to set against
    with pytest.raises(ConfigError, match="--methods tpe: each must be one of"):
        run_compare(config, runs_dir=tmp_path / "runs", device=torch.device("cpu"), only=("tpe",))
    fake_runs.started.clear()
    cpu = torch.device("cpu")
    run_compare(config, seeds=1, trials=3, runs_dir=tmp_path / "runs", device=cpu, only=("sensitivity",))
    assert fake_runs.started == ["digits-one_shot-s0"]  # the one-shot allocation's earlier name still works


# ------------------------------------------------------------------------------------ final fine-tune


def test_final_epochs_fine_tune_every_methods_pick_with_one_recipe(
    fake_runs: FakeRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, dict[str, object]]] = []

    def fake_final(study: optuna.Study, number: int, data: object, **kwargs: object) -> float:
        calls.append((fake_runs.studies.index(study), number, kwargs))
        return 0.5 + 0.1 * number + (0.05 if kwargs["extra_samples"] else 0.0)

    monkeypatch.setattr(compare, "final_test", fake_final)
    monkeypatch.setattr(compare, "finetune_samples", lambda study: 6400)  # what each run's fine-tunes took
    config = load_config(DIGITS)
    comparison = run_compare(
        config, seeds=2, trials=3, runs_dir=tmp_path / "runs", device=torch.device("cpu"), final_epochs=2
    )
    plain = [c for c in calls if not c[2]["extra_samples"]]
    more = [c for c in calls if c[2]["extra_samples"]]
    # every run's three picks once, with one recipe; uniform's and one_shot's again, longer by the search's samples
    assert sorted((s, n) for s, n, _k in plain) == sorted((s, n) for s in range(10) for n in (0, 1, 2))
    middle = math.sqrt(config.space.lr_min * config.space.lr_max)  # the baselines' learning rate
    assert {(k["epochs"], k["lr"]) for _s, _n, k in calls} == {(2, middle)}
    methods = [n.split("-")[1] for n in fake_runs.started]
    assert sorted(methods[s] for s, _n, _k in more) == sorted(["uniform", "one_shot"] * 2 * 3)
    assert {k["extra_samples"] for _s, _n, k in more} == {6400}
    uniform = comparison.of("uniform")[0]
    assert uniform.final_test == {50.0: 0.7, 25.0: 0.6, 12.5: 0.5}
    assert uniform.final_test_more == {50.0: 0.75, 25.0: 0.65, 12.5: 0.55}
    assert comparison.of("autoprune")[0].final_test_more == {}
    row = uniform.csv_row()
    assert (row["final_test_acc_12"], row["final_more_test_acc_12"]) == (0.5, 0.55)
    text = compare.markdown(comparison)
    assert "## After the final fine-tune (2 epochs)" in text
    assert "| uniform + the search's compute | – | 75.00 ± 0.00 |" in text
    assert "| one_shot + the search's compute | -5.00 tie |" not in text  # differences are in points
    assert "| uniform + the search's compute | -5.00 worse | -5.00 worse | -5.00 worse |" in text
    # stopped before autoprune ran: the finals so far, and no word of the search's compute
    ran = [dataclasses.replace(r, final_test_more={}) for r in comparison.runs if r.method != "autoprune"]
    stopped = dataclasses.replace(comparison, runs=ran)
    text = compare.markdown(stopped)
    assert "## After the final fine-tune (2 epochs)" in text and "the search's compute" not in text


def test_a_stopped_final_fine_tune_resumes_without_redoing_a_finished_one(monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    calls: list[int] = []
    stop = [True]

    def fake_final(study: optuna.Study, number: int, data: object, **kwargs: object) -> float:
        if number == 2 and stop:
            stop.clear()
            raise KeyboardInterrupt  # stopped in the second fine-tune, once
        calls.append(number)
        return number / 10

    monkeypatch.setattr(compare, "final_test", fake_final)
    picks: dict[float, int | None] = {50.0: 2, 25.0: 1, 12.5: None}
    kwargs = dict(epochs=3, extra_samples=0, lr=0.01, device=torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        compare._finals(study, picks, None, **kwargs)  # type: ignore[arg-type]
    assert calls == [1]
    assert compare._finals(study, picks, None, **kwargs) == {50.0: 0.2, 25.0: 0.1, 12.5: None}  # type: ignore[arg-type]
    assert calls == [1, 2]  # trial 1's fine-tune is not run again
    assert compare._finals(study, picks, None, **kwargs) == {50.0: 0.2, 25.0: 0.1, 12.5: None}  # type: ignore[arg-type]
    assert calls == [1, 2]
    longer = {**kwargs, "epochs": 4}
    compare._finals(study, picks, None, **longer)  # type: ignore[arg-type]
    assert calls == [1, 2, 1, 2]  # another recipe is another fine-tune


def test_the_code_hash_covers_what_decides_a_trial_and_not_the_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "autoprune"
    for name in ("trial/evaluate.py", "search/record.py", "config.py", "bench/compare.py", "results/rows.py", "cli.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(f"# {name}\n", encoding="utf-8")
    monkeypatch.setattr(record_module, "__file__", str(package / "search" / "record.py"))

    def digest() -> str:
        record_module.code_sha256.cache_clear()  # computed once per process otherwise
        return record_module.code_sha256()

    before = digest()
    for name in ("bench/compare.py", "results/rows.py", "cli.py"):  # tables, reports, the command line
        (package / name).write_text("# edited\n", encoding="utf-8")
        assert digest() == before, name
    for name in ("trial/evaluate.py", "config.py"):  # what a trial computes
        (package / name).write_text("# edited\n", encoding="utf-8")
        assert digest() != before, name
        before = digest()
    monkeypatch.undo()
    record_module.code_sha256.cache_clear()
