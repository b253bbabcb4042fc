"""Latency on the runtime that ships the model: eager PyTorch, or ONNX Runtime on the model exported to
ONNX, at the deployment's batch size and threads.

Each figure is the median of ``repeats`` timed passes after a third as many warm-up passes, with its
spread (interquartile range over the median), so that a noisy machine shows as noise and not as a
faster or slower model.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config import LATENCY_RUNTIMES, TrialSection
from autoprune.errors import ConfigError

NOISY = 0.10
"""Spread (interquartile range over the median) above which a latency figure is called noisy."""


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


def _timed(run: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Median and spread of ``run``'s wall time, after warm-up passes."""
    warmup = max(1, repeats // 3)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
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
    was_training = model.training
    model.eval()
    cuda = batch.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(batch.device)) if cuda else (lambda: None)
    with _torch_threads(threads), torch.no_grad():
        ms, spread = _timed(lambda: model(batch), repeats, sync)
    model.train(was_training)
    where = str(batch.device) if cuda else f"CPU, {threads or torch.get_num_threads()} threads"
    return Timing(ms, spread, "torch", where)


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
    session = onnxruntime_session(onnx, batch.device, threads)
    name = session.get_inputs()[0].name
    feed = {name: batch.detach().cpu().numpy()}
    ms, spread = _timed(lambda: session.run(None, feed), repeats)
    provider = session.get_providers()[0].removesuffix("ExecutionProvider")
    return Timing(ms, spread, "onnxruntime", f"{provider}, {threads or 'default'} threads")


def measure_latency(model: nn.Module, batch: torch.Tensor, settings: TrialSection) -> Timing:
    """Latency of ``model`` on ``batch`` as ``settings`` say: ``trial.latency_runtime``, its threads and
    repeats (the batch is ``trial.latency_batch_size`` rows of the caller's data)."""
    time_it = time_onnxruntime if settings.latency_runtime == "onnxruntime" else time_torch
    if settings.latency_runtime not in LATENCY_RUNTIMES:
        raise ConfigError(f"trial.latency_runtime = {settings.latency_runtime!r}: one of {', '.join(LATENCY_RUNTIMES)}")
    return time_it(model, batch, repeats=settings.latency_repeats, threads=settings.latency_threads)


__all__ = [
    "NOISY",
    "Timing",
    "measure_latency",
    "onnx_model",
    "onnxruntime_session",
    "time_onnx",
    "time_onnxruntime",
    "time_torch",
]
