"""Workers: processes that run one study's trials together, through its storage.

A worker repeats: fail the stale trials of dead workers (Optuna's heartbeat), count the completed
and running trials, and run one trial when the study still needs one. The trial limit holds across
workers: a worker starts a trial only while ``completed + running < trials``, and a trial that
finds, once created, that earlier trials already fill the study gives itself up as PRUNED (user
attribute ``surplus``) instead of running: the study ends with exactly ``trials`` completed trials.

Signals: the first SIGINT or SIGTERM lets the current trial finish (or fail) and then stops the
worker; a second one raises :class:`KeyboardInterrupt` at once, which fails the current trial
(``fail_reason`` "interrupted") before the worker exits. :data:`PARENT_GONE` (SIGUSR1), which a
worker started by ``search --workers`` receives when the search process dies, only ever asks for the
first: the kernel may deliver it more than once, and a dead parent is no reason to lose a trial.

``autoprune search --workers N`` prepares the study in its own process (base model, baselines,
checks) and then starts N ``autoprune worker`` processes; ``autoprune worker --storage URL --study
NAME`` joins a stored study from any machine.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune._optuna import fail_stale, heartbeat_enabled
from autoprune.config import STORAGE_ENV
from autoprune.errors import TrialFailed, TrialsFailing
from autoprune.search.front import PARENT, counts_toward_total, rung_of
from autoprune.trial.evaluate import Continuation, TrialEvaluator
from autoprune.trial.objective import objective_values, run_trial, trial_seed

if TYPE_CHECKING:
    import torch

    from autoprune.search.keeper import WeightKeeper
    from autoprune.search.promotion import Promotion

log = get_logger(__name__)

POLL_S = 1.0
EXIT_TRIALS_FAILING = 3
"""Exit status of a worker started by ``search --workers`` that stopped because trials keep failing."""
UNWATCHED_STALE_S = 600.0
"""Without a heartbeat (journal storage), a RUNNING trial older than this (or than 3× the longest
completed trial, if longer) no longer holds a place in the trial count."""
PARENT_GONE = getattr(signal, "SIGUSR1", signal.SIGTERM)
"""The signal a worker started by ``search --workers`` gets when the search process dies: it stops the
worker after its current trial, however often it arrives (before the worker runs trials, its default
action ends the process)."""


class StopRequest:
    """Installs SIGINT/SIGTERM handlers: the first signal asks the worker to stop after the current
    trial, the second raises :class:`KeyboardInterrupt` at once; :data:`PARENT_GONE` only ever does
    the first. A context manager; entered while another one is installed (a study that ``autoprune
    compare`` runs), it installs nothing and hands back that one, so that one signal stops both."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        outer = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if isinstance(outer, StopRequest):
            return outer
        handlers = {signal.SIGINT: self._handle, signal.SIGTERM: self._handle, PARENT_GONE: self._parent_gone}
        for sig, handler in handlers.items():
            try:
                self._previous[sig] = signal.signal(sig, handler)
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

    def _parent_gone(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            log.warning("the process that started this worker is gone: finishing the current trial, then stopping")


def _live_running(trials: Sequence[FrozenTrial], heartbeat: bool) -> list[FrozenTrial]:
    """Running trials that still hold a place: all of them with a heartbeat (dead ones are failed by
    :func:`autoprune._optuna.fail_stale`), only recent ones without."""
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
    done = [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if t.state in (TrialState.FAIL, TrialState.COMPLETE) or counts_toward_total(t)
    ]
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


def _earlier_twin(trial: optuna.Trial, trials: Sequence[FrozenTrial], heartbeat: bool) -> int | None:
    """An earlier promoted run of the same parent and rung that completed or still runs, if any."""
    live = {t.number for t in _live_running(trials, heartbeat)}
    for t in trials:
        if (
            t.number < trial.number
            and t.user_attrs.get(PARENT) == trial.user_attrs[PARENT]
            and rung_of(t) == rung_of(trial)
            and (t.state == TrialState.COMPLETE or t.number in live)
        ):
            return t.number
    return None


class GuardedObjective:
    """The Optuna objective of a worker: gives up surplus trials, runs the evaluator (for a promoted
    run, on from its parent's kept weights), has the weight keeper save what may join the front or be
    promoted, and records the worker and why a trial failed (``fail_reason``).

    Args:
        evaluator: Evaluates the trial's policy.
        target: The study's trial count.
        worker: This worker's name, recorded in each trial.
        keeper: Saves and checks the weights of trials that can join the front (none: no weights kept).
        promotion: The study's promotion across fine-tune budgets (none: a single budget); needs ``keeper``.
    """

    def __init__(
        self,
        evaluator: TrialEvaluator,
        target: int,
        worker: str,
        keeper: WeightKeeper | None = None,
        promotion: Promotion | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.target = target
        self.worker = worker
        self.keeper = keeper
        self.promotion = promotion

    def _continuation(self, trial: optuna.Trial) -> tuple[Continuation, int]:
        """Where a promoted run starts: its parent's model and record, and the parent's policy seed."""
        assert self.keeper is not None and self.promotion is not None, "promoted runs need a keeper and a promotion"
        number, rung = int(trial.user_attrs[PARENT]), rung_of(trial)
        parent = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == number)
        policy, attrs = parent.user_attrs["policy"], parent.user_attrs
        start = Continuation(
            model=self.keeper.model_of(parent),
            steps=self.promotion.steps(int(policy["finetune_steps"]), rung),
            seed=trial_seed(self.evaluator.config, trial.number, rung),
            samples=int(attrs["finetune_cost"]),
            kept=attrs["kept"],
            removed=attrs.get("removed") or [],
            sparsity=attrs.get("sparsity") or {},
            label=f"rung {rung}, from trial {number}",
        )
        return start, int(policy["seed"])

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        study = trial.study
        promoted = PARENT in trial.user_attrs
        if promoted:
            twin = _earlier_twin(trial, study.get_trials(deepcopy=False), heartbeat_enabled(study))
            if twin is not None:  # two processes enqueued the same promotion (a lock that did not hold)
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"trial {twin} already runs this promotion")
        else:
            trials = study.get_trials(deepcopy=False)
            live = {t.number for t in _live_running(trials, heartbeat_enabled(study))}
            ahead = sum(
                counts_toward_total(t) or (rung_of(t) == 0 and t.number < trial.number and t.number in live)
                for t in trials
            )
            if ahead >= self.target:
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"the study already has {ahead} completed or earlier running trials")
        trial.set_user_attr("worker", self.worker)
        if trial.user_attrs.get("fail_reason"):  # a retry inherits its stale original's attributes
            trial.set_user_attr("fail_reason", None)
        try:
            result = run_trial(self.evaluator, trial, *(self._continuation(trial) if promoted else ()))
            values = objective_values(result, self.evaluator.config.study.objectives)
            if self.keeper is not None:
                self.keeper.keep(trial, result, values)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (second SIGINT/SIGTERM)")
            raise
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
    """Run trials of ``study`` until it holds ``target`` completed trials and the objective's promotion
    (if any) has run every rung, ``timeout`` seconds have passed, or ``stop`` is requested; waits while
    other workers' running trials fill the count or a rung.

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
            live = {t.number for t in _live_running(trials, heartbeat)}
            pending = objective.promotion.advance(study, live) if objective.promotion is not None else None
            if not pending:
                break
            if not pending.waiting:
                time.sleep(POLL_S)
                continue
        else:
            running = [t for t in _live_running(trials, heartbeat) if rung_of(t) == 0]
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


WORKERS_PER_GPU_MAX = 4
"""The most workers ``--workers auto`` puts on one GPU. Trials per hour against workers per GPU are
measured by ``python -m autoprune.bench.workers --device cuda --workers 1 2 4``; until that has run on
a GPU, auto stays within the counts it measures."""

WORKER_GPU_BYTES = 2 * 2**30
"""GPU memory ``--workers auto`` sets aside for each worker: about twice a Fashion-MNIST trial's peak on
an H100 (reports/bench/fashion_mnist-default-h100.md), as each process adds its CUDA context."""

CORES_PER_CPU_WORKER = 1
"""CPU cores ``--workers auto`` gives each worker when trials run on the CPU (see :func:`auto_workers`)."""


def auto_workers(device: torch.device) -> int:
    """The worker count ``--workers auto`` chooses for trials on ``device``.

    On the CPU, one worker per :data:`CORES_PER_CPU_WORKER` cores. On CUDA, for each GPU the workers
    use (``device``'s own, else every visible one): as many as its free memory holds at
    :data:`WORKER_GPU_BYTES` each, at most one per CPU core (a worker's Python side needs a core to
    keep its GPU fed) and at most :data:`WORKERS_PER_GPU_MAX`; at least one.
    """
    import torch

    cores = cpu_count()
    if device.type != "cuda":
        return max(1, cores // CORES_PER_CPU_WORKER)
    gpus = [device.index] if device.index is not None else list(range(torch.cuda.device_count()))
    per_gpu = [
        max(1, min(WORKERS_PER_GPU_MAX, cores // len(gpus), torch.cuda.mem_get_info(i)[0] // WORKER_GPU_BYTES))
        for i in gpus
    ]
    return sum(per_gpu) if device.index is None else per_gpu[0]


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
    quiet: bool = False,
    on_poll: Callable[[], None] | None = None,
) -> int:
    """Start ``workers`` ``autoprune worker`` processes on the prepared study and wait for them,
    calling ``on_poll`` every :data:`POLL_S` seconds meanwhile. ``quiet`` workers log warnings only
    (this process then shows the study's progress).

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
            *(["-v"] if verbose else ["-q"] if quiet else []),
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
        while any(p.poll() is None for p in procs):
            if on_poll is not None:
                on_poll()
            time.sleep(POLL_S)
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((c for c in codes if c != 0), 0)


def stop_with_parent(parent: int) -> None:
    """Send this process :data:`PARENT_GONE` when its parent ``parent`` dies, so that workers never
    run on orphaned: on Linux through the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``,
    sent once for each of the parent's threads that held the child when it dies), elsewhere through
    a daemon thread that checks the parent's pid every second. A parent that died before this call
    is caught at once."""

    def terminate() -> None:
        os.kill(os.getpid(), PARENT_GONE)

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, PARENT_GONE)
    else:  # pragma: no cover - not Linux

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            terminate()

        threading.Thread(target=watch, name="autoprune-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        terminate()


__all__ = [
    "EXIT_TRIALS_FAILING",
    "GuardedObjective",
    "PARENT_GONE",
    "POLL_S",
    "StopRequest",
    "UNWATCHED_STALE_S",
    "auto_workers",
    "cpu_count",
    "failing",
    "spawn_workers",
    "stop_with_parent",
    "work",
    "worker_name",
    "worker_plan",
]
