"""The latency model: a pruned model's latency on the study's runtime from its groups' kept-channel
counts alone, without timing it, as the cost model gives MACs.

Measured once per study. Every convolution and linear layer of the base model is timed alone on the
runtime (ONNX Runtime: a one-operator program; eager PyTorch: the layer) on a grid of its input and
output widths, less the same call doing nothing (an Identity), so that the table holds each layer's
work and not the cost of calling it. A layer's widths are affine in the kept counts of the groups
that touch it (found by pruning each group alone), and its figure at any widths is interpolated
bilinearly between grid points (held at the grid's edge beyond it). A convolution's widths are first
padded to the runtime's channel block (:data:`BLOCKS`), where its kernels' time steps.

What the layers alone miss (the other operators, the fusions the runtime makes across layers, the
cost of a call) is calibrated on the whole model, timed at uniform pruning levels and at random
allocations (kept channels at the study's channel multiple): a model's latency
is ``scale · (sum of its layers' figures) + overhead + a · (its layers' input elements) + b · (their
output elements)``, fitted by least squares (scale and overhead non-negative; ``a`` and ``b`` take
either sign, as a layer timed alone also moves its input in and its output out, or the runtime
reorders them, which inside the model it may not). :attr:`LatencyModel.error` is the largest
relative error on those calibration points; a benchmark (``python -m autoprune.bench.latency_model``)
measures it on random allocations, which the fit never saw.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.config import TrialSection
from autoprune.errors import AutopruneError
from autoprune.trial.cost import pruned_copy
from autoprune.trial.latency import measure_latencies, time_onnx, time_torch
from autoprune.trial.surgery import TracedModel

GRID = 5
"""Widths per varying dimension of a layer's table: from the fewest a group keeps to all."""

LINEAR_OUTPUTS = 16
"""Output widths of a linear layer's table. Matrix-multiply kernels work on output columns in strips,
so a layer's time steps at each strip's end (on ONNX Runtime, on this CPU: about every 32 outputs,
reports/bench/layer-steps.md), which interpolating between a few widths misses. Sixteen widths put a
grid point on every multiple of 8 up to 128 outputs (a linear layer alone times in microseconds)."""

LAYER_REPEATS = 60
"""Timed calls per grid point (a layer alone takes microseconds: many calls steady the median)."""

CALIBRATION = (5, 8)
"""The whole model is timed at this many uniform pruning levels (from none to ``space.ratio_max``) and
this many random allocations."""

BLOCKS = (1, 8, 16)
"""The channel blocks a convolution's widths may be padded to (1: none). ONNX Runtime's CPU kernels run
convolutions on channels in blocks of the vector width (16 floats with AVX-512, 8 with AVX2) and pad a
width to the next block: measured on an AVX-512 CPU (reports/bench/layer-steps.md), a convolution
keeping 8 or 24 output channels takes as long as one keeping 16 or 32. An input narrower than one
block is read as it is (by a kernel for unblocked inputs). Convolutions' grids lie on multiples of the
largest block; the block is the runtime's (:func:`channel_block`) where it is known, else the one the
calibration predicts best with."""


@dataclasses.dataclass(frozen=True)
class Width:
    """One of a layer's widths (input or output channels) as an affine function of kept counts:
    ``base + sum(slope[g] * (kept[g] - channels[g]))``, and the grid it is tabled on."""

    base: int
    slopes: dict[str, float]
    grid: tuple[int, ...]

    def at(self, kept: np.ndarray, index: Mapping[str, int], channels: np.ndarray) -> np.ndarray:
        """The width for each row of kept counts (columns in the model's group order)."""
        width = np.full(kept.shape[0], float(self.base))
        for g, slope in self.slopes.items():
            i = index[g]
            width += slope * (kept[:, i] - channels[i])
        return width


@dataclasses.dataclass(frozen=True)
class LayerTable:
    """One layer's milliseconds on the grid of its input and output widths (one width for a depthwise
    convolution, whose input and output are the same channels)."""

    name: str
    width_in: Width
    width_out: Width
    depthwise: bool
    ms: tuple[tuple[float, ...], ...]
    """``ms[i][j]``: at ``width_in.grid[i]`` and ``width_out.grid[j]`` (depthwise: ``ms[0][j]``)."""
    elements_per_channel: tuple[int, int]
    """Input elements per input channel and output elements per output channel (the batch times the
    spatial size or tokens)."""
    convolution: bool = True
    """A convolution's widths are padded to the model's channel block (:data:`BLOCKS`); a linear layer's
    are not."""

    def predict(self, kept: np.ndarray, index: Mapping[str, int], channels: np.ndarray, block: int = 1) -> np.ndarray:
        out = self._padded(self.width_out, kept, index, channels, block)
        table = np.asarray(self.ms, dtype=float)
        if self.depthwise:
            return _interp(out, self.width_out.grid, table[0])
        inputs = self._padded(self.width_in, kept, index, channels, block)
        # along the output width on each row of the input grid, then along the input width
        rows = np.stack([_interp(out, self.width_out.grid, row) for row in table], axis=1)
        grid = np.asarray(self.width_in.grid, dtype=float)
        if len(grid) == 1:
            return rows[:, 0]
        at = np.clip(np.searchsorted(grid, inputs) - 1, 0, len(grid) - 2)
        share = np.clip((inputs - grid[at]) / (grid[at + 1] - grid[at]), 0.0, 1.0)
        picked = np.arange(len(inputs))
        return rows[picked, at] * (1 - share) + rows[picked, at + 1] * share

    def _padded(
        self, width: Width, kept: np.ndarray, index: Mapping[str, int], channels: np.ndarray, block: int
    ) -> np.ndarray:
        """``width`` at each row of kept counts, padded to ``block`` for a convolution (never past the base
        model's width), but for an input narrower than one block, which the runtime reads unblocked."""
        at = width.at(kept, index, channels)
        if not self.convolution or block <= 1:
            return at
        padded = np.minimum(np.ceil(at / block) * block, width.base)
        return np.where(at < block, at, padded) if width is self.width_in else padded

    def elements(self, kept: np.ndarray, index: Mapping[str, int], channels: np.ndarray) -> np.ndarray:
        """Input and output elements for each row of kept counts (two columns)."""
        per_in, per_out = self.elements_per_channel
        inputs = self.width_in.at(kept, index, channels) * per_in
        return np.stack([inputs, self.width_out.at(kept, index, channels) * per_out], axis=1)


def _interp(x: np.ndarray, grid: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """Linear interpolation, held at the first and last grid point beyond them."""
    return np.interp(x, np.asarray(grid, dtype=float), np.asarray(values, dtype=float))


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Latency (ms) of the base model pruned to given per-group kept counts, on one runtime.

    Attributes:
        channels: Every group's channels in the base model; its order is the order of the vectors
            :meth:`predict_many` takes.
        layers: Each convolution's and linear layer's table.
        coefficients: The calibration: scale, overhead, ``a`` and ``b`` (the module's docstring).
        runtime, where, batch_size, threads: What the tables and calibration were timed on.
        calibration: ``(what was timed, measured ms, predicted ms)`` of each calibration point: uniform
            pruning at even levels and random allocations.
        block: The channel block convolutions' widths are padded to (one of :data:`BLOCKS`; 1: none).
    """

    channels: dict[str, int]
    layers: tuple[LayerTable, ...]
    coefficients: tuple[float, float, float, float]
    runtime: str
    where: str
    batch_size: int
    threads: int
    calibration: tuple[tuple[str, float, float], ...] = ()
    block: int = 1

    @property
    def groups(self) -> list[str]:
        return list(self.channels)

    @property
    def error(self) -> float:
        """The largest relative error of the fit on its calibration points."""
        return max((abs(p - m) / m for _r, m, p in self.calibration if m > 0), default=0.0)

    def _features(self, kept: np.ndarray) -> np.ndarray:
        """Per row of kept counts: the layers' summed milliseconds, 1, their input and output elements."""
        kept = np.atleast_2d(np.asarray(kept, dtype=float))
        index = {g: i for i, g in enumerate(self.channels)}
        channels = np.array(list(self.channels.values()), dtype=float)
        features = np.zeros((kept.shape[0], 4))
        features[:, 1] = 1.0
        for layer in self.layers:
            features[:, 0] += layer.predict(kept, index, channels, self.block)
            features[:, 2:] += layer.elements(kept, index, channels)
        return features

    def predict_many(self, kept: np.ndarray) -> np.ndarray:
        """Milliseconds for each row of kept counts (columns: :attr:`groups`); one figure for one row given
        as a vector, as :meth:`CostModel.predict_many <autoprune.trial.cost.CostModel.predict_many>` does."""
        rows = np.asarray(kept, dtype=float)
        ms = self._features(rows) @ np.asarray(self.coefficients)
        return ms[0] if rows.ndim == 1 else ms

    def predict(self, kept: Mapping[str, int]) -> float:
        """Milliseconds with each group at its ``kept`` count (groups not named: unpruned)."""
        unknown = sorted(set(kept) - set(self.channels))
        if unknown:
            raise AutopruneError(f"the latency model has no groups {unknown}; it has: {sorted(self.channels)}")
        row = np.array([[float(kept.get(g, c)) for g, c in self.channels.items()]])
        return float(self.predict_many(row)[0])

    def describe(self) -> str:
        return (
            f"{len(self.layers)} layers tabled on {self.runtime} ({self.where}), batch {self.batch_size}"
            + (f", channels in blocks of {self.block}" if self.block > 1 else "")
            + f"; off by up to {100 * self.error:.1f}% on {len(self.calibration)} calibration prunings"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyModel:
        layers = tuple(
            LayerTable(
                name=layer["name"],
                width_in=Width(**{**layer["width_in"], "grid": tuple(layer["width_in"]["grid"])}),
                width_out=Width(**{**layer["width_out"], "grid": tuple(layer["width_out"]["grid"])}),
                depthwise=bool(layer["depthwise"]),
                ms=tuple(tuple(float(v) for v in row) for row in layer["ms"]),
                elements_per_channel=(int(layer["elements_per_channel"][0]), int(layer["elements_per_channel"][1])),
                convolution=bool(layer.get("convolution", True)),
            )
            for layer in data["layers"]
        )
        calibration = tuple((str(r), float(m), float(p)) for r, m, p in data.get("calibration", ()))
        return cls(
            **{k: v for k, v in data.items() if k not in ("layers", "calibration", "coefficients")},
            coefficients=_four(data["coefficients"]),
            layers=layers,
            calibration=calibration,
        )

    @classmethod
    def fit(
        cls,
        traced: TracedModel,
        settings: TrialSection,
        *,
        batch: torch.Tensor,
        ratio_max: float = 0.8,
        multiple: int = 1,
        seed: int = 0,
    ) -> LatencyModel:
        """Table every layer of ``traced.model`` (left unchanged) and calibrate on the whole model.

        Args:
            traced: The base model, traced.
            settings: The study's ``[trial]`` settings: the runtime, threads and repeats.
            batch: The inputs latency is timed on (``trial.latency_batch_size`` rows).
            ratio_max: The most a group loses: the grid's narrowest width and the deepest
                calibration level.
            multiple: Grid widths are multiples of this (``space.channel_multiple``).
            seed: Seeds the random allocations of the calibration.
        """
        names = traced.names
        example = traced.example_input[:1].cpu()
        base_shapes = _layer_shapes(traced.model, example)
        base_kept = pruned_copy(traced, example, {})[1]
        channels = {g: int(base_kept[g]) for g in names}
        halved: dict[str, int] = {}
        probes: dict[str, dict[str, tuple[int, int]]] = {}
        for g in names:  # each group alone halved: which layers' widths follow it, and how
            pruned, kept = pruned_copy(traced, example, {g: 0.5})
            halved[g] = int(kept[g])
            probes[g] = {n: (s.width_in, s.width_out) for n, s in _layer_shapes(pruned, example).items()}
        timer = _LayerTimer(settings, batch.shape[0], batch.device)
        layers = []
        for name, shape in base_shapes.items():
            slopes_in: dict[str, float] = {}
            slopes_out: dict[str, float] = {}
            for g in names:
                removed = channels[g] - halved[g]
                if removed <= 0 or name not in probes[g]:
                    continue
                width_in, width_out = probes[g][name]
                if width_in != shape.width_in:
                    slopes_in[g] = (shape.width_in - width_in) / removed
                if width_out != shape.width_out:
                    slopes_out[g] = (shape.width_out - width_out) / removed
            block = max(BLOCKS) if shape.convolution else 1
            outputs = GRID if shape.convolution else LINEAR_OUTPUTS
            w_in = Width(shape.width_in, slopes_in, _grid(shape.width_in, slopes_in, ratio_max, multiple, block))
            w_out = Width(
                shape.width_out, slopes_out, _grid(shape.width_out, slopes_out, ratio_max, multiple, block, outputs)
            )
            depthwise = shape.depthwise
            rows = w_out.grid if depthwise else w_in.grid
            ms = tuple(
                tuple(timer.layer(shape, (o if depthwise else i), o) for o in w_out.grid)
                for i in (rows[:1] if depthwise else rows)
            )
            per_in, per_out = (n * batch.shape[0] for n in shape.elements_per_channel)
            layers.append(LayerTable(name, w_in, w_out, depthwise, ms, (per_in, per_out), shape.convolution))
        tables = cls(
            channels,
            tuple(layers),
            (1.0, 0.0, 0.0, 0.0),
            settings.latency_runtime,
            timer.where,
            batch.shape[0],
            settings.latency_threads,
        )
        return tables._calibrated(traced, settings, batch, ratio_max, multiple, seed)

    def _calibrated(
        self,
        traced: TracedModel,
        settings: TrialSection,
        batch: torch.Tensor,
        ratio_max: float,
        multiple: int,
        seed: int,
    ) -> LatencyModel:
        example = traced.example_input[:1].cpu()
        rng = random.Random(seed)
        levels = np.linspace(0.0, ratio_max, CALIBRATION[0])
        plans = {f"uniform {r:.2f}": dict.fromkeys(self.groups, float(r)) for r in levels}
        for i in range(CALIBRATION[1]):
            plans[f"random {i}"] = {g: rng.uniform(0.0, ratio_max) for g in self.groups}
        models, rows = [], []
        for plan in plans.values():
            model, kept = pruned_copy(traced, example, plan, multiple=multiple)
            models.append(model.to(batch.device))
            rows.append([float(kept[g]) for g in self.groups])
        measured = [timing.ms for timing in measure_latencies(models, batch, _steady(settings))]
        counts, times = np.array(rows), np.array(measured)
        known = channel_block(settings.latency_runtime, batch.device)
        fits = [dataclasses.replace(self, block=b).fitted_to(counts, times) for b in BLOCKS if known in (None, b)]
        # the best on the calibration points; on a tie, the smaller block
        best = min(fits, key=lambda fit: (float(np.mean((fit.predict_many(counts) / times - 1.0) ** 2)), fit.block))
        predicted = best.predict_many(counts)
        return dataclasses.replace(
            best, calibration=tuple(zip(plans, measured, (float(p) for p in predicted), strict=True))
        )

    def fitted_to(self, counts: np.ndarray, times: np.ndarray) -> LatencyModel:
        """This model with its coefficients fitted by least squares to latencies (ms) measured at rows of
        kept counts (scale and overhead non-negative)."""
        from scipy.optimize import lsq_linear

        design = self._features(counts)
        norms = np.maximum(np.abs(design).max(axis=0), 1e-12)  # columns on one scale: the fit weighs them alike
        bounds = ([0.0, 0.0, -np.inf, -np.inf], [np.inf] * 4)
        solution = lsq_linear(design / norms, times, bounds=bounds).x
        return dataclasses.replace(self, coefficients=_four(solution / norms))


def channel_block(runtime: str, device: torch.device) -> int | None:
    """The channel block of the runtime's convolution kernels where it is known, else None (the
    calibration then keeps the one of :data:`BLOCKS` that predicts its points best): ONNX Runtime's CPU
    kernels work on 16 channels at a time with AVX-512, 8 with AVX2; eager PyTorch's CPU kernels showed
    no steps. Known, not chosen, because on a machine whose speed drifts between timings (this one's:
    the repeat columns of reports/bench/latency-model.md) the calibration's few points chose 16 on some
    fits and 1 on others of the same model, and 16 predicted better on all three models measured."""
    if device.type != "cpu":
        return None
    if runtime == "torch":
        return 1
    return {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability())


def _four(values: Sequence[float]) -> tuple[float, float, float, float]:
    scale, overhead, per_input, per_output = (float(v) for v in values)
    return scale, overhead, per_input, per_output


def _steady(settings: TrialSection) -> TrialSection:
    """``settings`` with at least 100 repeats: the calibration's few points weigh much."""
    return dataclasses.replace(settings, latency_repeats=max(settings.latency_repeats, 100))


def _grid(
    width: int, slopes: Mapping[str, float], ratio_max: float, multiple: int, block: int, points: int = GRID
) -> tuple[int, ...]:
    """The widths a layer's varying dimension is timed at: ``points`` from the fewest its groups keep at
    ``ratio_max`` to all, on multiples of the channel multiple (times the slope: a linear layer after a
    flatten has many inputs per channel) and of ``block`` between the two ends; one width for a
    dimension no group changes."""
    if not slopes:
        return (width,)
    unit = max(1, round(multiple * min(abs(s) for s in slopes.values())))
    lowest = max(unit, math.floor(width * (1.0 - ratio_max) / unit) * unit)  # as surgery rounds: down
    step = math.lcm(unit, block)
    wanted = np.linspace(lowest, width, points)[1:-1]
    inner = {min(width, max(lowest, int(round(w / step)) * step)) for w in wanted}
    return tuple(sorted(inner | {lowest, width}))


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What a layer's table needs of it: the layer, its input's shape (batch of one), its widths."""

    module: nn.Module
    input_shape: tuple[int, ...]
    width_in: int
    width_out: int
    depthwise: bool
    elements_per_channel: tuple[int, int]

    @property
    def convolution(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def _layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, _Shape]:
    """Every 2-D convolution and linear layer that runs on ``example``, by dotted path, in call order."""
    shapes: dict[str, _Shape] = {}
    hooks = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if name in shapes:
                return
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
                per = (int(x[0, 0].numel()), int(output[0, 0].numel()))
                shapes[name] = _Shape(module, tuple(x.shape), module.in_channels, module.out_channels, depthwise, per)
            else:
                assert isinstance(module, nn.Linear)
                per = (int(x[0].numel() // module.in_features), int(output[0].numel() // module.out_features))
                shapes[name] = _Shape(module, tuple(x.shape), module.in_features, module.out_features, False, per)

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


class _LayerTimer:
    """Times one layer alone at given widths, on the study's runtime, less a call that does nothing."""

    def __init__(self, settings: TrialSection, batch_size: int, device: torch.device) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.device = device
        self.onnx = settings.latency_runtime == "onnxruntime"
        self._idle: dict[tuple[int, ...], float] = {}
        self.where = ""

    def layer(self, shape: _Shape, width_in: int, width_out: int) -> float:
        module = _resized(shape.module, width_in, width_out)
        dims = list(shape.input_shape)
        dims[0] = self.batch_size
        dims[1 if isinstance(module, nn.Conv2d) else -1] = width_in
        x = torch.randn(dims, device=self.device)
        return max(0.0, self._time(module, x) - self._idle_ms(tuple(dims)))

    def _idle_ms(self, dims: tuple[int, ...]) -> float:
        if dims not in self._idle:
            self._idle[dims] = self._time(nn.Identity(), torch.randn(dims, device=self.device))
        return self._idle[dims]

    def _time(self, module: nn.Module, x: torch.Tensor) -> float:
        threads = self.settings.latency_threads
        if self.onnx:
            timing = time_onnx(_one_operator(module, tuple(x.shape)), x, repeats=LAYER_REPEATS, threads=threads)
        else:
            timing = time_torch(module.to(x.device).eval(), x, repeats=LAYER_REPEATS, threads=threads)
        self.where = timing.where
        return timing.ms


def _resized(module: nn.Module, width_in: int, width_out: int) -> nn.Module:
    """A layer like ``module`` with the given widths (random weights: the time does not depend on them)."""
    if isinstance(module, nn.Conv2d):
        groups = width_in if module.groups > 1 and module.groups == module.in_channels else module.groups
        if width_in % groups or width_out % groups:
            groups = 1
        return nn.Conv2d(
            width_in,
            width_out,
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=groups,
            bias=module.bias is not None,
        )
    assert isinstance(module, nn.Linear)
    return nn.Linear(width_in, width_out, bias=module.bias is not None)


def _one_operator(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``module`` (a 2-D convolution, a linear layer or an Identity) as a one-operator ONNX program."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []
    if isinstance(module, nn.Conv2d):
        weight = module.weight.detach().numpy()
        inits.append(numpy_helper.from_array(weight, "w"))
        inputs = ["x", "w"]
        if module.bias is not None:
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "b"))
            inputs.append("b")
        padding = module.padding
        attrs: dict[str, Any] = {
            "kernel_shape": list(module.kernel_size),
            "strides": list(module.stride),
            "dilations": list(module.dilation),
            "group": module.groups,
        }
        if isinstance(padding, str):
            attrs["auto_pad"] = "VALID" if padding == "valid" else "SAME_UPPER"
        else:
            attrs["pads"] = [*padding, *padding]
        nodes.append(helper.make_node("Conv", inputs, ["y"], **attrs))
    elif isinstance(module, nn.Linear):
        inits.append(numpy_helper.from_array(module.weight.detach().numpy().T.copy(), "w"))
        if module.bias is None:
            nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
        else:
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "b"))
            nodes += [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["x"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    program = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    program.ir_version = 8
    return bytes(program.SerializeToString())


__all__ = [
    "BLOCKS",
    "CALIBRATION",
    "GRID",
    "LAYER_REPEATS",
    "LINEAR_OUTPUTS",
    "LatencyModel",
    "LayerTable",
    "Width",
    "channel_block",
]
