"""Latency on the runtime that ships the model: eager PyTorch, or ONNX Runtime on the model exported to
ONNX, at the deployment's batch size and threads.

Each figure is the median of ``repeats`` timed passes after a third as many warm-up passes, with its
spread (interquartile range over the median), so that a noisy machine shows as noise and not as a
faster or slower model. Models to compare are timed together (:func:`measure_latencies`): in rounds,
each in turn, so that a burst of load on the machine falls on one round of one model.
"""

from __future__ import annotations

import contextlib
import functools
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config import LATENCY_RUNTIMES, TrialSection
from autoprune.errors import ConfigError

NOISY = 0.10
"""Spread (interquartile range over the median) above which a latency figure is called noisy."""

ROUNDS = 5
"""Rounds in which :func:`measure_latencies` times its models in turn."""


@dataclass(frozen=True)
class Timing:
    """One latency figure."""

    ms: float
    """Median milliseconds of one pass over the batch."""
    spread: float
    """Interquartile range of the passes over their median: 0.05 is ±2.5 % around it."""
    runtime: str
    where: str
    """The device or execution provider, and the threads."""

    def describe(self) -> str:
        return f"{self.ms:.3g} ms ±{100 * self.spread / 2:.1f} % on {self.runtime} ({self.where})"


def _timed(
    runs: Sequence[Callable[[], object]], repeats: int, rounds: int = 1, sync: Callable[[], None] = lambda: None
) -> list[tuple[float, float]]:
    """Median milliseconds and spread of each of ``runs``'s passes, after a third as many warm-up passes.

    With several ``rounds``, each run is timed ``repeats // rounds`` passes at a time, all runs in turn,
    and its figures are the medians of its rounds': a burst of load on the machine then falls on one
    round of one run and not on its whole figure."""
    passes = repeats if rounds <= 1 else max(3, repeats // rounds)
    for run in runs:
        for _ in range(max(1, repeats // 3)):
            run()
            sync()
    seen: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(max(1, rounds)):
        for figures, run in zip(seen, runs, strict=True):
            times = []
            for _ in range(passes):
                start = time.perf_counter()
                run()
                sync()
                times.append(time.perf_counter() - start)
            figures.append(_median_spread(times))
    return [
        (statistics.median(ms for ms, _ in figures), statistics.median(spread for _, spread in figures))
        for figures in seen
    ]


def _median_spread(times: Sequence[float]) -> tuple[float, float]:
    median = statistics.median(times)
    if len(times) >= 4:
        q1, _q2, q3 = statistics.quantiles(times, n=4)
        spread = (q3 - q1) / median if median > 0 else 0.0
    else:
        spread = 0.0
    return 1000.0 * median, spread


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_torch(model: nn.Module, batch: torch.Tensor, *, repeats: int = 30, threads: int = 0) -> Timing:
    """``model(batch)`` in eager PyTorch, in eval mode, on ``batch``'s device; on CUDA every pass is
    synchronized, so the figure is the device time a caller waits for."""
    return _torch_timings([model], batch, repeats=repeats, threads=threads)[0]


def _torch_timings(
    models: Sequence[nn.Module], batch: torch.Tensor, *, repeats: int, threads: int, rounds: int = 1
) -> list[Timing]:
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    cuda = batch.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(batch.device)) if cuda else (lambda: None)
    runs = [functools.partial(model, batch) for model in models]
    try:
        with _torch_threads(threads), torch.no_grad():
            figures = _timed(runs, repeats, rounds, sync)
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    where = str(batch.device) if cuda else f"CPU, {threads or torch.get_num_threads()} threads"
    return [Timing(ms, spread, "torch", where) for ms, spread in figures]


def onnx_model(model: nn.Module, batch: torch.Tensor) -> bytes:
    """``model`` (on the CPU, eval mode) as ONNX for inputs of ``batch``'s shape."""
    was_training = model.training
    model.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (batch.cpu(),), dynamo=True, verbose=False)
    finally:
        model.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def _providers(device: torch.device) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnxruntime_session(onnx: bytes, device: torch.device, threads: int) -> Any:
    """An ONNX Runtime session of ``onnx``: every graph optimization, ``threads`` intra-op threads (0:
    ONNX Runtime's choice), CUDA's execution provider when ``device`` is CUDA and the provider is there."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("trial.latency_runtime = 'onnxruntime' needs onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(onnx, sess_options=options, providers=_providers(device))


def time_onnxruntime(model: nn.Module, batch: torch.Tensor, *, repeats: int = 30, threads: int = 0) -> Timing:
    """``model`` exported to ONNX and run by ONNX Runtime on ``batch`` (its CPU provider; CUDA's when the
    batch is on a GPU and the provider is installed)."""
    return time_onnx(onnx_model(model, batch), batch, repeats=repeats, threads=threads)


def time_onnx(onnx: bytes, batch: torch.Tensor, *, repeats: int = 30, threads: int = 0) -> Timing:
    """The ONNX program ``onnx`` run by ONNX Runtime on ``batch``, as :func:`time_onnxruntime` runs it."""
    return _onnx_timings([onnx], batch, repeats=repeats, threads=threads)[0]


def _onnx_timings(
    programs: Sequence[bytes], batch: torch.Tensor, *, repeats: int, threads: int, rounds: int = 1
) -> list[Timing]:
    sessions = [onnxruntime_session(onnx, batch.device, threads) for onnx in programs]
    x = batch.detach().cpu().numpy()
    runs = [functools.partial(session.run, None, {session.get_inputs()[0].name: x}) for session in sessions]
    figures = _timed(runs, repeats, rounds)
    where = [
        f"{session.get_providers()[0].removesuffix('ExecutionProvider')}, {threads or 'default'} threads"
        for session in sessions
    ]
    return [Timing(ms, spread, "onnxruntime", w) for (ms, spread), w in zip(figures, where, strict=True)]


def measure_latency(model: nn.Module, batch: torch.Tensor, settings: TrialSection) -> Timing:
    """Latency of ``model`` on ``batch`` as ``settings`` say: ``trial.latency_runtime``, its threads and
    repeats (the batch is ``trial.latency_batch_size`` rows of the caller's data)."""
    return measure_latencies([model], batch, settings, rounds=1)[0]


def measure_latencies(
    models: Sequence[nn.Module], batch: torch.Tensor, settings: TrialSection, *, rounds: int = ROUNDS
) -> list[Timing]:
    """Latency of each of ``models``, as :func:`measure_latency` gives one, timed in turn ``rounds`` times
    (``trial.latency_repeats`` passes each in all): figures to set side by side, as a burst of load on
    the machine falls on one round of one model. A slower drift of the machine's speed moves them all
    alike: the repeat columns of reports/bench/latency-model.md show by how much on this machine."""
    if settings.latency_runtime not in LATENCY_RUNTIMES:
        raise ConfigError(f"trial.latency_runtime = {settings.latency_runtime!r}: one of {', '.join(LATENCY_RUNTIMES)}")
    repeats, threads = settings.latency_repeats, settings.latency_threads
    if settings.latency_runtime == "onnxruntime":
        programs = [onnx_model(model, batch) for model in models]
        return _onnx_timings(programs, batch, repeats=repeats, threads=threads, rounds=rounds)
    return _torch_timings(models, batch, repeats=repeats, threads=threads, rounds=rounds)


__all__ = [
    "NOISY",
    "ROUNDS",
    "Timing",
    "measure_latencies",
    "measure_latency",
    "onnx_model",
    "onnxruntime_session",
    "time_onnx",
    "time_onnxruntime",
    "time_torch",
]
