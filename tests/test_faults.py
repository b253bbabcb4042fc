"""Faults and bad input: a killed worker, signals, NaN, CUDA out of memory, refusals that leave the
stored study as it was."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import test_workers
import torch
from conftest import DIGITS, REPO
from optuna.trial import TrialState
from test_workers import completed, search_args, with_cache

from autoprune.cli import main
from autoprune.search.loop import PARENT_GONE, StopRequest, failing
from autoprune.search.record import StudyRecord
from autoprune.trial import evaluate

base_cache = test_workers.base_cache  # the module's fixture, shared


def _study(runs_dir: Path, name: str = "digits") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs_dir / 'digits.db'}")


HANGING_SEARCH = """
import os, sys, time
from pathlib import Path

from autoprune.cli import main
from autoprune.trial.evaluate import TrialEvaluator

trial, ready = int(sys.argv.pop(1)), Path(sys.argv.pop(1))
plain = TrialEvaluator.evaluate


def hanging(self, policy, **kwargs):
    # a policy's seed is study.seed (0 here) + its trial's number: a retry has another number
    if policy.seed == trial:
        ready.write_text(str(os.getpid()))
        time.sleep(3600)
    return plain(self, policy, **kwargs)


TrialEvaluator.evaluate = hanging
sys.exit(main(sys.argv[1:]))
"""


def _cli(runs_dir: Path, *extra: str, hang: tuple[int, Path] | None = None) -> subprocess.Popen[str]:
    """``autoprune search`` in a process of its own; with ``hang=(N, ready)``, trial N (not a retry of
    it) writes ``ready`` once its policy is stored and then never ends."""
    command = [sys.executable, "-m", "autoprune"]
    if hang is not None:
        script = hang[1].with_name("hanging_search.py")
        script.write_text(HANGING_SEARCH, encoding="utf-8")
        command = [sys.executable, str(script), str(hang[0]), str(hang[1])]
    return subprocess.Popen(
        [*command, *search_args(runs_dir, *extra)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the worker never reached the hook"
        time.sleep(0.2)


def test_sigkilled_worker_trial_is_failed_by_heartbeat_and_retried(
    runs_dir: Path,
    base_cache: Path,
    tmp_path: Path,
) -> None:
    with_cache(runs_dir, base_cache)
    ready = tmp_path / "ready"
    heartbeat = ["--heartbeat-interval", "1", "--grace-period", "3"]
    proc = _cli(runs_dir, "--trials", "5", *heartbeat, hang=(3, ready))
    try:
        _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _study(runs_dir)
    earlier = {t.number: t.values for t in completed(before)}
    assert sorted(earlier) == [0, 1, 2]
    assert before.trials[3].state == TrialState.RUNNING  # dead, but nobody knows yet
    time.sleep(3.5)  # past the grace period: the next worker to start a trial fails it
    t0 = time.monotonic()
    assert main(search_args(runs_dir, "--trials", "5", *heartbeat)) == 0
    after = _study(runs_dir)
    assert {t.number: t.values for t in completed(after) if t.number in earlier} == earlier
    assert after.trials[3].state == TrialState.FAIL
    assert after.trials[3].user_attrs["fail_reason"].startswith("its worker stopped sending heartbeats")
    retries = [t for t in after.trials if t.system_attrs.get("failed_trial") == 3]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["fail_reason"] is None  # not the stale original's, which it inherits
    assert retries[0].params == after.trials[3].params
    assert len(completed(after)) == 5
    assert time.monotonic() - t0 < 120


def test_first_sigterm_finishes_the_trial_second_fails_it_and_exits(
    runs_dir: Path,
    base_cache: Path,
    tmp_path: Path,
) -> None:
    with_cache(runs_dir, base_cache)
    ready = tmp_path / "ready"
    proc = _cli(runs_dir, "--trials", "4", hang=(1, ready))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal waits for the trial
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "finishing the current trial" in out
    study = _study(runs_dir)
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["fail_reason"].startswith("interrupted")
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_nan_loss_fails_one_trial_the_study_completes_and_trials_csv_says_why(
    runs_dir: Path,
    base_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_cache(runs_dir, base_cache)
    real = evaluate.train_steps
    calls = {"n": 0}

    def poisoned(model: torch.nn.Module, *args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial's first fine-tune: its weights become NaN
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluate, "train_steps", poisoned)
    assert main(search_args(runs_dir, "--trials", "3", "--set", "study.baselines=[0.25]")) == 0
    study = _study(runs_dir)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and len(completed(study)) == 3
    out = tmp_path / "report"
    args = ["report", "--storage", f"sqlite:///{runs_dir / 'digits.db'}", "--study", "digits"]
    assert main([*args, "--out", str(out), "--no-test"]) == 0
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert rows[failed[0].number]["state"] == "FAIL"
    assert "loss became nan" in rows[failed[0].number]["fail_reason"]
    ok = next(n for n, r in rows.items() if r["state"] == "COMPLETE")
    assert rows[ok]["macs"].isdigit() and rows[ok]["finetune_steps"].isdigit()  # not 12345.0 beside the gap
    assert rows[failed[0].number]["macs"] == ""


def test_cuda_out_of_memory_retries_at_half_batch_then_fails_with_the_reason(
    runs_dir: Path,
    base_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_cache(runs_dir, base_cache)
    real = evaluate.TrialEvaluator.evaluate
    calls = {"n": 0}

    def flaky(self: evaluate.TrialEvaluator, policy: Any, *, batch_size: int | None = None, start: Any = None) -> Any:
        calls["n"] += 1
        # trial 0: OOM once (retried at half the batch); trial 1: OOM twice (fails)
        if calls["n"] in (1, 3, 4):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        assert self.config.data.batch_size == 64
        assert batch_size == (32 if calls["n"] == 2 else None)
        return real(self, policy, batch_size=batch_size)

    monkeypatch.setattr(evaluate.TrialEvaluator, "evaluate", flaky)
    assert main(search_args(runs_dir, "--trials", "2", "--set", "study.baselines=[]")) == 0
    study = _study(runs_dir)
    assert study.trials[0].state == TrialState.COMPLETE
    assert study.trials[0].user_attrs["oom_retry_batch_size"] == 32
    assert study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["fail_reason"] == "CUDA out of memory at batch size 64 and again at 32"
    assert len(completed(study)) == 2


IMPOSSIBLE_LR = [
    *("--set", "space.lr_min=1e3", "--set", "space.lr_max=1e4"),
    *("--set", "space.finetune_steps_min=20", "--set", "space.finetune_steps_max=20"),  # long enough to diverge
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "all 3 baseline trials failed; most common reason ("),
        (["--set", "study.baselines=[]", "--set", "study.max_failures=2"], "its last 2 trials failed"),
        (["--set", "study.baselines=[]", "--set", "study.max_failures=2", "--workers", "2"], "its last "),
    ],
)
def test_a_study_whose_trials_keep_failing_stops_non_zero_with_the_most_common_reason(
    runs_dir: Path, base_cache: Path, capfd: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with_cache(runs_dir, base_cache)
    capfd.readouterr()
    line = _error(capfd, main(search_args(runs_dir, "--trials", "6", *IMPOSSIBLE_LR, *extra)))
    assert "study 'digits' stopped: " + message in line
    assert re.search(r"the fine-tune loss became (nan|inf) at step", line), line  # which depends on threads
    study = _study(runs_dir)
    assert not completed(study)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    # each worker stops at its next look: at most one more failure per worker than the limit
    assert len(failed) <= (3 if "--workers" not in extra else 2 + 2)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def _finished(number: int, state: TrialState, **attrs: Any) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state, values=[0.5] if state == TrialState.COMPLETE else None, user_attrs=attrs
    )
    trial.number = number
    return trial


def test_failing_counts_failures_in_a_row_and_failed_baselines() -> None:
    ok, bad = TrialState.COMPLETE, TrialState.FAIL
    trials = [_finished(0, ok, baseline=0.5), _finished(1, bad, fail_reason="a"), _finished(2, bad, fail_reason="b")]
    assert failing(trials, 3) is None  # a completed trial breaks the run
    assert "its last 2 trials failed" in str(failing(trials, 2))
    assert failing(trials, 0) is None
    trials[0] = _finished(0, bad, baseline=0.5, fail_reason="b")
    assert str(failing(trials, 5)).startswith("all 1 baseline trials failed; most common reason (1 of 1): b")
    assert "its last 3 trials failed; most common reason (2 of 3): b" in str(failing(trials, 3))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_stop_after_their_trial_when_the_search_process_is_killed(runs_dir: Path, base_cache: Path) -> None:
    with_cache(runs_dir, base_cache)
    proc = _cli(runs_dir, "--trials", "400", "--workers", "2")
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "workers started (pids" in line:
                pids = [int(p) for p in line.split("(pids ", 1)[1].split(")", 1)[0].split(", ")]
                break
        assert len(pids) == 2
        # the workers log about 1 kB a second to this pipe: left unread it fills, and a worker blocked
        # writing its log never reaches the end of its trial
        out: list[str] = []
        threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True).start()
        deadline = time.monotonic() + 120
        while not [t for t in _study(runs_dir).trials if t.state == TrialState.COMPLETE]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids), "orphaned workers ran on:\n" + "".join(out[-20:])
    finally:
        for pid in [proc.pid, *pids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    study = _study(runs_dir)
    assert len(completed(study)) < 400
    # each finished the trial it was running; a trial created in the instant the signal arrived, before
    # its policy was drawn, may stay RUNNING (the heartbeat fails and retries it on the next run)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING and t.params]
    assert not [t for t in study.trials if t.state == TrialState.FAIL], "a trial was cut short"


def test_a_repeated_parent_death_signal_still_lets_the_trial_finish() -> None:
    with StopRequest() as stop:
        for _ in range(3):  # the kernel sends it once for each thread of the dying parent
            os.kill(os.getpid(), PARENT_GONE)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # a second SIGTERM still means "at once"
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_unreachable_storage_is_refused_before_the_base_model_is_trained(
    runs_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    line = _error(capfd, main(search_args(runs_dir, "--storage", "postgresql://alice:s3cret@127.0.0.1:1/studies")))
    assert "cannot be reached" in line and "s3cret" not in line
    assert not list(runs_dir.glob("cache/*.pt"))


# --- bad input: one line, exit 2, the stored study untouched -------------------------------------


@pytest.fixture(scope="module")
def stored(base_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = with_cache(tmp_path_factory.mktemp("stored") / "runs", base_cache)
    assert main(search_args(runs, "--trials", "2", "--set", "study.baselines=[0.5]")) == 0
    return runs


def _snapshot(runs_dir: Path) -> list[tuple[int, str, list[float] | None, dict[str, Any]]]:
    return [(t.number, t.state.name, t.values, t.user_attrs) for t in _study(runs_dir).trials] + [
        (-1, "attrs", None, _study(runs_dir).user_attrs)
    ]


def _error(capfd: pytest.CaptureFixture[str], code: int) -> str:
    err = capfd.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("autoprune: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _checkpoint_pickle(tmp: Path) -> Path:
    from autoprune.models import build_model

    path = tmp / "whole-model.pt"
    torch.save(build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8), path)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--storage", "postgresql://alice:s3cret@127.0.0.1:1/studies"],
            "postgresql://alice:***@127.0.0.1:1/studies cannot be reached",
        ),
        (["--set", "space.ratio_max=0.6"], "exists with another search space (differs in space.ratio_max)"),
        (["--set", "study.objectives=['accuracy','macs']"], "differs in study.objectives"),
        (
            ["--set", "data.name='mnist'", "--set", "data.root='/nonexistent/data'", "--new-study"],
            "MNIST not found: expected /nonexistent/data/MNIST/raw/",
        ),
        (
            ["--set", "model.checkpoint='/nonexistent/base.pt'", "--new-study"],
            "checkpoint not found: /nonexistent/base.pt",
        ),
        (["--set", "model.name='no_such_module_xyz:build'", "--new-study"], "no module 'no_such_module_xyz'"),
        (["--set", "model.name='os:no_such_function'", "--new-study"], "has no function 'no_such_function'"),
        (["--max-macs", "1000", "--new-study"], "no policy in the space can meet max_macs <= 1.00k"),
        (["--max-latency-ms", "0.00001", "--new-study"], "no policy in the space can meet max_latency_ms <= 1e-05 ms"),
        (["--max-nonzero-macs", "1000", "--new-study"], "no policy in the space can meet max_nonzero_macs <= 1.00k"),
        (
            [
                *("--set", "space.kind='weights'", "--set", "study.objectives=['accuracy','nonzero_macs']"),
                *("--max-nonzero-macs", "1%", "--new-study"),
            ],
            "pruned at space.sparsity_max = 0.98 in every layer",
        ),
        (["--min-accuracy", "0.999", "--max-macs", "5%", "--new-study"], "no policy can meet min_accuracy >= 0.9990"),
        (["--set", "model.checkpoint='{pickle}'", "--new-study"], "pass --trust-checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_the_study_unchanged(
    stored: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    extra = [e.replace("{pickle}", _checkpoint_pickle(tmp_path).as_posix()) for e in extra]
    before = _snapshot(stored)
    capfd.readouterr()
    line = _error(capfd, main(search_args(stored, *extra)))
    assert message in line
    assert "s3cret" not in line
    assert _snapshot(stored) == before


def test_new_study_takes_a_suffixed_name_and_leaves_the_old_one(stored: Path) -> None:
    before = _snapshot(stored)
    assert main(search_args(stored, "--set", "space.ratio_max=0.6", "--new-study", "--trials", "1")) == 0
    assert _snapshot(stored) == before
    fresh = _study(stored, "digits-2")
    assert StudyRecord.from_study(fresh).config.space.ratio_max == 0.6
    assert len(completed(fresh)) == 1


def test_trusted_pickle_checkpoint_is_converted_to_weights(
    runs_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint_pickle(tmp_path)
    args = search_args(runs_dir, "--set", f"model.checkpoint='{ckpt.as_posix()}'", "--trust-checkpoint")
    assert main([*args, "--trials", "1", "--set", "study.baselines=[]"]) == 0
    assert "unpickling" in capfd.readouterr().err
    assert list((runs_dir / "cache").glob("trusted-whole-model-*.pt"))


def test_password_never_reaches_stored_settings_or_command_lines(tmp_path: Path) -> None:
    from autoprune.config import load_config
    from autoprune.search.record import public_settings

    config = load_config(DIGITS, ["study.storage='postgresql://u:topsecret@h/db'"])
    assert public_settings(config).study.storage == "postgresql://u:***@h/db"
