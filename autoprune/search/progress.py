"""A study's progress: trials done of the total, the last trial, the best validation accuracy under
each budget so far, and the time left, measured from this run's trials (every worker's: the
figures come from the storage).

On a terminal this is one bar (:func:`autoprune._progress.progress_bar`); elsewhere a plain line
about every tenth of the study.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from autoprune._logging import get_logger
from autoprune._progress import format_seconds, progress_bar
from autoprune.config import PICK_SHARES
from autoprune.search.front import PARENT, counts_toward_total, feasible, measured, stored_constraints

if TYPE_CHECKING:
    from tqdm import tqdm

log = get_logger(__name__)

LABELS = {"macs": "MACs", "nonzero_macs": "nz MACs", "params": "params"}
"""The figures a study's progress can follow, as its line names them."""


class StudyProgress:
    """Follows one run of a study; :meth:`refresh` after each trial (or every poll while workers
    run them) reads the stored trials and updates the bar or logs a line."""

    def __init__(
        self,
        study: optuna.Study,
        total: int,
        base_figure: float,
        budget: bool,
        bar: tqdm[Any] | None,
        figure: str = "macs",
    ) -> None:
        self.study = study
        self.total = total
        self.base_figure = base_figure
        self.figure = figure
        self.label = LABELS[figure]
        self.budget = budget
        self.bar = bar
        self.start = time.perf_counter()
        self.done_at_start, runs = self.counts(study.get_trials(deepcopy=False))
        self.logged_tenth = self.done_at_start * 10 // max(1, runs)

    @staticmethod
    def _done(trials: Sequence[FrozenTrial]) -> int:
        return sum(counts_toward_total(t) for t in trials)

    def counts(self, trials: Sequence[FrozenTrial]) -> tuple[int, int]:
        """Runs done and runs in all: the study's trials (at most its count), then its promoted runs
        (:mod:`autoprune.search.promotion`), which join the total as they are enqueued."""
        promoted = [t for t in trials if PARENT in t.user_attrs]
        done = min(self._done(trials), self.total) + sum(t.state.is_finished() for t in promoted)
        return done, self.total + len(promoted)

    def best(self, trials: Sequence[FrozenTrial]) -> str:
        """The best validation accuracy so far: ``in budget 0.9712``, or without a budget at or under
        each of :data:`~autoprune.config.PICK_SHARES` of the base model's figure,
        ``MACs ≤50% 0.9712 ≤25% 0.9500 ≤12.5% -``."""
        done = [t for t in trials if measured(t)]
        if self.budget:
            fits = [t.user_attrs["accuracy"] for t in done if feasible(stored_constraints(t))]
            return f"in budget {max(fits):.4f}" if fits else "in budget -"
        cells = [self.label]
        for share in PICK_SHARES:
            under = [t.user_attrs["accuracy"] for t in done if self._figure(t) <= share * self.base_figure]
            cells.append(f"≤{100 * share:g}% {max(under):.4f}" if under else f"≤{100 * share:g}% -")
        return " ".join(cells)

    def _figure(self, trial: FrozenTrial) -> float:
        return float(trial.user_attrs.get(self.figure, trial.user_attrs["macs"]))

    def refresh(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        done, total = self.counts(trials)
        if self.bar is not None:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
            last = max((t for t in trials if measured(t)), key=_completed_at, default=None)
            text = f"best {self.best(trials)}"
            if last is not None:
                share = 100 * self._figure(last) / self.base_figure
                text = f"last #{last.number} {last.user_attrs['accuracy']:.4f} @{share:.1f}% {self.label} · {text}"
            self.bar.set_postfix_str(text, refresh=True)
            return
        tenth = done * 10 // max(1, total)
        if tenth <= self.logged_tenth or done >= total:
            return
        self.logged_tenth = tenth
        ran = done - self.done_at_start
        left = (time.perf_counter() - self.start) / max(1, ran) * (total - done)
        log.info(
            "study %r: %d/%d trials, about %s left; best val acc %s",
            self.study.study_name,
            done,
            total,
            format_seconds(left),
            self.best(trials),
        )

    def callback(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """As an Optuna callback: refresh after each trial of this process."""
        self.refresh()


def _completed_at(trial: FrozenTrial) -> float:
    return trial.datetime_complete.timestamp() if trial.datetime_complete else 0.0


@contextlib.contextmanager
def study_progress(
    study: optuna.Study, total: int, base_figure: float, budget: bool, figure: str = "macs"
) -> Iterator[StudyProgress]:
    """:class:`StudyProgress` for a run of ``study`` toward ``total`` trials, with its bar on a terminal;
    ``figure`` (one of :data:`LABELS`) is what it shows the best accuracy under, ``base_figure`` the
    base model's."""
    initial = min(total, StudyProgress._done(study.get_trials(deepcopy=False)))
    with progress_bar(total, desc=f"study {study.study_name}", unit="trial", initial=initial) as bar:
        progress = StudyProgress(study, total, base_figure, budget, bar, figure)
        progress.refresh()
        yield progress


__all__ = ["LABELS", "StudyProgress", "study_progress"]
