"""Benchmark: the bad-input table, every refusal of the command line against one stored study.

It runs a small digits study once in a scratch folder (the tiny settings of the tests), then every
bad-input case as its own ``python -m autoprune ...`` process against that store, and records per
case the exit status, the ``autoprune: error:`` line (or the last stderr line), whether a traceback
was printed, whether a password in the case leaked into the output, the seconds it took, and
whether the store is unchanged: the sha256 of the sorted (relative path, sha256) list of every
file under the runs folder, the empty ``*.lock`` files of file locks left out::

    python -m autoprune.bench.bad_input [--out reports/bench/bad-input.md] [--timeout 600]

One case changes the store by design: a study whose trials all fail, run with ``--new-study``,
creates the study ``digits-2``; for it the check is that the stored study ``digits`` (its trials
and attributes, read through Optuna) is unchanged and ``digits-2`` is the only study added. Any case
that exits other than 2, prints other than one error line, prints a traceback or a password,
changes the store otherwise, or whose line lacks the expected words is marked in the table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune.bench import commit
from autoprune.models import build_model
from autoprune.search.paths import default_storage

REPO = Path(__file__).resolve().parents[2]
STUDY_FILE = "studies/digits.toml"
STUDY = "digits"
SECRET = "s3cret"
ERROR_PREFIX = "autoprune: error:"
IMPOSSIBLE_LR = (
    *("--set", "space.lr_min=1e3", "--set", "space.lr_max=1e4"),
    *("--set", "space.finetune_steps_min=20", "--set", "space.finetune_steps_max=20"),  # long enough to diverge
)


@dataclass(frozen=True)
class Case:
    """One bad input."""

    name: str
    args: tuple[str, ...]
    """The arguments after ``python -m autoprune``."""
    expect: str
    """Words the error line should hold."""
    secret: str | None = None
    """A password given in the case, which no output may hold."""
    new_study: str | None = None
    """The study the case creates by design; ``None``: the store must stay byte for byte the same."""


@dataclass(frozen=True)
class StoreCheck:
    """The store before and after one case."""

    before: str
    after: str
    modified: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    study_unchanged: bool
    """The stored study ``digits`` holds the same trials and attributes (read through Optuna)."""
    studies_added: dict[str, str]
    """Name → trial states (``3 FAIL``) of each study that was not there before."""
    studies_removed: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """What one case did."""

    case: Case
    exit_code: int | None
    """``None``: killed at the timeout."""
    message: str
    error_lines: int
    traceback: bool
    secret_leaked: bool
    store: StoreCheck
    seconds: float
    output: str
    """stderr, then stdout."""


def tiny_args(runs_dir: Path) -> list[str]:
    """The ``--set`` options of the tests' tiny digits study (tests/conftest.py ``tiny_overrides``)."""
    items = [
        f"study.runs_dir='{runs_dir.as_posix()}'",
        "train.epochs=3",
        "space.finetune_steps_min=2",
        "space.finetune_steps_max=6",
        "space.calibration_batches=1",
    ]
    return [arg for item in items for arg in ("--set", item)]


def make_store(runs_dir: Path) -> None:
    """Run the stored study: 2 trials of the tiny digits study, as tests/test_faults.py's ``stored``."""
    args = ["search", STUDY_FILE, *tiny_args(runs_dir), "--trials", "2", "--set", "study.baselines=[0.5]"]
    subprocess.run([sys.executable, "-m", "autoprune", *args], cwd=REPO, check=True, capture_output=True)


def write_inputs(scratch: Path) -> None:
    """Write the malformed study file and a checkpoint that holds a whole pickled model."""
    (scratch / "malformed.toml").write_text('[study]\nname = "digits\ntrials = 3\n', encoding="utf-8")
    torch.save(build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8), scratch / "whole-model.pt")


def cases(runs_dir: Path, scratch: Path) -> list[Case]:
    """Every bad-input case against the store in ``runs_dir``; the files of :func:`write_inputs` in ``scratch``."""
    search = ("search", STUDY_FILE, *tiny_args(runs_dir))
    stored = ("--storage", _storage(runs_dir))
    missing = ("--study", "no_such_study")
    pickle = (scratch / "whole-model.pt").as_posix()
    return [
        Case(
            "unreachable PostgreSQL, password as user:pass@",
            (*search, "--storage", f"postgresql://alice:{SECRET}@127.0.0.1:1/studies"),
            "postgresql://alice:***@127.0.0.1:1/studies cannot be reached",
            secret=SECRET,
        ),
        Case(
            "unreachable PostgreSQL, password as ?password=",
            (*search, "--storage", f"postgresql://alice@127.0.0.1:1/studies?password={SECRET}"),
            "cannot be reached",
            secret=SECRET,
        ),
        Case(
            "changed search space",
            (*search, "--set", "space.ratio_max=0.6"),
            "exists with another search space (differs in space.ratio_max)",
        ),
        Case("changed objectives", (*search, "--set", "study.objectives=['accuracy','macs']"), "study.objectives"),
        Case(
            "missing MNIST root",
            (*search, "--set", "data.name='mnist'", "--set", "data.root='/nonexistent/data'", "--new-study"),
            "MNIST not found: expected /nonexistent/data/MNIST/raw/",
        ),
        Case(
            "missing checkpoint",
            (*search, "--set", "model.checkpoint='/nonexistent/base.pt'", "--new-study"),
            "checkpoint not found: /nonexistent/base.pt",
        ),
        Case(
            "unknown model module",
            (*search, "--set", "model.name='no_such_module_xyz:build'", "--new-study"),
            "no module 'no_such_module_xyz'",
        ),
        Case(
            "unknown model function",
            (*search, "--set", "model.name='os:no_such_function'", "--new-study"),
            "has no function 'no_such_function'",
        ),
        Case(
            "unmeetable max_macs",
            (*search, "--max-macs", "1000", "--new-study"),
            "no policy in the space can meet max_macs <= 1.00k",
        ),
        Case(
            "unmeetable max_latency_ms",
            (*search, "--max-latency-ms", "0.00001", "--new-study"),
            "no policy in the space can meet max_latency_ms <= 1e-05 ms",
        ),
        Case(
            "min_accuracy above the base model's",
            (*search, "--min-accuracy", "0.999", "--max-macs", "5%", "--new-study"),
            "no policy can meet min_accuracy >= 0.9990",
        ),
        Case(
            "pickled checkpoint without --trust-checkpoint",
            (*search, "--set", f"model.checkpoint='{pickle}'", "--new-study"),
            "pass --trust-checkpoint",
        ),
        Case(
            "missing study file",
            ("search", "studies/no_such_study.toml", *tiny_args(runs_dir)),
            "study file not found",
        ),
        Case(
            "malformed TOML",
            ("search", (scratch / "malformed.toml").as_posix(), *tiny_args(runs_dir)),
            "malformed TOML",
        ),
        Case("unknown --set key", (*search, "--set", "study.no_such_key=1"), "unknown key study.no_such_key"),
        Case("out-of-range --set value", (*search, "--set", "space.ratio_max=1.5"), "space.ratio_max = 1.5"),
        Case("--workers -1", (*search, "--workers", "-1"), "--workers -1: a count of 0 or more"),
        Case(
            "report of a study that does not exist",
            ("report", *stored, *missing, "--out", (scratch / "report").as_posix()),
            "study 'no_such_study' not found",
        ),
        Case(
            "export of a study that does not exist",
            ("export", *stored, *missing, "--out", (scratch / "export").as_posix()),
            "study 'no_such_study' not found",
        ),
        Case("pick of a study that does not exist", ("pick", *stored, *missing), "study 'no_such_study' not found"),
        Case(
            "export --trial 999",
            ("export", *stored, "--study", STUDY, "--trial", "999", "--out", (scratch / "export-999").as_posix()),
            "has no trial 999",
        ),
        Case(
            "a study whose trials all fail",
            (*search, *IMPOSSIBLE_LR, "--new-study", "--trials", "4"),
            f"study '{STUDY}-2' stopped: all 3 baseline trials failed",
            new_study=f"{STUDY}-2",
        ),
    ]


def manifest(runs_dir: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``runs_dir`` but the (empty) ``*.lock`` files."""
    return {
        path.relative_to(runs_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(runs_dir.rglob("*"))
        if path.is_file() and path.suffix != ".lock"
    }


def digest(files: dict[str, str]) -> str:
    """The sha256 of the sorted (relative path, sha256) list."""
    return hashlib.sha256("\n".join(f"{path}  {sha}" for path, sha in sorted(files.items())).encode()).hexdigest()


def _storage(runs_dir: Path) -> str:
    return default_storage(STUDY, runs_dir)


def snapshot(runs_dir: Path) -> tuple[set[str], list[Any]]:
    """The names of the stored studies, and the study ``digits``: its attributes and every trial."""
    storage = _storage(runs_dir)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = [(t.number, t.state.name, t.values, t.params, t.user_attrs) for t in study.trials]
    return set(optuna.get_all_study_names(storage=storage)), [study.user_attrs, *trials]


def _states(runs_dir: Path, name: str) -> str:
    trials = optuna.load_study(study_name=name, storage=_storage(runs_dir)).trials
    counts = Counter(t.state.name for t in trials)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def run_case(case: Case, runs_dir: Path, timeout: float) -> Row:
    """Run one case as its own process and check its output and the store."""
    names_before, study_before = snapshot(runs_dir)
    files_before = manifest(runs_dir)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "autoprune", *case.args], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        code: int | None = proc.returncode
        err, out = proc.stderr, proc.stdout
    except subprocess.TimeoutExpired as exc:
        code = None
        err, out = (s.decode(errors="replace") if isinstance(s, bytes) else s or "" for s in (exc.stderr, exc.output))
    seconds = time.perf_counter() - start
    files_after = manifest(runs_dir)
    names_after, study_after = snapshot(runs_dir)
    errors = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    lines = err.strip().splitlines()
    store = StoreCheck(
        before=digest(files_before),
        after=digest(files_after),
        modified=tuple(p for p in files_after if p in files_before and files_after[p] != files_before[p]),
        added=tuple(p for p in files_after if p not in files_before),
        removed=tuple(p for p in files_before if p not in files_after),
        study_unchanged=study_after == study_before,
        studies_added={name: _states(runs_dir, name) for name in sorted(names_after - names_before)},
        studies_removed=tuple(sorted(names_before - names_after)),
    )
    return Row(
        case=case,
        exit_code=code,
        message=errors[0] if errors else (lines[-1] if lines else ""),
        error_lines=len(errors),
        traceback="Traceback (most recent call last)" in err + out,
        secret_leaked=case.secret is not None and case.secret in err + out,
        store=store,
        seconds=seconds,
        output=err + out,
    )


def build_table(selected: Sequence[Case], runs_dir: Path, timeout: float = 600.0) -> list[Row]:
    """Run every case, one after the other, against the store in ``runs_dir``."""
    return [run_case(case, runs_dir, timeout) for case in selected]


def store_as_designed(row: Row) -> bool:
    """Unchanged byte for byte; for a case that creates a study by design: only that study added, the
    study ``digits`` unchanged, no file removed and none modified but the database."""
    s = row.store
    if row.case.new_study is None:
        return s.before == s.after
    return (
        s.study_unchanged
        and list(s.studies_added) == [row.case.new_study]
        and not s.studies_removed
        and not s.removed
        and set(s.modified) <= {f"{STUDY}.db"}
    )


def defects(row: Row) -> list[str]:
    """What is wrong with a row; empty when the case exits 2 with one line and leaves the store as designed."""
    found = []
    if row.exit_code is None:
        found.append("timed out")
    elif row.exit_code != 2:
        found.append(f"exit {row.exit_code}")
    if row.error_lines != 1:
        found.append(f"{row.error_lines} error lines")
    if row.traceback:
        found.append("traceback")
    if row.secret_leaked:
        found.append("password in the output")
    if not store_as_designed(row):
        found.append("store changed")
    if row.case.expect not in row.message:
        found.append("unexpected message")
    return found


def _visible(line: str) -> str:
    """The line with its control characters (a terminal's colour codes) written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def _code(text: str) -> str:
    return "`" + _visible(text).replace("|", "\\|").replace("`", "'") + "`"


def _shown(text: str, scratch: Path) -> str:
    return text.replace(scratch.as_posix(), "$S")


def _shell(args: Sequence[str], scratch: Path) -> str:
    """The arguments as a shell would take them, the scratch folder as ``$S`` (double quotes, so it expands)."""
    quoted = [
        arg if shlex.quote(arg) == arg else f'"{arg}"' if not set(arg) & set('"$`\\') else shlex.quote(arg)
        for arg in args
    ]
    return _shown(" ".join(quoted), scratch)


def _store_cell(row: Row) -> str:
    s = row.store
    if s.before == s.after:
        return f"unchanged {_code(s.after[:12])}"
    changes = [f"{what} {', '.join(paths)}" for what, paths in (("modified", s.modified), ("added", s.added)) if paths]
    changes += [f"removed {', '.join(s.removed)}"] if s.removed else []
    studies = "; ".join(f"new study {name} ({states})" for name, states in s.studies_added.items())
    digits = f"{STUDY} {'unchanged' if s.study_unchanged else '**changed**'} (Optuna: trials, attributes)"
    label = "changed as designed" if store_as_designed(row) else "**CHANGED**"
    details = "; ".join(filter(None, [studies, digits, *changes]))
    return f"{label} {_code(s.before[:12])} → {_code(s.after[:12])}: {details}"


def render(rows: Sequence[Row], command: str, scratch: Path, runs_dir: Path) -> str:
    """The markdown report: the command, date, machine, the table, and the output of each defective case."""
    tiny = _shell(tiny_args(runs_dir), scratch)
    lines = [
        "# Bad input: exit status, message, store unchanged",
        "",
        f"Command: `{command}`, at commit {commit()}",
        "",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; Python "
        f"{platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}",
        "- the store: `python -m autoprune search studies/digits.toml $TINY --trials 2 --set study.baselines=[0.5]` "
        "(2 completed trials, their weights, the cached base model), run once in a scratch folder `$S`; every case "
        "is `python -m autoprune ARGS` (cwd the repository) against it, one after the other",
        f"- `$TINY` = `{tiny}`",
        "- store hash: sha256 of the sorted (relative path, sha256) list of every file under `$S/runs` "
        "(database, weights, base-model cache) but the empty `*.lock` files of file locks, before and after each case",
        "- ok: exit 2, exactly one `autoprune: error:` line holding the expected words, no traceback, no password "
        "in stdout or stderr, and the store unchanged (for the all-failing study: only the study `digits-2` added)",
        "",
        "| # | case | ARGS | exit | message (the `autoprune: error:` line, else the last stderr line) "
        "| traceback | store | s | verdict |",
        "| ---: | --- | --- | ---: | --- | --- | --- | ---: | --- |",
    ]
    for i, row in enumerate(rows, 1):
        args = _shell(row.case.args, scratch).replace(tiny, "$TINY")
        found = defects(row)
        lines.append(
            f"| {i} | {row.case.name} | {_code(args)} | {'timeout' if row.exit_code is None else row.exit_code} "
            f"| {_code(_shown(row.message, scratch))} | {'**yes**' if row.traceback else 'no'} | {_store_cell(row)} "
            f"| {row.seconds:.1f} | {'**DEFECT: ' + ', '.join(found) + '**' if found else 'ok'} |"
        )
    bad = [(i, row) for i, row in enumerate(rows, 1) if defects(row)]
    lines += ["", f"{len(rows) - len(bad)} of {len(rows)} cases ok."]
    for i, row in bad:
        tail = "\n".join(_visible(line) for line in _shown(row.output, scratch).strip().splitlines()[-40:])
        lines += ["", f"## Case {i}: {row.case.name}", "", "```text", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/bench/bad-input.md", help="report file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one case may run")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "autoprune.bench.bad_input", *given])
    with tempfile.TemporaryDirectory(prefix="autoprune-bad-input-") as folder:
        scratch = Path(folder)
        runs_dir = scratch / "runs"
        make_store(runs_dir)
        write_inputs(scratch)
        rows = build_table(cases(runs_dir, scratch), runs_dir, args.timeout)
        text = render(rows, command, scratch, runs_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
