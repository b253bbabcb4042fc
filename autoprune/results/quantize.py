"""INT8 on top of pruning: ONNX Runtime's static quantization of an export's ONNX program, calibrated
on training images, then its test accuracy and latency measured again beside the FP32 program's.

The quantized program (``model.int8.onnx``) takes raw pixels like ``model.onnx``: QDQ format, INT8
weights per output channel and INT8 activations whose ranges come from the calibration images
(ONNX Runtime's min-max calibration). Nothing is copied from the FP32 figures: both programs are run
on the whole test split and timed on ONNX Runtime in the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.data import Split
from autoprune.errors import AutopruneError
from autoprune.trial.latency import Timing, onnxruntime_session, time_onnx

CALIBRATION_IMAGES = 512
"""Training images the activation ranges are calibrated on."""
CALIBRATION_BATCH = 32
INT8 = "model.int8.onnx"


@dataclass(frozen=True)
class Int8Figures:
    """One program's figures: test accuracy on ONNX Runtime, its latency, its file's bytes."""

    test_accuracy: float
    latency: Timing
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency": asdict(self.latency)}


@dataclass(frozen=True)
class Int8Result:
    """The FP32 and INT8 programs' figures, and how the INT8 one was calibrated."""

    fp32: Int8Figures
    int8: Int8Figures
    calibration_images: int
    batch: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict(),
            "calibration_images": self.calibration_images,
            "batch": self.batch,
        }


def quantize_static(onnx: Path, out: Path, pixels: torch.Tensor) -> None:
    """Write the INT8 program of ``onnx`` to ``out``, calibrated on ``pixels`` (raw pixels, as the program takes).

    Raises:
        AutopruneError: ONNX Runtime's quantization tools are missing or fail.
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process
        from onnxruntime.quantization import quantize_static as ort_quantize_static
    except ImportError as exc:
        raise AutopruneError(f"--int8 needs onnxruntime's quantization tools: {exc}") from None

    class Calibration(CalibrationDataReader):
        """The calibration pixels, batch by batch."""

        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch.numpy()}

        def rewind(self) -> None:
            self._batches: Iterator[torch.Tensor] = iter(pixels.detach().cpu().float().split(CALIBRATION_BATCH))

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx), str(prepared), skip_symbolic_shape=True)
            ort_quantize_static(
                str(prepared),
                str(out),
                Calibration(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        except Exception as exc:
            raise AutopruneError(f"INT8 quantization of {onnx.name} failed: {type(exc).__name__}: {exc}") from exc


def onnx_accuracy(onnx: bytes, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy of the ONNX program ``onnx`` on ``pixels`` (ONNX Runtime, CPU)."""
    session = onnxruntime_session(onnx, torch.device("cpu"), 0)
    name = session.get_inputs()[0].name
    correct = 0
    for x, y in zip(pixels.split(batch_size), labels.split(batch_size), strict=True):
        (logits,) = session.run(None, {name: x.numpy()})
        correct += int((torch.from_numpy(logits).argmax(1) == y).sum())
    return correct / len(labels)


def int8_export(
    folder: Path,
    onnx_name: str,
    calibration: torch.Tensor,
    test: Split,
    to_pixels: Any,
    *,
    batch_size: int,
    latency_batch: int,
    threads: int,
    repeats: int,
) -> Int8Result:
    """Quantize ``folder/onnx_name`` into ``folder/model.int8.onnx`` on ``calibration`` pixels, then measure
    both programs: test accuracy on ``test`` (normalized images, turned into pixels by ``to_pixels``) and
    latency on ONNX Runtime's CPU provider at ``latency_batch`` images and ``threads`` threads."""
    quantize_static(folder / onnx_name, folder / INT8, calibration)
    pixels = to_pixels(test.x.cpu()).detach()
    batch = pixels[:latency_batch]
    figures = []
    for name in (onnx_name, INT8):
        program = (folder / name).read_bytes()
        figures.append(
            Int8Figures(
                test_accuracy=onnx_accuracy(program, pixels, test.y.cpu(), batch_size),
                latency=time_onnx(program, batch, repeats=repeats, threads=threads),
                bytes=len(program),
            )
        )
    return Int8Result(figures[0], figures[1], len(calibration), latency_batch)


def card_lines(result: Int8Result) -> list[str]:
    """The model card's INT8 section."""
    fp32, int8 = result.fp32, result.int8

    def pct(new: float, old: float) -> str:
        return f"{100 * new / old:.1f} %" if old else "-"

    return [
        "",
        "## INT8",
        "",
        f"`{INT8}`: ONNX Runtime's static quantization of `model.onnx` (QDQ, INT8 weights per output channel, "
        f"INT8 activations calibrated on {result.calibration_images} training images); the same input and output. "
        f"Both programs measured here, on ONNX Runtime's CPU provider: test accuracy on the whole test split, "
        f"latency at batch {result.batch}.",
        "",
        "| figure | FP32 (`model.onnx`) | INT8 | INT8 / FP32 |",
        "| --- | ---: | ---: | ---: |",
        f"| test accuracy | {fp32.test_accuracy:.4f} | {int8.test_accuracy:.4f} | "
        f"{100 * (int8.test_accuracy - fp32.test_accuracy):+.2f} points |",
        f"| latency | {fp32.latency.describe()} | {int8.latency.describe()} | "
        f"{pct(int8.latency.ms, fp32.latency.ms)} |",
        f"| file bytes | {fp32.bytes:,} | {int8.bytes:,} | {pct(int8.bytes, fp32.bytes)} |",
    ]


__all__ = ["INT8", "Int8Figures", "Int8Result", "card_lines", "int8_export", "onnx_accuracy", "quantize_static"]
