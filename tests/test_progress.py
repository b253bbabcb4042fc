"""Progress: one plain line per trial into a pipe, a redrawn bar on a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import DIGITS, REPO, tiny_overrides

from autoprune._progress import format_seconds
from autoprune.config import config_from_dict
from autoprune.search.progress import StudyProgress
from autoprune.search.run import _progress_figures
from autoprune.trial.metrics import Measurement

TRIALS = 5


def _args(runs: Path) -> list[str]:
    args = [sys.executable, "-m", "autoprune", "search", str(DIGITS), "--trials", str(TRIALS)]
    for item in tiny_overrides(runs):
        args += ["--set", item]
    return args


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}


def test_into_a_pipe_each_trial_is_one_plain_line(tmp_path: Path) -> None:
    done = subprocess.run(_args(tmp_path / "runs"), capture_output=True, text=True, env=_env(), timeout=300, check=True)
    log = done.stderr
    assert len(re.findall(r"^trial +\d+ ", log, flags=re.MULTILINE)) == TRIALS
    assert "\r" not in log + done.stdout and "\x1b" not in log + done.stdout
    # base training and the study say how long is left, in plain lines
    assert re.search(r"^base model: epoch 3/3 .* about 0s left$", log, flags=re.MULTILINE)
    assert re.search(r"^study 'digits': 2/5 trials, about \S+( \S+)? left; best val acc MACs ≤50% ", log, re.MULTILINE)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")
def test_on_a_terminal_a_bar_is_drawn_and_the_trial_lines_stay_quiet(tmp_path: Path) -> None:
    leader, follower = pty.openpty()  # a bare pty reports no size: the bar must still show
    proc = subprocess.Popen(_args(tmp_path / "runs"), stdin=follower, stdout=follower, stderr=follower, env=_env())
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the terminal closed: the search ended
            break
        if ready and not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = out.decode("utf-8", errors="replace")
    frames = [f for f in re.split(r"[\r\n]+", text) if f.strip()]
    assert any(re.match(r"base model: +\d+%\|.*epoch 3/3 +loss", f) for f in frames)
    study = [f for f in frames if f.startswith("study digits:")]
    assert any(f"{TRIALS}/{TRIALS} [" in f and "last #" in f and "best MACs ≤50% " in f for f in study)
    assert not [f for f in frames if re.match(r"trial +\d+ ", f)]  # the bar shows the last trial instead
    assert "Pareto front of study 'digits'" in text


def test_durations_read_like_a_log_line() -> None:
    assert [format_seconds(s) for s in (0.4, 59.6, 61, 3599, 7322)] == ["0s", "1m 00s", "1m 01s", "59m 59s", "2h 02m"]


def test_the_line_follows_the_study_s_own_figure() -> None:
    base = Measurement(accuracy=0.9, macs=1000, params=100, size=400)

    def followed(**sections: dict[str, object]) -> tuple[float, bool, str]:
        evaluator = SimpleNamespace(config=config_from_dict(sections), base_measurement=base, budget=None)
        return _progress_figures(evaluator)  # type: ignore[arg-type]

    assert followed() == (1000.0, False, "macs")
    assert followed(study={"objectives": ["accuracy", "params"]}) == (100.0, False, "params")
    # a study that zeroes weights follows the MACs of the weights left non-zero
    assert followed(space={"kind": "channels+n:m", "channel_multiple": 4}) == (1000.0, False, "nonzero_macs")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, params in ((0.85, 45), (0.8, 20)):
        study.add_trial(
            optuna.trial.create_trial(
                values=[accuracy, params], user_attrs={"accuracy": accuracy, "macs": 900, "params": params, "kept": {}}
            )
        )
    progress = StudyProgress(study, 2, 100.0, budget=False, bar=None, figure="params")
    assert progress.best(study.trials) == "params ≤50% 0.8500 ≤25% 0.8000 ≤12.5% -"
