"""Workers: processes that run one study's trials together, through its storage.

A worker repeats: fail the stale trials of dead workers (Optuna's heartbeat), count the completed
and running trials, and run one trial when the study still needs one. The trial limit holds across
workers: a worker starts a trial only while ``completed + running < trials``, and a trial that
finds, once created, that earlier trials already fill the study gives itself up as PRUNED (user
attribute ``surplus``) instead of running: the study ends with exactly ``trials`` completed trials.

Signals: the first SIGINT or SIGTERM lets the current trial finish (or fail) and then stops the
worker; a second one raises :class:`KeyboardInterrupt` at once, which fails the current trial
(``fail_reason`` "interrupted") before the worker exits.

``autoprune search --workers N`` prepares the study in its own process (base model, baselines,
checks) and then starts N ``autoprune worker`` processes; ``autoprune worker --storage URL --study
NAME`` joins a stored study from any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune._optuna import fail_stale, heartbeat_enabled, trial_system_attrs
from autoprune.errors import ConfigError, TrialFailed, TrialsFailing
from autoprune.objective import TrialEvaluator, TrialResult, counts_toward_total
from autoprune.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, redact_text, redact_url

if TYPE_CHECKING:
    import torch

    from autoprune.policy import Policy
    from autoprune.study import WeightKeeper

log = get_logger(__name__)

STORAGE_ENV = "AUTOPRUNE_STORAGE"
"""Environment variable read as ``--storage`` when the option is not given (keeps a password out of
``ps`` and shell history; ``search --workers`` hands the URL to its workers this way)."""
HANG_ENV = "AUTOPRUNE_TEST_HANG_TRIAL"
"""Test hook: ``N:PATH`` makes the worker that runs trial N (not a retry) write PATH and sleep."""
POLL_S = 1.0
EXIT_TRIALS_FAILING = 3
"""Exit status of a worker started by ``search --workers`` that stopped because trials keep failing."""
UNWATCHED_STALE_S = 600.0
"""Without a heartbeat (journal storage), a RUNNING trial older than this (or than 3× the longest
completed trial, if longer) no longer holds a place in the trial count."""


class StopRequest:
    """Installs SIGINT/SIGTERM handlers: the first signal asks the worker to stop after the current
    trial, the second raises :class:`KeyboardInterrupt` at once. A context manager; entered while
    another one is installed (a study that ``autoprune compare`` runs), it installs nothing and hands
    back that one, so that one signal stops both."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        outer = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if isinstance(outer, StopRequest):
            return outer
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s: finishing the current trial, then stopping (send it again to stop at once)",
            signal.Signals(signum).name,
        )


class OomRetryingEvaluator(TrialEvaluator):
    """A :class:`TrialEvaluator` whose trial, when CUDA runs out of memory, runs once more with half
    the batch size; out of memory again, the trial fails (:class:`TrialFailed`) with that reason."""

    retried_batch_size: int | None = None
    """The halved batch size the latest trial ran with, else ``None``."""
    hang = False
    """Test hook (:data:`HANG_ENV`): the next evaluation writes the file and sleeps."""

    def evaluate(self, policy: Policy) -> TrialResult:
        import torch

        self.retried_batch_size = None
        if self.hang:  # test hook: a trial that never ends, once its policy is stored
            self.hang = False
            Path(os.environ[HANG_ENV].split(":", 1)[1]).write_text(f"{os.getpid()}\n", encoding="utf-8")
            time.sleep(3600)
        config = self.config
        try:
            return super().evaluate(policy)
        except torch.cuda.OutOfMemoryError:
            pass
        _free_cuda()
        half = max(1, config.data.batch_size // 2)
        log.warning("CUDA out of memory at batch size %d: running the trial again at %d", config.data.batch_size, half)
        self.config = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=half))
        try:
            result = super().evaluate(policy)
        except torch.cuda.OutOfMemoryError:
            _free_cuda()
            raise TrialFailed(
                f"CUDA out of memory at batch size {config.data.batch_size} and again at {half}"
            ) from None
        finally:
            self.config = config
        self.retried_batch_size = half
        return result


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _live_running(trials: Sequence[FrozenTrial], heartbeat: bool) -> list[FrozenTrial]:
    """Running trials that still hold a place: all of them with a heartbeat (dead ones are failed by
    :func:`fail_stale_trials`), only recent ones without."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if heartbeat:
        return running
    durations = [t.duration.total_seconds() for t in trials if t.state == TrialState.COMPLETE and t.duration]
    stale_after = max(UNWATCHED_STALE_S, 3 * max(durations, default=0.0))
    now = time.time()
    return [t for t in running if t.datetime_start is None or now - t.datetime_start.timestamp() < stale_after]


def failing(trials: Sequence[FrozenTrial], max_failures: int) -> str | None:
    """Why a study should stop for failures, else ``None``: its last ``max_failures`` finished
    trials (by number) failed, or every baseline did. The reason names the most common
    ``fail_reason``. ``max_failures`` 0 never stops."""
    if max_failures <= 0:
        return None
    done = [t for t in sorted(trials, key=lambda t: t.number) if t.state == TrialState.FAIL or counts_toward_total(t)]
    run = list(itertools.takewhile(lambda t: t.state == TrialState.FAIL, reversed(done)))
    baselines = [t for t in trials if "baseline" in t.user_attrs]
    if len(run) >= max_failures:
        what, failed = f"its last {len(run)} trials failed", run
    elif baselines and all(t.state == TrialState.FAIL for t in baselines):
        what, failed = f"all {len(baselines)} baseline trials failed", baselines
    else:
        return None
    reasons = Counter(str(t.user_attrs.get("fail_reason") or "no reason recorded") for t in failed)
    reason, count = reasons.most_common(1)[0]
    return (
        f"{what}; most common reason ({count} of {len(failed)}): {reason}. Fix the cause (each trial's "
        "fail_reason is in trials.csv of `autoprune report`) or raise study.max_failures"
    )


class GuardedObjective:
    """The Optuna objective of a worker: gives up surplus trials, runs the evaluator, has the
    weight keeper save what may join the front, and records the worker and why a trial failed
    (``fail_reason``).

    Args:
        evaluator: Evaluates the trial's policy.
        target: The study's trial count.
        worker: This worker's name, recorded in each trial.
        keeper: Saves and checks the weights of trials that can join the front (none: no weights kept).
    """

    def __init__(self, evaluator: TrialEvaluator, target: int, worker: str, keeper: WeightKeeper | None = None) -> None:
        self.evaluator = evaluator
        self.target = target
        self.worker = worker
        self.keeper = keeper

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        study = trial.study
        trials = study.get_trials(deepcopy=False)
        live = {t.number for t in _live_running(trials, heartbeat_enabled(study))}
        ahead = sum(counts_toward_total(t) or (t.number < trial.number and t.number in live) for t in trials)
        if ahead >= self.target:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"the study already has {ahead} completed or earlier running trials")
        trial.set_user_attr("worker", self.worker)
        if trial.user_attrs.get("fail_reason"):  # a retry inherits its stale original's attributes
            trial.set_user_attr("fail_reason", None)
        if os.environ.get(HANG_ENV) and isinstance(self.evaluator, OomRetryingEvaluator):
            retry = trial_system_attrs(trial).get("failed_trial")
            self.evaluator.hang = retry is None and os.environ[HANG_ENV].split(":", 1)[0] == str(trial.number)
        try:
            result = self.evaluator.run(trial)
            values = self.evaluator.values(result)
            if self.keeper is not None:
                self.keeper.keep(trial, result, values)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (second SIGINT/SIGTERM)")
            raise
        finally:
            retried = getattr(self.evaluator, "retried_batch_size", None)
            if retried is not None:
                trial.set_user_attr("oom_retry_batch_size", retried)
        return values


def work(
    study: optuna.Study,
    objective: GuardedObjective,
    *,
    target: int,
    max_failures: int = 0,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    stop: StopRequest | None = None,
) -> None:
    """Run trials of ``study`` until it holds ``target`` completed trials, ``timeout`` seconds have
    passed, or ``stop`` is requested; waits while other workers' running trials fill the count.

    Raises:
        TrialsFailing: the study's trials keep failing (:func:`failing` with ``max_failures``).
    """
    start = time.monotonic()
    heartbeat = heartbeat_enabled(study)
    waiting_logged = False
    while not (stop is not None and stop.requested):
        if timeout and time.monotonic() - start >= timeout:
            log.info("study %r: timeout of %.0fs reached", study.study_name, timeout)
            break
        if heartbeat:
            fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        why = failing(trials, max_failures)
        if why:
            raise TrialsFailing(f"study {study.study_name!r} stopped: {why}")
        complete = sum(counts_toward_total(t) for t in trials)
        if complete >= target:
            break
        running = _live_running(trials, heartbeat)
        if complete + len(running) >= target:
            if not waiting_logged:
                log.info(
                    "study %r: %d completed, waiting for %d running trial(s) of other workers",
                    study.study_name,
                    complete,
                    len(running),
                )
                waiting_logged = True
            time.sleep(POLL_S)
            continue
        waiting_logged = False
        # A finished trial's model is cyclic garbage (torch-pruning's dependency graph points at it and
        # at itself), freed only by a full collection: Optuna runs one after the trial. Everything older
        # than the trial stays frozen meanwhile, so that collection walks the trial's objects only.
        gc.freeze()
        try:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=list(callbacks), gc_after_trial=True)
        except ValueError as exc:
            # Another worker finished this trial while it ran: its heartbeat check failed it after a
            # pause longer than the grace period. The tell is refused and the late result dropped.
            if not str(exc).startswith("Cannot tell a"):
                raise
            log.warning("study %r: another worker finished this trial first (%s)", study.study_name, exc)
        finally:
            gc.unfreeze()


def worker_name(index: int | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (f"#{index}" if index is not None else "")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_plan(workers: int, device: torch.device) -> list[dict[str, str]]:
    """Environment and thread count of each of ``workers`` local workers: one GPU each (round
    robin, by ``CUDA_VISIBLE_DEVICES``) when several are visible, else the CPU cores split evenly."""
    import torch

    plans = []
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
    threads = max(1, cpu_count() // workers)
    for index in range(workers):
        plan = {"threads": str(threads)}
        if gpus > 1:
            plan["CUDA_VISIBLE_DEVICES"] = ids[index % len(ids)]
            plan["device"] = "cuda"
        plans.append(plan)
    return plans


def spawn_workers(
    storage: str,
    study_name: str,
    workers: int,
    device: torch.device,
    *,
    heartbeat_interval: int,
    grace_period: int,
    trust_checkpoint: bool = False,
    verbose: bool = False,
) -> int:
    """Start ``workers`` ``autoprune worker`` processes on the prepared study and wait for them.

    They run in their own session, so a terminal's Ctrl-C reaches only this process, which passes
    each SIGINT/SIGTERM on: the first lets every worker finish its trial, the second stops them.
    Should this process die without passing anything on (SIGKILL), each worker gets a SIGTERM
    (:func:`stop_with_parent`), finishes its trial and exits.
    Returns the first non-zero exit status of a worker, else 0.
    """
    procs: list[subprocess.Popen[bytes]] = []
    for index, plan in enumerate(worker_plan(workers, device)):
        env = dict(os.environ, **{STORAGE_ENV: storage})
        cmd = [
            sys.executable,
            "-m",
            "autoprune",
            *(["-v"] if verbose else []),
            "worker",
            "--study",
            study_name,
            "--threads",
            plan["threads"],
            "--worker-index",
            str(index),
            "--heartbeat-interval",
            str(heartbeat_interval),
            "--grace-period",
            str(grace_period),
            "--parent-pid",
            str(os.getpid()),
            "--device",
            plan.get("device", str(device)),
        ]
        if trust_checkpoint:
            cmd.append("--trust-checkpoint")
        if "CUDA_VISIBLE_DEVICES" in plan:
            env["CUDA_VISIBLE_DEVICES"] = plan["CUDA_VISIBLE_DEVICES"]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    log.info(
        "study %r: %d workers started (pids %s), %s thread(s) each",
        study_name,
        workers,
        ", ".join(str(p.pid) for p in procs),
        worker_plan(workers, device)[0]["threads"],
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        log.warning("%s: passed on to the workers", signal.Signals(signum).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((c for c in codes if c != 0), 0)


def stop_with_parent(parent: int) -> None:
    """Send this process SIGTERM when its parent ``parent`` dies, so that workers never run on
    orphaned: on Linux through the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``),
    elsewhere through a daemon thread that checks the parent's pid every second. A parent that died
    before this call is caught at once."""

    def terminate() -> None:
        log.warning("the process that started this worker (pid %d) is gone: stopping after this trial", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    else:  # pragma: no cover - not Linux

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            terminate()

        threading.Thread(target=watch, name="autoprune-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        terminate()


def _prefix_logs(prefix: str) -> None:
    for handler in logging.getLogger("autoprune").handlers:
        handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))


def run_worker(
    storage: str,
    study_name: str,
    *,
    device: str | None = None,
    threads: int = 0,
    index: int | None = None,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    trust_checkpoint: bool = False,
) -> optuna.Study:
    """Join the stored study ``study_name`` and run its trials until it holds its trial count.

    Raises:
        TrialsFailing: the study's trials keep failing (``study.max_failures``).
    """
    import torch

    from autoprune.config import config_from_dict
    from autoprune.storage import make_storage
    from autoprune.study import WeightKeeper, make_sampler, prepare, resolve_device, study_artifacts, study_info

    if threads > 0:
        torch.set_num_threads(threads)
    if index is not None:
        _prefix_logs(f"[worker {index}] ")
    opened = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, create=False)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(storage=opened)
        raise ConfigError(
            f"study {study_name!r} not found in {redact_url(storage)}; it holds: {', '.join(names) or 'no studies'}"
        ) from None
    info = study_info(study)
    config = config_from_dict(info["config"])
    prepared = prepare(
        config,
        resolve_device(device or config.study.device),
        base_checkpoint=Path(info["base_checkpoint"]),
        expected_base=info["base"],
        trust_checkpoint=trust_checkpoint,
    )
    seed = config.study.seed + len(study.trials) + 7919 * (os.getpid() if index is None else index + 1)
    study.sampler = make_sampler(config, seed % 2**32)
    name = worker_name(index)
    evaluator = prepared.evaluator
    keeper = WeightKeeper(study_artifacts(study, storage), evaluator.base, evaluator.example_input)
    objective = GuardedObjective(evaluator, config.study.trials, name, keeper)
    log.info(
        "worker %s joined study %r in %s (%d of %d trials completed)",
        name,
        study_name,
        redact_url(storage),
        sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False)),
        config.study.trials,
    )
    with StopRequest() as stop:
        work(
            study,
            objective,
            target=config.study.trials,
            max_failures=config.study.max_failures,
            timeout=config.study.timeout or None,
            callbacks=[keeper],
            stop=stop,
        )
    return study


def add_parallel_options(parser: argparse.ArgumentParser, *, search: bool) -> None:
    """Options shared by ``search`` and ``worker``: heartbeat, checkpoint trust; ``--workers`` and
    ``--new-study`` for ``search``."""
    if search:
        parser.add_argument(
            "--workers", type=int, default=1, metavar="N", help="worker processes on this machine (default 1)"
        )
        parser.add_argument(
            "--new-study",
            action="store_true",
            help="when a study of this name exists with another search space, create NAME-2 (NAME-3, ...)",
        )
    parser.add_argument(
        "--heartbeat-interval",
        type=int,
        default=HEARTBEAT_INTERVAL_S,
        metavar="S",
        help=f"seconds between heartbeats of a running trial (default {HEARTBEAT_INTERVAL_S}; RDB storages)",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=GRACE_PERIOD_S,
        metavar="S",
        help=f"seconds without heartbeat before a trial is failed and retried (default {GRACE_PERIOD_S})",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow model.checkpoint files that need full unpickling (runs code in the file: only your own)",
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    storage = args.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise ConfigError(f"give --storage URL (or set {STORAGE_ENV}) and --study NAME")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.parent_pid is not None:
        stop_with_parent(args.parent_pid)
    try:
        run_worker(
            storage,
            args.study_name,
            device=args.device,
            threads=args.threads,
            index=args.worker_index,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            trust_checkpoint=args.trust_checkpoint,
        )
    except TrialsFailing:
        if args.parent_pid is None:
            raise
        log.warning("stopping: the study's trials keep failing")  # the search process says why, once
        return EXIT_TRIALS_FAILING
    return 0


def add_worker_command(commands: Any) -> None:
    """The ``autoprune worker`` subcommand."""
    worker = commands.add_parser(
        "worker",
        help="join a stored study and run its trials (any machine that reaches the storage)",
        description="Join a study that `autoprune search` created and run trials until it holds its "
        "trial count. Start as many as you like, on as many machines as reach the storage; the base "
        f"model is read from the study's recorded checkpoint. The URL may come from ${STORAGE_ENV}.",
    )
    worker.add_argument("--storage", help=f"Optuna storage URL (default: ${STORAGE_ENV})")
    worker.add_argument("--study", dest="study_name", required=True, help="study name in the storage")
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's)")
    worker.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    worker.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    add_parallel_options(worker, search=False)
    worker.set_defaults(func=_cmd_worker)


class RedactingFilter(logging.Filter):
    """Masks passwords of URLs in every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class OptunaTrialFailureFilter(logging.Filter):
    """Drops Optuna's "Trial N failed with parameters ..." warning and its traceback: the worker
    logs each failed trial's reason on one line itself (and stores it as ``fail_reason``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("optuna") and "failed with parameters" in str(record.msg))


def install_log_redaction() -> None:
    """Add :class:`RedactingFilter` to the handlers of autoprune's and Optuna's loggers, and
    :class:`OptunaTrialFailureFilter` to Optuna's."""
    for name in ("autoprune", "optuna"):
        for handler in logging.getLogger(name).handlers:
            for kind in (RedactingFilter, OptunaTrialFailureFilter) if name == "optuna" else (RedactingFilter,):
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())


__all__ = [
    "GuardedObjective",
    "RedactingFilter",
    "StopRequest",
    "add_parallel_options",
    "add_worker_command",
    "failing",
    "install_log_redaction",
    "run_worker",
    "spawn_workers",
    "stop_with_parent",
    "work",
    "worker_plan",
]
