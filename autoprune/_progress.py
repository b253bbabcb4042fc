"""Progress: on a terminal one tqdm bar, with autoprune's log lines written above it; anywhere else
(a pipe, a log file, a notebook) no bar, only plain log lines, so log files stay readable.

Per-trial lines go to the :data:`TRIAL_LINES` logger: while a bar shows the last trial, they are
quiet unless ``-v`` asked for debug output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

TRIAL_LINES = "autoprune.trials"
"""The logger of the one line each finished trial logs."""


def on_terminal() -> bool:
    """Whether progress is drawn as a bar: stderr is a terminal that can redraw a line."""
    return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"


class _AboveBars:
    """A stream whose writes go through ``tqdm.write``: the bar is cleared, the line written, the
    bar drawn again."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def progress_bar(total: int, *, desc: str, unit: str, initial: int = 0) -> Iterator[tqdm[Any] | None]:
    """A bar to stderr for ``total`` units while the block runs, or ``None`` off a terminal. Inside
    it, autoprune's log lines are written above the bar and per-trial lines (:data:`TRIAL_LINES`)
    only show at debug verbosity; the bar is removed when the block ends."""
    if not on_terminal():
        yield None
        return
    from tqdm import tqdm

    root = logging.getLogger("autoprune")
    swapped = [(h, h.stream) for h in root.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr]
    trials = logging.getLogger(TRIAL_LINES)
    level = trials.level
    if root.getEffectiveLevel() > logging.DEBUG:
        trials.setLevel(logging.WARNING)
    for handler, stream in swapped:
        handler.setStream(_AboveBars(stream))
    try:
        sized = min(os.get_terminal_size(sys.stderr.fileno())) > 0
    except OSError:
        sized = False
    try:
        with tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            leave=False,
            dynamic_ncols=sized,
            # a terminal that reports no size (a bare pty) would hide the bar: draw it 100 wide
            ncols=None if sized else 100,
            nrows=None if sized else 24,
            file=sys.stderr,
        ) as bar:
            yield bar
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)
        trials.setLevel(level)


class EpochLines:
    """The line a training run gives after each epoch: on a terminal the bar's postfix (the full line
    at debug verbosity); elsewhere a log line about every tenth of the epochs, each with the time left.

    Args:
        what: What is trained ("base model", "trial 12").
        epochs: Epochs in the run.
        steps: Steps in the run.
        done: Steps already done when this process started (a resumed run): they count toward the
            epochs, not toward the time left.
    """

    def __init__(self, what: str, epochs: int, steps: int, done: int = 0) -> None:
        self.what, self.epochs, self.steps, self.done = what, epochs, steps, done
        self.start = time.perf_counter()

    def __call__(self, bar: tqdm[Any] | None, epoch: int, step: int, loss: float, val: float) -> None:
        """After ``epoch`` (counted from 1), ending at ``step`` steps done, with its mean ``loss``."""
        if bar is not None:
            bar.set_postfix_str(f"epoch {epoch}/{self.epochs}  loss {loss:.4f}  val acc {val:.4f}")
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(1, step - self.done) * (self.steps - step)
        tenth = epoch == self.epochs or epoch * 10 // self.epochs != (epoch - 1) * 10 // self.epochs
        logging.getLogger("autoprune").log(
            logging.INFO if bar is None and tenth else logging.DEBUG,
            "%s: epoch %d/%d  loss %.4f  val acc %.4f  %s, about %s left",
            self.what,
            epoch,
            self.epochs,
            loss,
            val,
            format_seconds(elapsed),
            format_seconds(left),
        )


def format_seconds(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 20m``: a duration as a log line gives it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


__all__ = ["TRIAL_LINES", "EpochLines", "format_seconds", "on_terminal", "progress_bar"]
